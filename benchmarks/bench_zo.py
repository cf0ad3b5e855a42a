"""ZO engine benchmark: everything measured side by side in one run, reported as ratios.

    python benchmarks/bench_zo.py                      # smollm2-135m, CPU (+ CUDA when present), table
    python benchmarks/bench_zo.py --json               # one JSON object
    python benchmarks/bench_zo.py --random-weights     # same architecture, no weights needed (GPU hosts)

Ratios (issue #2):
  pass_ratio               fused regenerate-and-add pass ÷ plain in-place fp32 add, same parameters
  step_ratio               one MeZO step ÷ two forward passes on the same batch
  reference_ratio          original-MeZO-style step (torch.manual_seed + torch.normal per tensor, z
                           regenerated four times) ÷ our step
  memory_ratio             peak memory during a MeZO step ÷ peak during inference (two forwards), same batch
                           (RSS high-water mark on CPU, max_memory_allocated on CUDA)
  replay_ns_per_param_seed applying a 64-seed round delta, per parameter and seed
  fingerprint_vs_sha256    fedmezo-fp-v1 fingerprint of θ ÷ the host SHA-256 it replaced (on CUDA the
                           SHA-256 includes the device-to-host copy it needed); fingerprint_gbps is
                           bytes of θ read per second, next to copy_gbps of a device-to-device copy

    python benchmarks/bench_zo.py --fingerprint-only   # just the fingerprint rows (quick GPU check)
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from fedmezo.memory import PeakMemory
from fedmezo.zo import Batch, TrainableParams, get_backend, make_loss_fn, mezo_step
from fedmezo.zo.mixed import ComputeCopy, mezo_step_mixed

EPS = 1e-3
LR = 1e-6
REPLAY_SEEDS = 64


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall-clock seconds of `fn` over `repeats` runs after `warmup` runs.

    The first CPU forwards of a process are several times slower (allocator and oneDNN warm-up),
    so every measurement gets the same warm-up before it is timed.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def original_mezo_step(params: list[torch.Tensor], loss_fn: Callable[[], float], seed: int) -> float:
    """A step as the original MeZO code writes it: torch.normal per tensor, z regenerated 4 times."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=scale * EPS)

    perturb(1.0)
    loss_plus = loss_fn()
    perturb(-2.0)
    loss_minus = loss_fn()
    perturb(1.0)
    g = (loss_plus - loss_minus) / (2 * EPS)
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)
        p.add_(z, alpha=-LR * g)
    return g


def make_batch(vocab_size: int, batch_size: int, seq_len: int, device: torch.device) -> Batch:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
    return Batch(ids, torch.ones_like(ids), ids.clone()).to(device)


def load(model_name: str, random_weights: bool, device: torch.device) -> torch.nn.Module:
    from fedmezo import models

    configs = {
        "smollm2-135m": models.smollm2_135m_config,
        "llama-1b": models.llama_1b_config,
        "tiny-random": models.tiny_random_config,
    }
    if random_weights:
        if model_name not in configs:
            raise SystemExit(f"--random-weights knows {sorted(configs)}, not {model_name!r}")
        model = models.build_random_model(configs[model_name]())
    else:
        model = models.load_model(model_name).model
    return model.to(device).eval()


def host_sha256(flat: torch.Tensor) -> str:
    """The fingerprint before fedmezo-fp-v1: copy θ to the host, one SHA-256 over its bytes."""
    host = flat.detach().to("cpu").contiguous().numpy()
    return hashlib.sha256(host.astype("<f4", copy=False).data).hexdigest()


def bench_fingerprint(params: TrainableParams, device: torch.device, repeats: int) -> dict[str, Any]:
    """fedmezo-fp-v1 where θ lives vs the old host SHA-256, and (CUDA) vs a device-to-device copy."""
    nbytes = params.numel * 4
    fp_s = timed(params.fingerprint, device, repeats * 3)
    sha_s = timed(lambda: host_sha256(params.flat), device, repeats)
    result = {
        "fingerprint_ms": fp_s * 1e3,
        "fingerprint_gbps": nbytes / fp_s / 1e9,
        "host_sha256_ms": sha_s * 1e3,
        "host_sha256_gbps": nbytes / sha_s / 1e9,
        "fingerprint_vs_sha256": fp_s / sha_s,
    }
    if device.type == "cuda":
        copy_dst = torch.empty_like(params.flat)
        copy_s = timed(lambda: copy_dst.copy_(params.flat), device, repeats * 3)
        result |= {
            "d2d_copy_ms": copy_s * 1e3,
            "d2d_copy_gbps": 2 * nbytes / copy_s / 1e9,  # read + write, as copy_gbps
            "fingerprint_vs_d2d_copy": fp_s / copy_s,
        }
    return result


def bench_fingerprint_only(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    params = TrainableParams.from_model(load(args.model, args.random_weights, device))
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "backend": get_backend(device).name,
        "params": params.numel,
        "batch": "-",
        "threads": torch.get_num_threads(),
    } | bench_fingerprint(params, device, args.repeats)


def bench_device(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model = load(args.model, args.random_weights, device)
    params = TrainableParams.from_model(model)
    backend = get_backend(device)
    batch = make_batch(model.config.vocab_size, args.batch_size, args.seq_len, device)
    loss_fn = make_loss_fn(model, batch)
    repeats = args.repeats
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "backend": backend.name,
        "params": params.numel,
        "batch": f"{args.batch_size}x{args.seq_len}",
        "threads": torch.get_num_threads(),
    }

    # pass_ratio: one fused regenerate-and-add pass vs one plain in-place add over the same buffer
    plain_s = timed(lambda: params.flat.add_(1e-7), device, repeats * 3)
    fused_s = timed(lambda: backend.apply(params, [12345], [1e-7]), device, repeats * 3)
    result |= {"plain_add_ms": plain_s * 1e3, "fused_pass_ms": fused_s * 1e3, "pass_ratio": fused_s / plain_s}
    if device.type == "cuda":
        copy_dst = torch.empty_like(params.flat)
        copy_s = timed(lambda: copy_dst.copy_(params.flat), device, repeats * 3)
        bytes_moved = 2 * params.flat.numel() * 4  # read + write
        result |= {"pass_gbps": bytes_moved / fused_s / 1e9, "copy_gbps": bytes_moved / copy_s / 1e9}
        del copy_dst

    # step_ratio and reference_ratio: our step, two forwards, the original-MeZO-style step
    seeds = iter(range(10_000, 1_000_000))
    two_forwards_s = timed(lambda: (loss_fn(), loss_fn()), device, repeats)
    step_s = timed(lambda: mezo_step(params, loss_fn, seed=next(seeds), eps=EPS, lr=LR), device, repeats)
    tensors = [t for _, t in params.tensors()]
    original_s = timed(
        lambda: original_mezo_step(tensors, loss_fn, next(seeds)), device, max(1, repeats // 2)
    )
    result |= {
        "two_forwards_ms": two_forwards_s * 1e3,
        "step_ms": step_s * 1e3,
        "original_step_ms": original_s * 1e3,
        "step_ratio": step_s / two_forwards_s,
        "reference_ratio": original_s / step_s,
        "steps_per_s": 1.0 / step_s,
        "original_steps_per_s": 1.0 / original_s,
    }

    # memory_ratio: peak during a step vs peak during inference on the same batch
    peak = PeakMemory(device)
    peak.reset()
    loss_fn()
    loss_fn()
    inference_peak = peak.peak_bytes()
    peak.reset()
    mezo_step(params, loss_fn, seed=7, eps=EPS, lr=LR)
    step_peak = peak.peak_bytes()
    result |= {
        "inference_peak_mib": inference_peak / 2**20,
        "step_peak_mib": step_peak / 2**20,
        "memory_ratio": step_peak / inference_peak,
        "round_snapshot_mib": params.numel * 4 / 2**20,  # host copy of θ_r, reported separately
    }

    # replay: a 64-seed round delta in one fused pass
    replay_seeds = list(range(1, REPLAY_SEEDS + 1))
    replay_values = [1e-7 * (-1) ** i for i in range(REPLAY_SEEDS)]
    replay_s = timed(lambda: backend.apply(params, replay_seeds, replay_values), device, max(1, repeats // 2))
    result |= {
        "replay_ms": replay_s * 1e3,
        "replay_ns_per_param_seed": replay_s / (params.numel * REPLAY_SEEDS) * 1e9,
    }
    return result | bench_fingerprint(params, device, repeats)


def bench_mixed(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """bf16 forwards from a compute copy, fp32 canonical θ (issue #7), next to both original-MeZO styles."""
    model = load(args.model, args.random_weights, device)
    params = TrainableParams.from_model(model)
    batch = make_batch(model.config.vocab_size, args.batch_size, args.seq_len, device)
    loss_fn = make_loss_fn(model, batch)
    seeds = iter(range(10_000, 1_000_000))
    repeats = args.repeats
    peak = PeakMemory(device)
    # the fp32 model first: its inference peak and the original-MeZO-style step in fp32
    peak.reset()
    loss_fn()
    fp32_inference_peak = peak.peak_bytes()
    fp32_tensors = [t for _, t in params.tensors()]
    original_fp32_s = timed(lambda: original_mezo_step(fp32_tensors, loss_fn, next(seeds)), device, repeats)

    compute = ComputeCopy(model, params)  # the model now reads bf16 weights; θ stays fp32 in params.flat
    if args.compile:  # CUDA graphs hide the per-layer Python and launch overhead of small models
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
        loss_fn = make_loss_fn(compiled, batch)
    fp32_tensors.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    plain_s = timed(lambda: params.flat.add_(0.0), device, repeats * 3)
    derive_s = timed(lambda: compute.derive([12345], [1e-7]), device, repeats * 3)
    update_s = timed(lambda: compute.update([12345], [0.0]), device, repeats * 3)
    two_forwards_s = timed(lambda: (loss_fn(), loss_fn()), device, repeats)
    step_s = timed(
        lambda: mezo_step_mixed(compute, loss_fn, seed=next(seeds), eps=EPS, lr=LR), device, repeats
    )
    bf16_tensors = [model.get_parameter(name) for name in params.names]
    original_bf16_s = timed(
        lambda: original_mezo_step([p.data for p in bf16_tensors], loss_fn, next(seeds)), device, repeats
    )
    compute.derive([], [])  # the original-style step drifted the bf16 copy; rebuild it from θ
    peak.reset()
    loss_fn()
    loss_fn()
    bf16_inference_peak = peak.peak_bytes()
    peak.reset()
    mezo_step_mixed(compute, loss_fn, seed=7, eps=EPS, lr=LR)
    step_peak = peak.peak_bytes()
    bytes_derive = params.numel * (4 + 2)  # read θ fp32, write bf16
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "backend": "triton" if device.type == "cuda" else get_backend(device).name,
        "params": params.numel,
        "batch": f"{args.batch_size}x{args.seq_len}",
        "compute_dtype": "bfloat16",
        "plain_add_ms": plain_s * 1e3,
        "derive_pass_ms": derive_s * 1e3,
        "update_pass_ms": update_s * 1e3,
        "derive_pass_gbps": bytes_derive / derive_s / 1e9,
        "two_forwards_ms": two_forwards_s * 1e3,
        "step_ms": step_s * 1e3,
        "step_ratio": step_s / two_forwards_s,
        "steps_per_s": 1.0 / step_s,
        "original_fp32_step_ms": original_fp32_s * 1e3,
        "original_bf16_step_ms": original_bf16_s * 1e3,
        "speedup_vs_original_fp32": original_fp32_s / step_s,
        "speedup_vs_original_bf16": original_bf16_s / step_s,
        "fp32_inference_peak_mib": fp32_inference_peak / 2**20,
        "bf16_inference_peak_mib": bf16_inference_peak / 2**20,
        "step_peak_mib": step_peak / 2**20,
        "memory_ratio_vs_fp32_inference": step_peak / fp32_inference_peak,
        "memory_ratio_vs_bf16_inference": step_peak / bf16_inference_peak,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"model {report['model']}  ({report['machine']})")
    for device, res in report["devices"].items():
        print(f"\n[{device}] {res['device']}  backend={res['backend']}", end="")
        print(f"  params={res['params']:,}  batch={res['batch']}")
        for key, value in res.items():
            if isinstance(value, float):
                print(f"  {key:28s} {value:12.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny-random or llama-1b")
    parser.add_argument("--random-weights", action="store_true", help="build the architecture, skip weights")
    parser.add_argument("--device", default="all", help="cpu, cuda or all (cuda only when present)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the bf16 forwards (CUDA graphs)"
    )
    parser.add_argument(
        "--compute-dtype",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: forwards from a bf16 compute copy of fp32 θ (the GPU client's fast path)",
    )
    parser.add_argument(
        "--fingerprint-only", action="store_true", help="measure only the fingerprint (no forwards)"
    )
    args = parser.parse_args(argv)
    if args.model == "llama-1b":
        args.random_weights = True
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    bench = bench_mixed if args.compute_dtype == "bf16" else bench_device
    if args.fingerprint_only:
        bench = bench_fingerprint_only
    report: dict[str, Any] = {
        "model": args.model + (" (random weights)" if args.random_weights else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "devices": {d: bench(args, torch.device(d)) for d in devices},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
