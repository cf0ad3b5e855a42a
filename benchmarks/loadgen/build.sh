#!/usr/bin/env bash
# Build bench_server's native load generator (loadgen.cc) against the system's gRPC C++ library.
#   bash benchmarks/loadgen/build.sh [OUT_DIR]     # default: benchmarks/loadgen/build
# Needs g++, pkg-config, protoc with grpc_cpp_plugin and the grpc++/protobuf headers; on Debian:
#   apt-get install g++ pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
# Idempotent: rebuilds only when loadgen.cc, a .proto or this script is newer than the binary.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${1:-$HERE/build}"
BIN="$OUT/loadgen"
PROTOS=(fedmezo/v1/common.proto fedmezo/v1/federation.proto)

missing=()
for tool in g++ pkg-config protoc grpc_cpp_plugin; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
pkg-config --exists grpc++ protobuf 2>/dev/null || missing+=("grpc++/protobuf headers (pkg-config)")
if ((${#missing[@]})); then
    echo "loadgen build: missing ${missing[*]}; on Debian: apt-get install g++ pkg-config" \
        "libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc" >&2
    exit 3
fi

if [[ -x "$BIN" ]]; then
    stale=0
    for src in "$HERE/loadgen.cc" "$0" "${PROTOS[@]/#/$ROOT/proto/}"; do
        [[ "$src" -nt "$BIN" ]] && stale=1
    done
    ((stale)) || { echo "$BIN"; exit 0; }
fi

mkdir -p "$OUT/gen"
protoc -I"$ROOT/proto" --cpp_out="$OUT/gen" --grpc_out="$OUT/gen" \
    --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" "${PROTOS[@]}"
# shellcheck disable=SC2046  # pkg-config's flags are meant to split
g++ -O2 -std=c++17 -pthread -I"$OUT/gen" "$HERE/loadgen.cc" "$OUT"/gen/fedmezo/v1/*.cc \
    $(pkg-config --cflags --libs grpc++ protobuf) -o "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
