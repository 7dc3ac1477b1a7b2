#!/usr/bin/env bash
# The GPU measurement on a machine without network, from the repository root:
#
#   bash dev/gpu/gpu_check.sh CARRY OUT [--dry-run] [--budget SECONDS]
#
# CARRY (default gpu_carry) is the folder dev/gpu/gpu_prepare.sh made; OUT (default $OUT, else
# output/gpu) receives gpu_check.json, bench.json, retinanet_ablation.{json,md}, logs.tar.gz
# and install.log (the caller tees the console to a seventh file). Steps:
#  1. preflight, before anything is installed: the carried folder is there and was prepared
#     for this tree's code, torchvision's required torch is the installed one, CUDA is
#     visible; each problem is one line on the console and in OUT/gpu_check.json;
#  2. the carried wheels installed without network into a folder of their own
#     (pip --no-index --no-deps --target, then PYTHONPATH): the image's environment is never
#     written to, so a read-only site-packages is no obstacle;
#  3. dev/gpu/gpu_check.py, each step bounded in time.
set -uo pipefail
cd "$(dirname "$0")/../.."
CARRY=gpu_carry
OUTDIR=${OUT:-output/gpu}
ARGS=()
DRY=()
pos=0
for a in "$@"; do
  case $a in
    --dry-run) DRY=(--dry-run); ARGS+=("$a") ;;
    --*) ARGS+=("$a") ;;
    *) if [[ $pos -eq 0 ]]; then CARRY=$a; elif [[ $pos -eq 1 ]]; then OUTDIR=$a; else ARGS+=("$a"); fi; pos=$((pos + 1)) ;;
  esac
done
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
export PYTHONWARNINGS=ignore
"$PY" dev/gpu/gpu_check.py --preflight --carry "$CARRY" --out "$OUTDIR" "${DRY[@]}" || {
  echo "[gpu_check] preflight failed: nothing installed or run (details above and in $OUTDIR/gpu_check.json)" >&2
  exit 3
}
SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/libra-d2-site}
rm -rf "$SITE"
echo "[gpu_check] installing the carried wheels into $SITE without network"
"$PY" -m pip --disable-pip-version-check install --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
  "$CARRY"/wheels/*.whl "$CARRY"/detectron2-*.whl > "$OUTDIR/install.log" 2>&1
rc=$?
if [[ $rc -ne 0 ]]; then
  tail -20 "$OUTDIR/install.log" >&2
  echo "[gpu_check] installing the carried wheels failed (exit $rc); see $OUTDIR/install.log" >&2
  exit $rc
fi
export LIBRA_D2_COMMIT
LIBRA_D2_COMMIT=$(cat "$CARRY/COMMIT")
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" dev/gpu/gpu_check.py --carry "$CARRY" --out "$OUTDIR" "${ARGS[@]}"
