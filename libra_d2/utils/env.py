"""Facts about the installed detectron2 that libra-d2 branches on (feature tests only)."""
import functools


@functools.lru_cache(maxsize=None)
def detectron2_has_cpp_ops() -> bool:
    """False when detectron2._C is the placeholder written by dev/env/install_detectron2.py
    (or missing), True for a real compiled extension."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "IS_PLACEHOLDER", False)


@functools.lru_cache(maxsize=None)
def launch_supports_cpu() -> bool:
    """True when detectron2's ``launch()`` can start several CPU processes (it picks the gloo
    backend without CUDA: detectron2 main); False where it hard-codes NCCL (0.6)."""
    import inspect

    from detectron2.engine import launch as launch_mod

    return "gloo" in inspect.getsource(inspect.getmodule(launch_mod)).lower()
