#!/usr/bin/env bash
# Issue #15's server goals where the load has its own cores: bench_server.py at tau = 20 with shared seeds,
# 1,000 and 10,000 clients, the server pinned to the first half of the CPUs and the load generators to
# the second half (the 16-core device host; on the 2-core developer machine they shared the cores, and
# the 10,000-client tail was the burst of long-poll answers, RESULTS.md "10,000 clients: ..." sections).
#   OUT=/tmp/srv bash scripts/device_server_bench.sh           # JSON reports and stderr tails in $OUT
#   SMALL=1 OUT=/tmp/srv bash scripts/device_server_bench.sh   # 100 / 300 clients: a quick plumbing check
#   LOADGEN=native ...   # bench_server's C++ generator (needs g++ and libgrpc++-dev there: `make loadgen`)
# Every step has its own timeout, 120 + 330 + 2 x 45 = 540 s in all, plus installing the wheels: one
# device call (at most 600 s).
# Needs grpcio, grpcio-health-checking and protobuf at the checkout's versions for the machine's Python
# (scripts/gpu_env.sh installs the wheels in .whl/; carry .whl to the device machine), e.g.
#   pip download --no-deps --only-binary :all: --python-version 3.12 -d .whl grpcio==1.85.4 \
#     grpcio-health-checking==1.85.1 protobuf==7.36.2 gguf==0.19.0
set -u
OUT=${OUT:-/tmp/server-bench}
mkdir -p "$OUT"
source scripts/gpu_env.sh || exit 1
export PYTHONSAFEPATH=1  # the server subprocess too: the checkout's fedmezo/ must not shadow the package
n=$(nproc)
half=$((n / 2))
pin=(--server-cpus "0-$((half - 1))" --loadgen-cpus "$half-$((n - 1))")
gens=$((half > 1 ? half - 1 : 1))  # one core of the generators' half left for the kernel and grpc threads
if [ "${SMALL:-0}" = 1 ]; then small=100; large=300; else small=1000; large=10000; fi
{ date -u; nproc; uptime; python3 -c "import grpc, sys; print(sys.version.split()[0], 'grpcio', grpc.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

bench() {  # name, timeout, bench_server flags...
  local name=$1 limit=$2
  shift 2
  echo "== $name (load $(cut -d' ' -f1 /proc/loadavg))"
  timeout "$limit" python3 benchmarks/bench_server.py --local-steps 20 --seed-scheme shared --flow lean \
    "${pin[@]}" --loadgen "${LOADGEN:-python}" --json --quiet "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "exit $?"
  tail -3 "$OUT/$name.err"
  python3 - "$OUT/$name.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"no report: {e}")
keys = ("clients", "p50_submit_ms", "p99_submit_ms", "round_close_s", "submits_expected", "submits_accepted",
        "fingerprints_in_sync", "server_peak_rss_mib", "downlink_per_client_per_round_bytes", "machine")
print({k: r.get(k) for k in keys})
print("server's own SubmitUpdate:", r.get("server_rpc", {}).get("SubmitUpdate"))
EOF
}

bench "c$small" 120 --clients "$small" --rounds 3 --procs "$gens" --train-s 1:6 --heartbeat-s 5
bench "c$large" 330 --clients "$large" --rounds 2 --procs "$gens" --train-s 1:21 --heartbeat-s 30

# The round opening on `fedmezo server` itself: 10,000 (SMALL: 300) held long-polls answered all at once and paced
# (--wake-chunk, the default), heartbeats from a prober process timed during it (RESULTS.md "a round
# opening paced by its own answers"); ~40 s each on the 2-core developer machine.
for chunk in 0 64; do
  name=round-open-chunk$chunk
  echo "== $name"
  timeout 45 python3 benchmarks/bench_round_open.py --waiters "$large" --wake-chunk $chunk > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "exit $?"; cat "$OUT/$name.json"; tail -3 "$OUT/$name.err"
done
