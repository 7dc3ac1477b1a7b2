#!/usr/bin/env python
"""Install the Python part of detectron2 0.6 when no detectron2 is importable.

detectron2 is not published on PyPI under its own name. ``pb1-detectron2==0.6`` is a
re-upload of the v0.6 sources without the C++/CUDA extension sources, so its own
``setup.py`` cannot build. This script downloads that sdist (sha256-checked), copies the
``detectron2`` package out of it unchanged, adds a placeholder ``detectron2/_C.py`` and
installs the result under the distribution name ``detectron2``.

The placeholder makes ``from detectron2 import _C`` succeed (detectron2.layers and
detectron2.evaluation import it at module level); touching any attribute raises an error
naming the missing C++ op. Libra R-CNN uses none of them: torchvision provides NMS and
ROIAlign. ``COCOEvaluator``'s fast path (``use_fast_impl=True``, its default) is the one C++
op a plain detectron2 script reaches: in this install ``COCOeval_opt`` is pycocotools'
``COCOeval`` (the same results, slower), as detectron2 main does when its extension is
missing, so a user's own ``DefaultTrainer`` evaluates instead of failing at the end of a run.

GPU users should build detectron2 from source for their CUDA first; the set-up script
keeps any importable detectron2 and never runs this file then.

``--wheel-dir DIR`` builds a wheel instead of installing, for a machine without network
(dev/gpu/gpu_prepare.sh): its requirements leave numpy and Pillow unpinned (Python 3.12 has
no wheels of numpy < 1.24 or Pillow < 10), and the four names those releases removed are
replaced by their equivalents where 0.6 uses them (``Image.LINEAR`` -> ``Image.BILINEAR``,
its alias; ``np.bool`` / ``np.int`` / ``np.float`` -> ``bool`` / ``int`` / ``float``).
"""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

SDIST = "pb1-detectron2-0.6.tar.gz"
SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")

# detectron2 0.6's runtime requirements, minus its pinned code formatter (black==21.4b2,
# which only serves detectron2's own config-to-python printer and conflicts with current
# click) and the caffe2-only extras.
REQUIRES = [
    "Pillow>=7.1,<10",
    "numpy<1.24",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

PLACEHOLDER_C = '''"""Placeholder for detectron2's C++/CUDA extension (not built in this install).

This detectron2 was installed from the Python sources of v0.6 only. Ops that exist only in
the C++ extension are unavailable; everything Libra R-CNN needs is pure Python/torchvision.
"""

IS_PLACEHOLDER = True

_OPS = {
    "deform_conv": "deformable convolution (DeformConv / ModulatedDeformConv)",
    "modulated_deform_conv": "modulated deformable convolution (ModulatedDeformConv)",
    "box_iou_rotated": "rotated box IoU (pairwise_iou_rotated)",
    "nms_rotated": "rotated NMS (batched_nms_rotated)",
    "roi_align_rotated": "rotated ROIAlign (ROIAlignRotated)",
    "COCOevalMaskApi": "the fast C++ COCO evaluator (COCOEvaluator use_fast_impl=True)",
    "InstanceAnnotation": "the fast C++ COCO evaluator (COCOEvaluator use_fast_impl=True)",
    "ImageEvaluation": "the fast C++ COCO evaluator (COCOEvaluator use_fast_impl=True)",
}


def _describe(name):
    for prefix, what in _OPS.items():
        if name.startswith(prefix):
            return what
    return "an op of detectron2's C++ extension"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotImplementedError(
        "detectron2._C.%s is unavailable: %s needs detectron2's C++/CUDA extension, which this "
        "install (Python sources of detectron2 0.6) does not have. Build detectron2 from source "
        "(pip install 'git+https://github.com/facebookresearch/detectron2.git') to use it; "
        "libra-d2's set-up keeps an importable detectron2." % (name, _describe(name))
    )


def get_compiler_version():
    return "none (placeholder _C)"


def get_cuda_version():
    return "none (placeholder _C)"


def has_cuda():
    return False
'''

FAST_EVAL_FALLBACK = '''

# Added by libra-d2's dev/env/install_detectron2.py: without the C++ extension, the fast COCO
# evaluation is pycocotools' own (what detectron2 main falls back to by itself).
if getattr(_C, "IS_PLACEHOLDER", False):
    COCOeval_opt = COCOeval  # noqa: F811
'''

SETUP_PY = '''from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6",
    description="detectron2 0.6, Python sources only (placeholder C++ extension)",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
    include_package_data=True,
    python_requires=">=3.7",
    install_requires=%r,
)
'''


def fetch_sdist(dest_dir):
    page = urllib.request.urlopen(f"{INDEX}/pb1-detectron2/", timeout=120).read().decode()
    m = re.search(r'href="([^"]*%s[^"]*)"' % re.escape(SDIST), page)
    if not m:
        sys.exit(f"install_detectron2: {SDIST} not listed at {INDEX}/pb1-detectron2/")
    url = m.group(1).split("#")[0]
    if url.startswith("/"):
        url = re.match(r"https?://[^/]+", INDEX).group(0) + url
    path = os.path.join(dest_dir, SDIST)
    print(f"[setup]   downloading {url}")
    with urllib.request.urlopen(url, timeout=300) as r, open(path, "wb") as f:
        shutil.copyfileobj(r, f)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != SHA256:
        sys.exit(f"install_detectron2: sha256 mismatch for {SDIST}: {digest} != {SHA256}")
    return path


NEWER_DEPS = [(r"Image\.LINEAR\b", "Image.BILINEAR"), (r"\bnp\.bool\b", "bool"), (r"\bnp\.int\b", "int"),
              (r"\bnp\.float\b", "float")]


def for_newer_deps(src):
    """The wheel mode's source changes (see the module docstring); returns the files changed."""
    changed = []
    for folder, _, files in os.walk(os.path.join(src, "detectron2")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            text = open(path).read()
            new = text
            for pattern, repl in NEWER_DEPS:
                new = re.sub(pattern, repl, new)
            if new != text:
                with open(path, "w") as f:
                    f.write(new)
                changed.append(os.path.relpath(path, src))
    return changed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--constraints", help="pip constraints file to respect")
    ap.add_argument("--wheel-dir", help="build a wheel into this folder instead of installing (see above)")
    ap.add_argument("--workdir", default=None, help="where to keep the unpacked sources")
    ap.add_argument("--unpinned", action="store_true",
                    help="leave numpy and Pillow unpinned (Python >= 3.12 has no wheels of numpy < 1.24 or Pillow < 10); "
                         "implied by --wheel-dir")
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp()
    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, "detectron2-0.6")
    if os.path.isdir(src):
        shutil.rmtree(src)
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = fetch_sdist(tmp)
        with tarfile.open(tar_path) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("pb1-detectron2-0.6/detectron2/")]
            tar.extractall(tmp, members=members)
        shutil.copytree(os.path.join(tmp, "pb1-detectron2-0.6", "detectron2"), os.path.join(src, "detectron2"))
    with open(os.path.join(src, "detectron2", "_C.py"), "w") as f:
        f.write(PLACEHOLDER_C)
    with open(os.path.join(src, "detectron2", "evaluation", "fast_eval_api.py"), "a") as f:
        f.write(FAST_EVAL_FALLBACK)
    requires = REQUIRES
    if args.wheel_dir or args.unpinned:
        requires = [r for r in REQUIRES if not r.startswith(("numpy", "Pillow"))] + ["numpy", "Pillow"]
        print("[setup]   for newer numpy / Pillow: " + ", ".join(for_newer_deps(src)))
    with open(os.path.join(src, "setup.py"), "w") as f:
        f.write(SETUP_PY % (requires,))
    if args.wheel_dir:
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps", "-w",
               args.wheel_dir, src]
        print("[setup]   " + " ".join(cmd))
        subprocess.check_call(cmd)
        return
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--no-build-isolation"]
    if args.constraints:
        cmd += ["-c", args.constraints]
    cmd.append(src)
    print("[setup]   " + " ".join(cmd))
    subprocess.check_call(cmd)


if __name__ == "__main__":
    main()
