"""Loading third-party checkpoints without running code from them.

A ``.pth`` file is a pickle: unpickling an untrusted one with ``weights_only=False`` can
execute arbitrary code. :func:`load_checkpoint` loads with ``torch.load(weights_only=True)``
and allows, beyond torch's own safe set (tensors, containers, numbers, strings), only the
numpy types that checkpoint metadata commonly carries (scalars, dtypes, arrays). Anything
else is refused with :class:`UntrustedCheckpointError`, which names the offending globals;
``trust=True`` (the tools' ``--trust-checkpoint``) is the explicit opt-in to a full unpickle.
"""
import pickle
import re
from typing import List

import torch

__all__ = ["UntrustedCheckpointError", "load_checkpoint", "metadata_safe_globals"]


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint carries pickled objects outside the allow-list (their names in ``.globals``)."""

    def __init__(self, path: str, names: List[str], detail: str = ""):
        self.path, self.globals = path, list(names)
        what = ", ".join(self.globals) if self.globals else "objects outside the allow-list"
        msg = (f"{path}: refusing to unpickle {what}: loading it could run code from the file. "
               "Only tensors, plain containers, numbers, strings and numpy scalars/arrays are loaded "
               "by default. If you trust where this checkpoint comes from, pass --trust-checkpoint "
               "(load_checkpoint(..., trust=True)).")
        if detail:
            msg += f" (torch: {detail.splitlines()[0]})"
        super().__init__(msg)


def metadata_safe_globals() -> list:
    """numpy types allowed in addition to torch's weights-only set (data only, no code)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch here
        return []
    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    # each dtype's own class (numpy.dtype[int64], or numpy.dtypes.Int64DType on numpy >= 1.25)
    kinds = {type(np.dtype(t)) for t in set(np.sctypeDict.values())}
    return out + sorted(kinds, key=str)


def _unsafe_names(path: str, error: Exception) -> List[str]:
    get = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if get is not None:
        try:
            allowed = {f"{g.__module__}.{g.__qualname__}" for g in metadata_safe_globals()}
            return [n for n in get(path) if n not in allowed]
        except Exception:  # not a zip checkpoint (legacy format): fall back to the message
            pass
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))


def load_checkpoint(path: str, trust: bool = False):
    """``torch.load(path)`` on the CPU without executing code from the file, unless ``trust``.

    Raises :class:`UntrustedCheckpointError` naming the pickled globals that are not allowed."""
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(metadata_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UntrustedCheckpointError(path, _unsafe_names(path, e), str(e)) from None
