#!/usr/bin/env bash
# Every GPU test and GPU benchmark of the repo in one go, for a CUDA machine that has PyTorch, Triton
# and transformers but not this project installed (the device machine lent to some sessions).
#   OUT=/tmp/gpu bash scripts/gpu_checks.sh      # logs and JSON reports land in $OUT
set -u
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
source scripts/gpu_env.sh || exit 1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# -P: the checkout's fedmezo/ (without client/, server/) must not shadow the assembled package
timeout "${TEST_TIMEOUT:-240}" python3 -P -m pytest -q -p no:cacheprovider -x \
  tests/zo tests/client/test_client_gpu.py tests/client/test_client_compute_copy.py \
  tests/test_cross_device.py tests/test_fedavg_equivalence.py tests/benchmarks/test_bench_compile.py \
  2>&1 | tee "$OUT/tests.log" | tail -25
echo "tests exit ${PIPESTATUS[0]}"
timeout "${BENCH_TIMEOUT:-200}" python3 -P benchmarks/bench_compile.py --model smollm2-135m --steps 20 \
  --json > "$OUT/compile-135m.json" 2> "$OUT/compile-135m.err"
echo "bench_compile exit $?"; tail -5 "$OUT/compile-135m.err"; cat "$OUT/compile-135m.json"
