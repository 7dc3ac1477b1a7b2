"""Where a measurement comes from: the code, the device, the threads and the versions.

Every run record of the workshop (ablation runs, seeded-identity hashes, bench results,
comparisons with the reference) carries :func:`provenance`, written when the run starts, so
that two records are compared only when the pairing rule (``dev/records/ablation.py``) allows.

The commit comes from ``LIBRA_D2_COMMIT`` when set (``<hash>`` or ``<hash>+dirty``: a copy of
the tree without ``.git``), else from ``git`` in the checkout, else ``"unknown"``. This is the
one place that runs git: the package never does.
"""
import os
import subprocess
import sys

from libra_d2.utils.machine import processor_info, versions

__all__ = ["provenance", "git_commit", "device_info", "processor_class", "TRACKED_FOR_CLEAN"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# a tree is clean when nothing under these is modified or untracked (ignored files aside)
TRACKED_FOR_CLEAN = ("libra_d2", "configs", "tools", "dev", "train_net.py")


def git_commit(root=ROOT):
    """``(full hash, clean)``: from ``LIBRA_D2_COMMIT`` when set, else the checkout at ``root``
    (clean: no modified or untracked file under :data:`TRACKED_FOR_CLEAN`); ``("unknown",
    None)`` when neither tells."""
    text = os.environ.get("LIBRA_D2_COMMIT", "").strip()
    if text:
        return text.split("+")[0], not text.endswith("+dirty")
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        if head.returncode == 0:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *TRACKED_FOR_CLEAN],
                                    cwd=root, capture_output=True, text=True, timeout=30)
            return head.stdout.strip(), status.returncode == 0 and not status.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown", None


def device_info(device="cpu"):
    """``{"type": "cpu"}`` or ``{"type": "cuda", "gpu": model, "driver": version}``."""
    if not str(device).startswith("cuda"):
        return {"type": "cpu"}
    info = {"type": "cuda", "gpu": None, "driver": None}
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - recorded as unknown
        pass
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def processor_class(info):
    """A hashable key: records pair only within one class (same model name, torch capability
    and flags; two "AMD EPYC" machines with different instruction sets differ)."""
    if not info or not isinstance(info, dict) or info.get("flags") is None or info.get("cpu_capability") is None:
        return None  # not recorded as the kernels see it: no class
    return (info.get("model"), info.get("cpu_capability"), tuple(sorted(info.get("flags") or ())))


def provenance(threads=None, root=ROOT, device="cpu", **extra):
    """The provenance record: commit (full hash), clean, processor, device, threads, versions,
    plus ``extra`` (e.g. ``seconds``). ``threads``: the threads the measured process used
    (default: this process's ``torch.get_num_threads()``)."""
    commit, clean = git_commit(root)
    if threads is None:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:
            threads = None
    rec = {"commit": commit, "clean": clean, "processor": processor_info(), "device": device_info(device),
           "threads": threads, "versions": versions(), "platform": sys.platform}
    rec.update(extra)
    return rec
