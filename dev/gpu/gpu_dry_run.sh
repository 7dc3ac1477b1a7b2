#!/usr/bin/env bash
# Prove dev/gpu/gpu_check.sh without a GPU: the same script end to end on CPU with tiny sizes,
# on a copy of the tree without .git, in a throw-away environment that stands in for the GPU
# machine's image (Python 3.12, torch 2.11.0, torchvision 0.26.0), installing every other
# package from the carried folder alone (pip --no-index --no-deps --target), the RetinaNet
# schedule sized by the same rule from a simulated budget (GPU_DRY_BUDGET, default 1500 s).
#
#   bash dev/gpu/gpu_dry_run.sh            (make gpu-dry-run)
#
# The stand-in image (GPU_IMAGE_VENV, default /tmp/libra-d2-gpu-image; built once, with
# network; IMAGE_PYTHON / IMAGE_TORCH choose another pair): torch, torchvision, numpy, scipy,
# opencv, onnxruntime, pytest, Pillow and nothing else. Then: dev/gpu/gpu_prepare.sh (with
# network), the copy, and dev/gpu/gpu_check.sh --dry-run there; fails unless the preflight,
# every step and every bench section passed and the RetinaNet schedule was sized.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
IMAGE=${GPU_IMAGE_VENV:-/tmp/libra-d2-gpu-image}
WORK=${GPU_DRY_WORK:-$(mktemp -d /tmp/libra-d2-gpu-dry.XXXXXX)}
mkdir -p "$WORK"
# the device's pair (its image: Python 3.12, torch 2.11, torchvision 0.26); PyPI's builds of
# them run on the CPU here
if [[ -z ${IMAGE_PYTHON:-} ]]; then
  IMAGE_PYTHON=python3.12
  python3.12 -V >/dev/null 2>&1 || IMAGE_PYTHON=$(ls -d "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
fi
IMAGE_TORCH=${IMAGE_TORCH:-"torch==2.11.0 torchvision==0.26.0"}
say() { echo "[gpu_dry_run] $*"; }
if [[ ! -x $IMAGE/bin/python ]] || ! "$IMAGE/bin/python" -c "import torch, torchvision, numpy, scipy, cv2, pytest, onnxruntime" 2>/dev/null; then
  say "building the stand-in image in $IMAGE ($IMAGE_PYTHON, $IMAGE_TORCH)"
  "${IMAGE_PYTHON:-false}" -V >/dev/null 2>&1 || { say "$IMAGE_PYTHON not found (set IMAGE_PYTHON)"; exit 1; }
  "$IMAGE_PYTHON" -m venv "$IMAGE"
  # shellcheck disable=SC2086
  "$IMAGE/bin/pip" install --quiet --disable-pip-version-check $IMAGE_TORCH
  # the rest of what the image has and the carried folder leaves out; nothing else, so every
  # other requirement must come from the carried folder
  "$IMAGE/bin/pip" install --quiet --disable-pip-version-check numpy scipy opencv-python-headless onnxruntime pytest pillow
fi
"$IMAGE/bin/python" -c "import sys, torch, torchvision; print('[gpu_dry_run] image: Python %d.%d, torch %s, torchvision %s' % (sys.version_info[:2] + (torch.__version__, torchvision.__version__)))"
for pkg in detectron2 fvcore pycocotools; do
  if "$IMAGE/bin/python" -c "import $pkg" 2>/dev/null; then
    say "the stand-in image holds $pkg: it must come from the carried folder alone; rebuild $IMAGE"
    exit 1
  fi
done
say "preparing the carried folder"
bash dev/gpu/gpu_prepare.sh "$WORK/gpu_carry" > "$WORK/prepare.log" 2>&1 || { tail -20 "$WORK/prepare.log"; exit 1; }
say "copying the tree without .git to $WORK/tree"
mkdir -p "$WORK/tree"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$WORK/tree"
mv "$WORK/gpu_carry" "$WORK/tree/gpu_carry"
[[ ! -e $WORK/tree/.git ]]
cd "$WORK/tree"
say "running dev/gpu/gpu_check.sh --dry-run"
mkdir -p "$WORK/out"
PYTHON="$IMAGE/bin/python" OUT="$WORK/out" GPU_CHECK_SITE="$WORK/site" bash dev/gpu/gpu_check.sh gpu_carry "$WORK/out" --dry-run --budget "${GPU_DRY_BUDGET:-1500}" 2>&1 | tee "$WORK/out/console.log"
"$IMAGE/bin/python" - "$WORK/out" "$WORK/tree/gpu_carry/COMMIT" <<'PY'
import json, os, sys
out, commit_file = sys.argv[1], sys.argv[2]
files = sorted(os.listdir(out))
rep = json.load(open(os.path.join(out, "gpu_check.json")))
problems = []
if len(files) > 8:
    problems.append(f"{len(files)} files in OUT (at most 8 come back): {files}")
want = open(commit_file).read().strip().split("+")[0]
if rep["environment"]["provenance"]["commit"] != want:
    problems.append(f"commit {rep['environment']['provenance']['commit']} != carried {want}")
for name, step in rep["steps"].items():
    if step.get("status") != "ok":
        problems.append(f"step {name}: {step.get('status')} ({step.get('tail', '')[-400:]})")
for name, b in rep.get("carried_binaries", {}).items():
    if not (isinstance(b, dict) and b.get("cp312")):
        problems.append(f"no cp312 wheel of {name} in the carried folder")
if not rep.get("preflight", {}).get("ok"):
    problems.append(f"preflight: {rep.get('preflight')}")
if not isinstance(rep["steps"].get("retinanet", {}).get("iterations"), int):
    problems.append("the RetinaNet schedule was not sized")
bench = json.load(open(os.path.join(out, "bench.json")))
if bench.get("errors"):
    problems.append(f"bench sections failed: {bench['errors']}")
for key in ("train_iter_ratio", "infer_ratio", "infer_images_per_s_libra", "sampler_speedup_100k", "bfp_mem_growth_4x_pixels"):
    if key not in bench:
        problems.append(f"bench.json lacks {key}")
print(f"[gpu_dry_run] OUT: {files}; steps: " + ", ".join(f"{k} {v.get('status')} ({v.get('seconds')} s)" for k, v in rep["steps"].items()))
if problems:
    sys.exit("[gpu_dry_run] FAILED:\n  " + "\n  ".join(problems))
print("[gpu_dry_run] passed")
PY
