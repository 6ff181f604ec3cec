#!/usr/bin/env bash
# Every CUDA path of selfsup in one pass, for a GPU machine with torch (and triton) installed:
#
#   OUT=gpu-check bash benchmarks/gpu_check.sh        # PYTHON=... to choose the interpreter
#
# 1. the tests marked `gpu`, then the kernel and pipeline tests with CUDA present (Triton
#    compiled for the device instead of interpreted);
# 2. benchmarks/kernels.py: NT-Xent (2x8192, D 128, bf16), Sinkhorn (4096 x 3000, 3 iterations)
#    and the colour kernel (256x3x224x224) against plain torch;
# 3. `selfsup bench step` for SimCLR ResNet-50 at 2x224, global batch 256, bf16, channels_last,
#    eager and under train.compile, on the built-in ImageNet-like photos;
# 4. `selfsup bench loader` for the simclr and dino recipes at batch 256, with the dali engine
#    when nvidia-dali is importable and with the cpu engine, and the cpu engine's images/sec
#    at 1, 2, 4, ... engine threads up to the cores.
#
# Each part has its own time limit (seconds, below) so that one hang cannot eat the rest; the
# parts run one after another so that their timings do not disturb each other. Everything is
# written under $OUT: log.txt (all output), summary.txt (the machine, then one line per part:
# exit status and seconds) and one JSON file per benchmark. BATCH, STEPS, PHOTOS and
# STEP_ARGS (extra config overrides) and KERNEL_ARGS shrink it for a dry run on a CPU.
set -u
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
export SELFSUP_CACHE=${SELFSUP_CACHE:-/tmp/selfsup-gpu-check-cache}
PHOTOS=${PHOTOS:-2048}
BATCH=${BATCH:-256}
STEPS=${STEPS:-30}
LOG="$OUT/log.txt"
PARTS=${PARTS:-}  # e.g. "gpu-tests kernel-tests": run only these parts (name prefixes)

want() {  # is part $1 selected by PARTS (all when empty)?
    [ -z "$PARTS" ] && return 0
    local p
    for p in $PARTS; do [[ $1 == "$p"* ]] && return 0; done
    return 1
}

part() {  # part NAME LIMIT CMD...: run CMD with a time limit, log it, record status and time
    local name=$1 limit=$2 start rc
    shift 2
    want "$name" || return 0
    start=$(date +%s)
    echo "===== $name: $*" >>"$LOG"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%-16s rc=%-3s %4ss\n' "$name" "$rc" "$(($(date +%s) - start))" | tee -a "$OUT/summary.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
    "$PY" -c 'import triton; print("triton", triton.__version__)'
    "$PY" -c 'import nvidia.dali as d; print("nvidia-dali", d.__version__)' 2>&1 | tail -1
    nproc
} >"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"

# The photo set for the loader and step benchmarks, made in the background while the tests run.
DATA=$(mktemp -d)
mkdir -p "$DATA/bench"
"$PY" -c "
from selfsup.bench.photos import ensure_photos
import os
p = ensure_photos(count=$PHOTOS, progress=False)
os.symlink(p, '$DATA/bench/train'); os.symlink(p, '$DATA/bench/val')
print(p)" >"$DATA/photos.log" 2>&1 &
PHOTOS_PID=$!

part gpu-tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs tests
part kernels-bench 120 "$PY" benchmarks/kernels.py --repeat 20 ${KERNEL_ARGS:-} --json "$OUT/kernels.json"

wait "$PHOTOS_PID"
cat "$DATA/photos.log" >>"$LOG"
STEP_OPTS=(--config simclr_imagenet --steps "$STEPS" --warmup 5 --no-progress)
STEP_CFG=("data.path=$DATA/bench" "train.batch_size=$BATCH" train.precision=bf16
    train.channels_last=true data.engine=auto ${STEP_ARGS:-})
part step-eager 90 "$PY" -m selfsup bench step "${STEP_OPTS[@]}" --json "$OUT/step-eager.json" \
    "${STEP_CFG[@]}"
part step-compile 150 "$PY" -m selfsup bench step "${STEP_OPTS[@]}" --json "$OUT/step-compile.json" \
    "${STEP_CFG[@]}" train.compile=true

LOADER=(--data "$DATA/bench/train" --batch-size "$BATCH" --batches 12 --no-progress)
engines=(cpu)
"$PY" -c 'import nvidia.dali' 2>/dev/null && engines=(dali cpu)
for recipe in simclr dino; do
    for engine in "${engines[@]}"; do
        part "loader-$recipe-$engine" 90 "$PY" -m selfsup bench loader "${LOADER[@]}" \
            --recipe "$recipe" --engine "$engine" --json "$OUT/loader-$recipe-$engine.json"
    done
done

# The cpu engine's scaling with its thread count (selfsup alone), 1, 2, 4, ... up to the cores.
for ((w = 1; w <= $(nproc); w *= 2)); do
    part "loader-threads-$w" 45 "$PY" -m selfsup bench loader "${LOADER[@]}" --recipe simclr \
        --engine cpu --no-reference --workers "$w" --batches 6 --repeats 1 \
        --json "$DATA/threads-$w.json"
done
"$PY" - "$DATA" "$OUT/loader-threads.json" <<'EOF'
import json, pathlib, sys
runs = sorted(pathlib.Path(sys.argv[1]).glob("threads-*.json"), key=lambda p: int(p.stem[8:]))
if runs:
    json.dump([json.loads(p.read_text()) for p in runs], open(sys.argv[2], "w"), indent=1)
EOF

part kernel-tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_contrastive_kernels.py \
    tests/test_color_kernel.py tests/test_sinkhorn.py tests/test_kernels_autocast.py \
    tests/test_kernel_runtime.py tests/test_augment.py tests/test_gpu_step.py
rm -rf "$DATA"
cat "$OUT/summary.txt"
