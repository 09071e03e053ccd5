#!/usr/bin/env bash
# The one-GPU check of issue #10: the ELECTRA pretraining step (benchmarks/bench_pretrain.py) of small and base in
# bfloat16 at the paper's batch sizes (128 and 256 sequences of 128 tokens; docs/recipes.md#pretraining-recipe),
# each kernel choice of `model.kernels` beside transformers' PyTorch ConvBERT with the same objective
# (torch.compile, bf16 autocast): tokens/s, MFU against the GPU's dense bf16 peak (convbert/metric_writer.py's table,
# e.g. H200 989 TFLOP/s), peak device memory. Each (framework, run) in its own process; about 6-8 minutes on one
# H200.
#
#   benchmarks/gpu.sh [OUT_DIR]                 # default OUT_DIR: benchmarks/results/gpu
#   GPU_SMOKE=1 benchmarks/gpu.sh /tmp/gpu      # the same commands, tiny model on the CPU, kernels=reference and
#                                               # torch only (tests/test_gpu_script.py)
#
# Writes OUT_DIR/device.txt (GPU, versions), OUT_DIR/pretrain_SIZE.md (the table printed) and .json (every step
# time). Kernel runs: reference (what `auto` and `gpu` select on a GPU today), cpu_tuned (= `cpu`) and tpu (tuned
# gelu and dropout mask, plain convolution).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
RUNS="kernels=reference;kernels=cpu_tuned;kernels=tpu;torch"

if [[ "${GPU_SMOKE:-0}" == 1 ]]; then
  # torch.compile with dynamo's eager backend: the same tracing, without inductor's C++ build (minutes on a CPU)
  # one kernel choice (the others run the same code path; their values are tested in tests/test_kernels.py)
  DEVICE=cpu; JOBS="tiny:4"; SEQ=32; STEPS=2; WARMUP=1; PEAK_ARGS=(); COMPILE=eager; RUNS="kernels=reference;torch"
  echo "smoke run on the CPU (GPU_SMOKE=1): tiny, batch 4 x 32, torch.compile backend eager" | tee "$OUT/device.txt"
else
  DEVICE=gpu; JOBS="small:128 base:256"; SEQ=128; STEPS=10; WARMUP=2; COMPILE=inductor
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  PEAK_GFLOPS=$(python -c "
import sys
from convbert.metric_writer import PEAK_FLOPS_PER_DEVICE
name = sys.argv[1].lower()
peak = next((p for key, p in PEAK_FLOPS_PER_DEVICE if key in name), None)
sys.exit(f'no dense bf16 peak for {sys.argv[1]!r} in convbert/metric_writer.py PEAK_FLOPS_PER_DEVICE') if peak is None \
    else print(peak / 1e9)" "$GPU_NAME")
  PEAK_ARGS=(--peak_gflops "$PEAK_GFLOPS")
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    echo "peak (dense bf16): $PEAK_GFLOPS GFLOP/s"; } | tee "$OUT/device.txt"
fi
python -c "import jax, torch, transformers; print('jax', jax.__version__, 'torch', torch.__version__,
'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"

for job in $JOBS; do
  size=${job%%:*}; batch=${job##*:}
  python -m benchmarks.bench_pretrain --device "$DEVICE" --dtype bfloat16 --torch_compile "$COMPILE" --sizes "$size" \
    --batch "$batch" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --runs "$RUNS" "${PEAK_ARGS[@]}" \
    --timeout 400 --json_out "$OUT/pretrain_$size.json" | tee "$OUT/pretrain_$size.md"
done
