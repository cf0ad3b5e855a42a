#!/usr/bin/env bash
# Install what bench_server's native load generator needs (g++, gRPC C++ from Debian) and build it
# (benchmarks/loadgen). Idempotent: apt-get runs only when a tool or header is missing, and the build
# only when a source is newer than the binary. Needs root (or sudo) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc)

have_all() {
    command -v g++ >/dev/null && command -v pkg-config >/dev/null && command -v protoc >/dev/null \
        && command -v grpc_cpp_plugin >/dev/null && pkg-config --exists grpc++ protobuf
}

if ! have_all; then
    # shellcheck source=scripts/apt_install.sh
    source scripts/apt_install.sh
    apt_install install_loadgen "${PACKAGES[@]}"
fi
echo "install_loadgen: built $(bash benchmarks/loadgen/build.sh)"
