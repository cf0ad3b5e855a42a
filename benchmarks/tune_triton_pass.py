"""Sweep the Triton regenerate-and-add kernel's tile size and warps on a CUDA GPU.

    python benchmarks/tune_triton_pass.py [--params 134515008]

Prints GB/s of one fused pass (read + write of the fp32 buffer) for each configuration next to a
plain device-to-device copy, so the defaults in fedmezo/zo/triton_kernel.py can be chosen by measurement.
"""

from __future__ import annotations

import argparse
import sys

import torch

from fedmezo.zo.cpu_kernel import NumbaBackend
from fedmezo.zo.params import TrainableParams
from fedmezo.zo.triton_kernel import TritonBackend


def gbps(fn, numel: int, repeats: int = 20) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / repeats
    return 2 * numel * 4 / seconds / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=134_515_008)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.zeros(args.params, device="cuda"))
    params = TrainableParams.from_model(module)
    dst = torch.empty_like(params.flat)
    copy = gbps(lambda: dst.copy_(params.flat), params.numel)
    print(f"copy {copy:8.1f} GB/s")
    # bits of every configuration checked against the numba CPU backend on a 3-tensor buffer
    check = torch.nn.Module()
    for i, n in enumerate((1_000_003, 128 * 1000, 77)):
        check.register_parameter(f"p{i}", torch.nn.Parameter(torch.randn(n)))
    check_params = TrainableParams.from_model(check)
    expected = check_params.flat.clone()
    cpu_params = TrainableParams(expected, check_params.names, check_params.shapes)
    NumbaBackend().apply(cpu_params, [5, 2**64 - 3], [1e-3, -7e-5])
    check_gpu = TrainableParams(check_params.flat.cuda(), check_params.names, check_params.shapes)
    base = check_gpu.flat.clone()
    for tile in (4, 8, 16, 32):
        for warps in (2, 4, 8):
            backend = TritonBackend(tile_blocks=tile, num_warps=warps)
            check_gpu.flat.copy_(base)
            backend.apply(check_gpu, [5, 2**64 - 3], [1e-3, -7e-5])
            same = torch.equal(check_gpu.flat.cpu(), expected)
            rate = gbps(lambda b=backend: b.apply(params, [123], [1e-7]), params.numel)
            print(f"tile {tile:3d} warps {warps:2d}  {rate:8.1f} GB/s  {rate / copy:6.1%} of copy  ok={same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
