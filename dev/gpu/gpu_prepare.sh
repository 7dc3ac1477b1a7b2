#!/usr/bin/env bash
# Prepare the folder that dev/gpu/gpu_check.sh needs on a GPU machine without network.
#
#   bash dev/gpu/gpu_prepare.sh [CARRY]        (default CARRY=gpu_carry, git-ignored)
#
# CARRY/wheels/  wheels for CPython 3.12 on x86_64 Linux of everything detectron2 0.6 and
#                libra-d2 need beyond what such a machine's image has (torch, torchvision,
#                numpy, scipy, opencv, onnxruntime, pytest, Pillow): compiled ones for cp312,
#                pure-Python ones as py3-none-any
# CARRY/detectron2-0.6-*.whl   the Python-only detectron2 0.6 (dev/env/install_detectron2.py
#                --wheel-dir: torchvision provides the CUDA RoIAlign and NMS)
# CARRY/COMMIT   the commit of this checkout (+dirty when a file is modified or untracked)
# CARRY/TREE_DIGEST  sha256 of the code (dev/gpu/gpu_check.py tree_digest), checked there
# CARRY/MANIFEST.json  every wheel with its tags and size
# Needs network to PyPI here; run it from the repository root. Then on the GPU machine:
#   bash dev/gpu/gpu_check.sh CARRY OUT       (docs/compatibility.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=${1:-gpu_carry}
PY=${PYTHON:-python3}
rm -rf "$CARRY"
mkdir -p "$CARRY/wheels"
# what the image lacks: detectron2 0.6's and libra-d2's requirements (dev/env/install_detectron2.py
# REQUIRES and setup.cfg), less what the image has
REQS=$("$PY" - <<'PY'
import re, sys
sys.path.insert(0, "dev/env")
from install_detectron2 import REQUIRES
image = {"numpy", "pillow", "torch", "torchvision", "scipy", "opencv-python-headless", "pytest"}
extra = ["fvcore>=0.1.5,<0.1.6", "pycocotools>=2.0.2", "tqdm", "pytest-timeout"]
for r in REQUIRES + extra:
    name = re.split(r"[<>=!\[ ]", r, 1)[0].lower()
    if name not in image:
        print(r)
PY
)
echo "[gpu_prepare] requirements: $(echo $REQS | tr '\n' ' ')"
# pure-Python packages published as source only (fvcore; omegaconf's antlr4 runtime): their
# wheels are built here (py3-none-any), then every requirement resolves to wheels for 3.12
"$PY" -m pip --disable-pip-version-check wheel --quiet --no-deps -w "$CARRY/wheels" \
  "fvcore>=0.1.5,<0.1.6" "antlr4-python3-runtime==4.9.*"
# shellcheck disable=SC2086
"$PY" -m pip --disable-pip-version-check download --quiet --dest "$CARRY/wheels" --only-binary=:all: \
  --find-links "$CARRY/wheels" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any $REQS
# the image's own packages (resolved as dependencies above) do not travel
for name in numpy pillow torch torchvision scipy opencv nvidia triton setuptools; do
  find "$CARRY/wheels" -maxdepth 1 -iname "${name}[-_]*.whl" -delete
done
"$PY" dev/env/install_detectron2.py --wheel-dir "$CARRY" --workdir "$(mktemp -d)"
commit=$(git rev-parse HEAD)
# dirty: any modified or untracked (not ignored) file
[[ -z $(git status --porcelain --untracked-files=normal -- . ":(exclude)$CARRY") ]] || commit="$commit+dirty"
echo "$commit" > "$CARRY/COMMIT"
# the digest of the code the check runs: dev/gpu/gpu_check.sh's preflight compares it with the
# tree it finds there (no .git travels)
"$PY" dev/gpu/gpu_check.py --out "$(mktemp -d)" --write-digest "$CARRY/TREE_DIGEST"
"$PY" - "$CARRY" <<'PY'
import json, os, sys
carry = sys.argv[1]
rows = []
for folder in (carry, os.path.join(carry, "wheels")):
    for f in sorted(os.listdir(folder)):
        if f.endswith(".whl"):
            parts = f[:-4].split("-")
            rows.append({"file": os.path.relpath(os.path.join(folder, f), carry), "python": parts[-3],
                         "abi": parts[-2], "platform": parts[-1], "bytes": os.path.getsize(os.path.join(folder, f))})
json.dump({"commit": open(os.path.join(carry, "COMMIT")).read().strip(), "wheels": rows},
          open(os.path.join(carry, "MANIFEST.json"), "w"), indent=1)
total = sum(r["bytes"] for r in rows)
print(f"[gpu_prepare] {len(rows)} wheels, {total / 2**20:.1f} MiB in {carry}")
if total > 60 * 2**20:
    sys.exit("[gpu_prepare] over 60 MiB: the device tool carries at most 64 MiB with the tree")
PY
