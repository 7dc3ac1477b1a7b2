#!/usr/bin/env bash
# Create .venv (if missing) and install everything libra-d2 needs into it.
# Safe to re-run: a stamp file records a finished set-up for the current set-up files,
# so a second run only checks that the key imports still work (a few seconds).
#
# Environment knobs:
#   PYTHON       interpreter used to create the venv (default: python3)
#   VENV         venv folder (default: .venv in the repository root)
#   TORCH_SPEC   what to install when no working torch is found in the venv
#                (default: the pair this project is tested with)
#   DETECTRON2_SRC  a local detectron2 source tree (e.g. a clone of main): build it (C++ ops
#                compiled for CPU, or CUDA where torch sees a GPU) and install it into the
#                venv instead of keeping another detectron2 or using the 0.6 fallback.
#                Re-runs rebuild when the tree's git commit changes. Use a separate VENV to
#                keep both, e.g. `make test DETECTRON2_SRC=~/detectron2 VENV=.venv-main`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$ROOT/.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check"
say() { echo "[setup] $*"; }

D2_SRC=${DETECTRON2_SRC:-}
D2_ID=""
if [[ -n $D2_SRC ]]; then
  if [[ ! -f $D2_SRC/setup.py || ! -d $D2_SRC/detectron2 ]]; then
    echo "[setup] DETECTRON2_SRC=$D2_SRC is not a detectron2 source tree (needs setup.py and detectron2/)" >&2
    exit 1
  fi
  D2_SRC=$(cd "$D2_SRC" && pwd)
  D2_ID="$D2_SRC@$(git -C "$D2_SRC" rev-parse HEAD 2>/dev/null || echo no-git)"
fi
stamp_key=$( (cat setup.cfg pyproject.toml dev/env/setup_env.sh dev/env/install_detectron2.py; echo "$D2_ID") | sha256sum | cut -c1-16)
STAMP="$VENV/.libra_d2_setup_$stamp_key"

if [[ -f $STAMP ]] && "$PY" -c "import torch, torchvision, detectron2, libra_d2" >/dev/null 2>&1; then
  say "environment in $VENV is up to date (delete $STAMP to force a re-check)"
  exit 0
fi

if [[ ! -x $PY ]]; then
  say "creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

if "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  say "torch: keeping the installed $("$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "/ torchvision", torchvision.__version__)')"
else
  say "torch: none found in the venv; installing $TORCH_SPEC (set TORCH_SPEC to choose another build)"
  # shellcheck disable=SC2086
  $PIP install $TORCH_SPEC
fi

# detectron2: a given source tree; else keep an importable one; else build the Python part of v0.6.
CONSTRAINTS="$VENV/libra_d2_constraints.txt"
D2_RECORD="$VENV/libra_d2_detectron2_source"
# the 0.6 fallback is rebuilt when dev/env/install_detectron2.py changes (a user's own detectron2 is never touched)
INSTALLER_ID=$(sha256sum dev/env/install_detectron2.py | cut -c1-16)
INSTALLER_RECORD="$VENV/libra_d2_detectron2_installer"
if [[ -n $D2_SRC ]]; then
  if [[ -f $D2_RECORD && $(cat "$D2_RECORD") == "$D2_ID" ]] && "$PY" -c "import detectron2" >/dev/null 2>&1; then
    say "detectron2: already built from $D2_ID"
  else
    if [[ -s $CONSTRAINTS ]]; then
      say "detectron2: this venv holds the 0.6 fallback and its pins (numpy<1.24, Pillow<10); removing them for $D2_SRC"
      $PIP uninstall -y detectron2 >/dev/null 2>&1 || true
    fi
    : > "$CONSTRAINTS"
    say "detectron2: building and installing $D2_ID (C++ ops compiled here; a few minutes)"
    $PIP install "setuptools>=64" wheel ninja
    # no build isolation: the build needs the venv's torch
    $PIP install --no-build-isolation "$D2_SRC"
    if [[ -f $D2_SRC/detectron2/modeling/backbone/vit.py ]]; then
      say "detectron2: its ViT (ViTDet) uses timm's layers; installing timm"
      $PIP install timm
    fi
    echo "$D2_ID" > "$D2_RECORD"
  fi
elif "$PY" -c "import detectron2" >/dev/null 2>&1 && [[ ! -f $CONSTRAINTS ]]; then
  say "detectron2: keeping the installed $("$PY" -c 'import detectron2; print(detectron2.__version__, "at", detectron2.__path__[0])')"
  : > "$CONSTRAINTS"
elif [[ -f $CONSTRAINTS ]] && "$PY" -c "import detectron2" >/dev/null 2>&1 \
    && { [[ ! -s $CONSTRAINTS ]] || [[ "$(cat "$INSTALLER_RECORD" 2>/dev/null)" == "$INSTALLER_ID" ]]; }; then
  say "detectron2: already installed by an earlier set-up"
else
  if [[ -s $CONSTRAINTS ]] && "$PY" -c "import detectron2" >/dev/null 2>&1; then
    say "detectron2: the 0.6 fallback in this venv comes from an older dev/env/install_detectron2.py; reinstalling it"
  else
    say "detectron2: not importable; building the Python part of detectron2 0.6 from the PyPI sdist pb1-detectron2==0.6"
  fi
  if "$PY" -c "import sys; sys.exit(sys.version_info < (3, 12))"; then
    # Python >= 3.12 has no wheels of numpy < 1.24 or Pillow < 10: detectron2 0.6 with the
    # names those releases removed replaced by their equivalents (as for the GPU check)
    say "  (Python >= 3.12: numpy and Pillow unpinned, detectron2 0.6 adapted to them; pins setuptools<82)"
    printf 'setuptools<82\n' > "$CONSTRAINTS"
    $PIP install -c "$CONSTRAINTS" "setuptools>=64,<82" wheel
    "$PY" dev/env/install_detectron2.py --constraints "$CONSTRAINTS" --workdir "$VENV/src" --unpinned
  else
    say "  (pins numpy<1.24, Pillow<10, setuptools<82 in this venv: detectron2 0.6 needs them)"
    printf 'numpy<1.24\nPillow<10\nsetuptools<82\n' > "$CONSTRAINTS"
    $PIP install -c "$CONSTRAINTS" "numpy<1.24" "Pillow<10" "setuptools>=64,<82" wheel
    "$PY" dev/env/install_detectron2.py --constraints "$CONSTRAINTS" --workdir "$VENV/src"
  fi
  echo "$INSTALLER_ID" > "$INSTALLER_RECORD"
fi

say "libra-d2: installing the package in editable mode with its dev extras (fvcore, pycocotools, opencv, pytest, pytest-xdist, ruff, onnx, onnxruntime, onnxscript)"
"$PY" -c "import setuptools, sys; v = tuple(int(x) for x in setuptools.__version__.split('.')[:1]); sys.exit(v < (64,))" \
  || $PIP install -c "$CONSTRAINTS" "setuptools>=64"
$PIP install -c "$CONSTRAINTS" --no-build-isolation -e ".[dev]"

"$PY" - <<'PY'
import torch, torchvision, detectron2, libra_d2
from libra_d2.utils.env import detectron2_has_cpp_ops
print("[setup] ready: torch %s, torchvision %s, detectron2 %s (C++ ops: %s), libra_d2 %s" % (
    torch.__version__, torchvision.__version__, detectron2.__version__,
    "yes" if detectron2_has_cpp_ops() else "placeholder", libra_d2.__version__))
PY
rm -f "$VENV"/.libra_d2_setup_*
touch "$STAMP"
