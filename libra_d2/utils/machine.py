"""The machine as the kernels see it: processor model, torch's CPU capability, the
instruction-set flags that change which float32 / bfloat16 kernels run, and the versions.
The one reader of ``/proc/cpuinfo`` (Linux; elsewhere the flags are empty)."""
import functools
import platform

__all__ = ["PROCESSOR_FLAGS", "cpu_flags", "processor_info", "versions"]

PROCESSOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


@functools.lru_cache(maxsize=None)
def _cpuinfo():
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return model, flags


def cpu_flags() -> frozenset:
    """Every flag of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    return _cpuinfo()[1]


def processor_info() -> dict:
    """``{"model", "cpu_capability", "flags"}``: the model name, torch's CPU capability and
    which of :data:`PROCESSOR_FLAGS` the processor has."""
    model, flags = _cpuinfo()
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        capability = None
    return {"model": model, "cpu_capability": capability, "flags": [f for f in PROCESSOR_FLAGS if f in flags]}


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001  (a missing or broken package is recorded as such)
        return None


def versions() -> dict:
    """Python, torch, torchvision and detectron2 versions (None for one that does not import)."""
    return {"python": platform.python_version(), "torch": _version("torch"), "torchvision": _version("torchvision"),
            "detectron2": _version("detectron2")}
