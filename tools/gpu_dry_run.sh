#!/usr/bin/env bash
# Prove tools/gpu_check.sh without a GPU: the same script end to end on CPU with tiny sizes,
# on a copy of the tree without .git, in a throw-away environment that stands in for the GPU
# machine's image, installing from the carried folder alone (pip --no-index).
#
#   bash tools/gpu_dry_run.sh            (make gpu-dry-run)
#
# The stand-in image (GPU_IMAGE_VENV, default /tmp/libra-d2-gpu-image; built once, with
# network): torch, torchvision, numpy, scipy, opencv, onnxruntime, pytest, plus this
# Python's builds of the compiled packages the carried folder holds for 3.12 (their cp312
# wheels are checked for presence and tag instead). Then: tools/gpu_prepare.sh (with
# network), the copy, and tools/gpu_check.sh --dry-run there; fails unless every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
IMAGE=${GPU_IMAGE_VENV:-/tmp/libra-d2-gpu-image}
WORK=${GPU_DRY_WORK:-$(mktemp -d /tmp/libra-d2-gpu-dry.XXXXXX)}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
say() { echo "[gpu_dry_run] $*"; }
if [[ ! -x $IMAGE/bin/python ]] || ! "$IMAGE/bin/python" -c "import torch, torchvision, numpy, scipy, cv2, pytest, pycocotools, matplotlib, yaml, grpc" 2>/dev/null; then
  say "building the stand-in image in $IMAGE"
  python3 -m venv "$IMAGE"
  # shellcheck disable=SC2086
  "$IMAGE/bin/pip" install --quiet --disable-pip-version-check $TORCH_SPEC
  "$IMAGE/bin/pip" install --quiet --disable-pip-version-check numpy scipy opencv-python-headless onnxruntime pytest \
    pycocotools pyyaml matplotlib grpcio markupsafe
fi
if "$IMAGE/bin/python" -c "import detectron2" 2>/dev/null || "$IMAGE/bin/python" -c "import fvcore" 2>/dev/null; then
  say "the stand-in image holds detectron2 or fvcore from an interrupted dry run: rebuilding it"
  rm -rf "$IMAGE"
  exec bash "$0" "$@"
fi
# what the carried install adds is removed again at the end, so the stand-in stays the image
"$IMAGE/bin/pip" list --format=freeze --disable-pip-version-check | cut -d= -f1 | sort > "$WORK/image_packages.txt"
restore_image() {
  "$IMAGE/bin/pip" list --format=freeze --disable-pip-version-check | cut -d= -f1 | sort | comm -13 "$WORK/image_packages.txt" - \
    | xargs -r "$IMAGE/bin/pip" uninstall --quiet -y >/dev/null 2>&1 || true
}
trap restore_image EXIT
say "preparing the carried folder"
bash tools/gpu_prepare.sh "$WORK/gpu_carry" > "$WORK/prepare.log" 2>&1 || { tail -20 "$WORK/prepare.log"; exit 1; }
say "copying the tree without .git to $WORK/tree"
mkdir -p "$WORK/tree"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$WORK/tree"
mv "$WORK/gpu_carry" "$WORK/tree/gpu_carry"
[[ ! -e $WORK/tree/.git ]]
cd "$WORK/tree"
say "running tools/gpu_check.sh --dry-run"
PYTHON="$IMAGE/bin/python" OUT="$WORK/out" bash tools/gpu_check.sh gpu_carry "$WORK/out" --dry-run --budget "${GPU_DRY_BUDGET:-2400}"
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
bench = json.load(open(os.path.join(out, "bench.json")))
for key in ("train_iter_ratio", "infer_ratio", "infer_images_per_s_libra", "sampler_speedup_100k", "bfp_mem_growth_4x_pixels"):
    if key not in bench:
        problems.append(f"bench.json lacks {key}")
print(f"[gpu_dry_run] OUT: {files}; steps: " + ", ".join(f"{k} {v.get('status')} ({v.get('seconds')} s)" for k, v in rep["steps"].items()))
if problems:
    sys.exit("[gpu_dry_run] FAILED:\n  " + "\n  ".join(problems))
print("[gpu_dry_run] passed")
PY
