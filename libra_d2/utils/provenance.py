"""Where a measurement comes from: the code, the processor, the threads and the versions.

Every run record the tools write (ablation runs, seeded-identity hashes, bench results,
comparisons with the reference) carries :func:`provenance`, so that two records are compared
only when they come from one processor class and from one commit (or commits proven
equivalent by committed seeded-identity hashes: the ablation report's pairing rule).

The commit comes from ``git`` in the source tree; where the tree has no ``.git`` (a copy sent
to another machine) from the environment variable ``LIBRA_D2_COMMIT`` or a file ``COMMIT`` at
the root (``<hash>`` or ``<hash>+dirty``); else ``"unknown"``.
"""
import os
import platform
import subprocess
import sys

__all__ = ["provenance", "git_commit", "processor_info", "processor_class", "PROCESSOR_FLAGS"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# instruction-set flags that change which float32 / bfloat16 kernels run
PROCESSOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


def git_commit(root=ROOT):
    """``(full hash, clean)`` of the checkout at ``root``; ``clean`` is False when tracked files
    differ from the commit. Falls back to ``LIBRA_D2_COMMIT`` / ``COMMIT`` (no git), then
    ``("unknown", None)``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, timeout=30).returncode != 0
            return head.stdout.strip(), not dirty
    except (OSError, subprocess.SubprocessError):
        pass
    text = os.environ.get("LIBRA_D2_COMMIT")
    if not text and os.path.isfile(os.path.join(root, "COMMIT")):
        with open(os.path.join(root, "COMMIT")) as f:
            text = f.read()
    if text and text.strip():
        text = text.strip()
        return text.split("+")[0], not text.endswith("+dirty")
    return "unknown", None


def processor_info():
    """The processor as the kernels see it: model name, torch's CPU capability, the relevant
    instruction-set flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if key == "flags":
                    break
    except OSError:
        pass
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        capability = None
    return {"model": model, "cpu_capability": capability, "flags": [f for f in PROCESSOR_FLAGS if f in flags]}


def processor_class(info):
    """A hashable key: records pair only within one class (same model name, torch capability
    and flags; two "AMD EPYC" machines with different instruction sets differ)."""
    if not info or not isinstance(info, dict) or info.get("flags") is None or info.get("cpu_capability") is None:
        return None  # not recorded as the kernels see it: no class
    return (info.get("model"), info.get("cpu_capability"), tuple(sorted(info.get("flags") or ())))


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001  (a missing or broken package is recorded as such)
        return None


def provenance(threads=None, root=ROOT, **extra):
    """The provenance record: commit (full hash), clean, processor, threads, versions, plus
    ``extra`` (e.g. ``seconds``). ``threads``: the threads the measured process used (default:
    this process's ``torch.get_num_threads()``)."""
    commit, clean = git_commit(root)
    if threads is None:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:
            threads = None
    rec = {
        "commit": commit,
        "clean": clean,
        "processor": processor_info(),
        "threads": threads,
        "versions": {"python": platform.python_version(), "torch": _version("torch"),
                     "torchvision": _version("torchvision"), "detectron2": _version("detectron2")},
        "platform": sys.platform,
    }
    rec.update(extra)
    return rec
