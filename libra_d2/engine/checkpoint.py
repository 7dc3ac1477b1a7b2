"""Checkpoints that appear only complete, written through fvcore's ``PathManager``."""
import os

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer", "AtomicPathManager"]


def _is_local(path: str) -> bool:
    return "://" not in path  # PathManager's handlers own prefixed paths; plain paths are local files


class _AtomicFile:
    """A file opened for writing on ``path + ".tmp.<pid>"``; closing it without an error
    flushes, fsyncs and renames it onto ``path``; an error removes it."""

    def __init__(self, path_manager, path, mode):
        self._path, self._tmp = path, f"{path}.tmp.{os.getpid()}"
        self._path_manager = path_manager
        self._f = path_manager.open(self._tmp, mode)
        self._done = False

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._f.close()
            self._done = True
            if os.path.exists(self._tmp):
                os.remove(self._tmp)
        return False

    def close(self):
        if self._done:
            return
        self._done = True
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self._path)


class AtomicPathManager:
    """A view of a ``PathManager`` whose ``open`` for writing a local file is atomic (temp file,
    fsync, rename); everything else, and every path of a registered handler, goes to the
    wrapped manager unchanged (handlers write as they write)."""

    def __init__(self, path_manager):
        self._pm = path_manager

    def __getattr__(self, name):
        return getattr(self._pm, name)

    def open(self, path, mode="r", **kwargs):
        if _is_local(path) and any(c in mode for c in "wx") and not kwargs:
            return _AtomicFile(self._pm, path, mode)
        return self._pm.open(path, mode, **kwargs)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` (fvcore's ``save``/``tag_last_checkpoint``,
    unchanged) whose files are written through :class:`AtomicPathManager`: a kill during a
    write leaves the previous ``.pth`` and ``last_checkpoint`` valid. ``save_dir`` may be any
    path fvcore's ``PathManager`` handles."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = AtomicPathManager(self.path_manager)
