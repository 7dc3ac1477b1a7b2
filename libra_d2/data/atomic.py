"""Writing a generated dataset folder atomically."""
import contextlib
import json
import os
import shutil
import tempfile

__all__ = ["atomic_folder"]


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
