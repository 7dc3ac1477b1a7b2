"""Writing a generated dataset folder atomically, once across processes."""
import contextlib
import fcntl
import json
import os
import shutil
import tempfile

__all__ = ["atomic_folder", "generate_once"]


@contextlib.contextmanager
def atomic_folder(path, marker):
    """Yield a temporary folder beside ``path`` to write into. On success a ``COMPLETE`` file
    (json ``marker``) is written and the folder replaces ``path`` in one rename; on any error
    it is removed and ``path`` is left as it was."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}_tmp_", dir=parent)
    try:
        yield tmp
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            json.dump(marker, f)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _file_lock(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def generate_once(path, is_complete, generate):
    """Return ``path`` after ``generate()`` has made it complete, running ``generate`` at most
    once across concurrent processes: check, take the lock ``path + ".lock"``, check again,
    generate. ``is_complete()`` -> bool says whether the data are already there."""
    if is_complete():
        return path
    with _file_lock(path):
        if not is_complete():
            generate()
    return path
