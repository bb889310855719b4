#!/usr/bin/env bash
# The GPU checks of this project as one prepared command, for a machine with a CUDA GPU and torch installed
# (nothing is downloaded; the package runs from src/). Results and logs go to ${OUT:-gpu-out}:
#   bash benchmarks/gpu_check.sh            # at most 9.5 minutes (each step has a time limit)
#   bash benchmarks/gpu_check.sh quick      # the tests and bench_dtypes only (about 2 minutes)
# 1. the CUDA tests (pytest skips them without a GPU): training with the default bf16 autocast learns and
#    resumes, fast kernels equal plain on the GPU, the word attention reaches a fused kernel, sampling on the
#    GPU draws the CPU's images;
# 2. bench_dtypes: the GPU's float32 / TF32 / bf16 / fp16 rates (the bf16 matmul is the reference of the
#    issue's target, >= 40 % of it in training);
# 3. bench_sample, bench_train (bare steps, plain vs fast, %mm against the bf16 matmul) and bench_trainer
#    (the library's loop) with the birds settings.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
step() {  # name, seconds, command...: run with a time limit, keep its output, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "== $name: exit $rc"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())" \
    | tee -a "$out/gpu.txt"
step tests 150 $py -m pytest -q -rs -p no:cacheprovider tests/test_training.py tests/test_pipeline.py tests/test_fast_path.py \
    -k "cuda or fast_kernels or mixed_precision or autocast"
step dtypes 60 $py benchmarks/bench_dtypes.py --device cuda --reps 20
if [ "${1:-all}" != quick ]; then
    step sample 90 $py benchmarks/bench_sample.py --device cuda --presets birds --batch-sizes 1 16 \
        --configs plain fast --reps 10 --no-flops --json "$out/sample.json"
    step train 180 $py benchmarks/bench_train.py --device cuda --presets birds --batch-sizes 20 \
        --configs plain fast --reps 5 --json "$out/train.json"
    step trainer 90 $py benchmarks/bench_trainer.py --device cuda --preset birds --batch-size 20 --steps 12 \
        --rounds 1 --configs plain fast
fi
exit $status
