"""Facts about the installed detectron2 that libra-d2 branches on (feature tests only)."""
import functools


@functools.lru_cache(maxsize=None)
def detectron2_has_cpp_ops() -> bool:
    """False when detectron2._C is the placeholder written by tools/install_detectron2.py
    (or missing), True for a real compiled extension."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "IS_PLACEHOLDER", False)
