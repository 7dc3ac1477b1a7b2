#!/usr/bin/env bash
# The GPU measurement on a machine without network, from the repository root:
#
#   bash tools/gpu_check.sh [CARRY [OUT]] [--dry-run] [--budget SECONDS]
#
# CARRY (default gpu_carry) is the folder tools/gpu_prepare.sh made; OUT (default $OUT, else
# output/gpu) receives gpu_check.json, bench.json, retinanet_ablation.{json,md}, logs.tar.gz
# and install.log. Installs the carried wheels into this Python without network (the
# image's torch, torchvision, numpy stay), then runs tools/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=gpu_carry
OUTDIR=${OUT:-output/gpu}
ARGS=()
pos=0
for a in "$@"; do
  case $a in
    --*) ARGS+=("$a") ;;
    *) if [[ $pos -eq 0 ]]; then CARRY=$a; elif [[ $pos -eq 1 ]]; then OUTDIR=$a; else ARGS+=("$a"); fi; pos=$((pos + 1)) ;;
  esac
done
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
if [[ ! -f $CARRY/COMMIT ]]; then
  echo "[gpu_check] $CARRY/COMMIT missing: run tools/gpu_prepare.sh first (with network)" >&2
  exit 2
fi
echo "[gpu_check] installing from $CARRY without network"
PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip --disable-pip-version-check install --no-index --find-links "$CARRY/wheels" \
  "$CARRY"/detectron2-*.whl "fvcore>=0.1.5,<0.1.6" "pycocotools>=2.0.2" tqdm pytest-timeout > "$OUTDIR/install.log" 2>&1
rc=$?
if [[ $rc -ne 0 ]]; then
  tail -20 "$OUTDIR/install.log" >&2
  echo "[gpu_check] installing the carried wheels failed (exit $rc); see $OUTDIR/install.log" >&2
  exit $rc
fi
export LIBRA_D2_COMMIT
LIBRA_D2_COMMIT=$(cat "$CARRY/COMMIT")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore
"$PY" tools/gpu_check.py --carry "$CARRY" --out "$OUTDIR" "${ARGS[@]}"
