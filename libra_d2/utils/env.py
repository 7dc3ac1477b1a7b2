"""Facts about the installed detectron2 that libra-d2 branches on (feature tests only)."""
import functools


@functools.lru_cache(maxsize=None)
def detectron2_has_cpp_ops() -> bool:
    """True when ``detectron2._C`` is a compiled extension module; False when it is missing
    or a pure-Python module standing in for it (a Python-only install)."""
    import importlib
    from importlib.machinery import EXTENSION_SUFFIXES

    try:
        ext = importlib.import_module("detectron2._C")
    except ImportError:
        return False
    return str(getattr(ext, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES))


@functools.lru_cache(maxsize=None)
def launch_supports_cpu() -> bool:
    """True when detectron2's ``launch()`` can start several CPU processes (it picks the gloo
    backend without CUDA: detectron2 main); False where it hard-codes NCCL (0.6)."""
    import inspect

    from detectron2.engine import launch as launch_mod

    return "gloo" in inspect.getsource(inspect.getmodule(launch_mod)).lower()
