#!/usr/bin/env bash
# Build .venv-ffcv: the real ffcv 1.0.x, for the .beton interoperability tests
# (tests/test_ffcv_interop.py, marker `ffcv`). Idempotent: a second run only checks.
#
#   bash .ci/ffcv-setup.sh            # then:
#   SELFSUP_FFCV_PYTHON=$PWD/.venv-ffcv/bin/python SELFSUP_REQUIRE_FFCV=1 \
#       .venv/bin/python -m pytest -q -m ffcv tests/test_ffcv_interop.py
#
# Why a separate venv: ffcv needs system OpenCV and libturbojpeg headers to build its C
# extension, pins nothing sensible for numpy/numba, and wants `opencv-python`, which
# clashes with the `opencv-python-headless` that selfsup uses. torch is pinned to the CPU
# wheel through constraints/cpu.txt so no CUDA packages are downloaded; torchvision is not
# installed (ffcv's reader, writer and loader do not import it).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${FFCV_VENV:-.venv-ffcv}"
PYTHON="${PYTHON:-python3}"
FFCV_VERSION="${FFCV_VERSION:-1.0.2}"
CONSTRAINTS="${CONSTRAINTS-constraints/cpu.txt}"
APT_PACKAGES=(pkg-config g++ libturbojpeg0-dev libopencv-dev)

say() { echo "[ffcv-setup] $*"; }
start=$(date +%s)

# 1. System packages (headers and pkg-config files ffcv's setup.py asks for).
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    say "apt-get install ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
        "${missing[@]}"
else
    say "apt packages present: ${APT_PACKAGES[*]}"
fi
for pc in opencv4 libturbojpeg; do
    pkg-config --exists "$pc" || { say "pkg-config cannot find $pc after install"; exit 1; }
done

# 2. The venv, unless it already imports the wanted ffcv.
check='import ffcv, ffcv.reader, ffcv.writer, ffcv.fields, ffcv.fields.decoders, importlib.metadata as m; assert m.version("ffcv") == "'"$FFCV_VERSION"'"'
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$check" 2>/dev/null; then
    say "$VENV already has ffcv $FFCV_VERSION; nothing to do ($(($(date +%s) - start)) s)"
    exit 0
fi
pip_c=()
if [ -n "$CONSTRAINTS" ]; then pip_c=(-c "$CONSTRAINTS"); fi
say "creating $VENV with $($PYTHON --version)"
"$PYTHON" -m venv "$VENV"
say "installing torch (constraints: ${CONSTRAINTS:-none}) and ffcv's runtime dependencies"
"$VENV/bin/pip" install -q "${pip_c[@]}" torch numpy numba opencv-python-headless \
    terminaltables pytorch_pfn_extras fastargs assertpy tqdm psutil pillow setuptools wheel 2>&1 \
    | { grep -v 'is ignored: it is neither' || true; }
# --no-deps: ffcv lists `opencv-python`; the headless build provides the same cv2 module.
say "building ffcv==$FFCV_VERSION from source"
"$VENV/bin/pip" install -q "${pip_c[@]}" --no-deps --no-build-isolation "ffcv==$FFCV_VERSION" 2>&1 \
    | { grep -v 'is ignored: it is neither' || true; }
"$VENV/bin/python" -c "$check"
say "ok: $("$VENV/bin/python" -c 'import ffcv, numpy, torch; print("ffcv", ffcv.__file__, "numpy", numpy.__version__, "torch", torch.__version__)')"
say "done in $(($(date +%s) - start)) s"
