"""bf16 compute copy vs fp32 forwards on real weights: how much do losses and projected gradients move?

    python benchmarks/bench_mixed_precision.py                     # smollm2-135m, demo eval split, table
    python benchmarks/bench_mixed_precision.py --eps 1e-3 1e-2     # several ε side by side
    python benchmarks/bench_mixed_precision.py --json              # one JSON object

The GPU client's --compute-dtype bf16 runs forwards from bf16(θ ± ε·z) while θ stays fp32 (design §3).
MeZO's projected gradient g = (L₊ − L₋)/2ε is a finite difference of two nearly equal losses, so the
forward's rounding noise is divided by 2ε: this script measures, on the same batches and seeds,
  losses      L_bf16(θ) vs L_fp32(θ) per batch (absolute and relative difference)
  gradients   g_bf16 vs g_fp32 per seed: sign agreement, relative error, noise-to-signal ratio
  perturbation how much of ε·z survives rounding θ ± ε·z to bf16 (elements left unperturbed, and the
              relative error of the effective perturbation (bf16(θ+εz) − bf16(θ−εz))/2 against ε·z)
Every forward is the one the client runs: eval mode, inference mode, loss accumulated in fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from fedmezo.data.demo import generate_demo_dataset
from fedmezo.data.records import Example
from fedmezo.data.tokenize import collate, encode_example, pad_token_id
from fedmezo.zo import Batch, TrainableParams, causal_lm_loss, derive_seed, get_backend
from fedmezo.zo.mixed import ComputeCopy
from fedmezo.zo.step import projected_gradient

SEED_CLIENT = "bench-mixed-precision"  # derive_seed(0, 1, SEED_CLIENT, t): seeds like a real round's


def make_batches(
    tokenizer: Any, examples: Sequence[Example], batch_size: int, max_length: int
) -> list[Batch]:
    pad = pad_token_id(tokenizer)
    encoded = [encode_example(tokenizer, ex, max_length) for ex in examples]
    return [collate(encoded[i : i + batch_size], pad) for i in range(0, len(encoded), batch_size)]


def projected_grads(
    params: TrainableParams, loss_at: Any, seeds: Sequence[int], eps: float, batches: Sequence[Batch]
) -> list[float]:
    """g for seed k on batch k mod len(batches); `loss_at(seed, value, batch)` evaluates L(θ + value·z)."""
    grads = []
    for k, seed in enumerate(seeds):
        batch = batches[k % len(batches)]
        g, _ = projected_gradient(loss_at(seed, eps, batch), loss_at(seed, -eps, batch), eps, None)
        grads.append(math.nan if g is None else g)
    return grads


def grad_agreement(g32: Sequence[float], g16: Sequence[float]) -> dict[str, float]:
    """How well bf16 projected gradients follow the fp32 ones, seed by seed."""
    pairs = [(a, b) for a, b in zip(g32, g16) if math.isfinite(a) and math.isfinite(b)]
    rel = [abs(b - a) / abs(a) for a, b in pairs if a != 0.0]
    rms32 = math.sqrt(statistics.fmean(a * a for a, _ in pairs))
    rms_diff = math.sqrt(statistics.fmean((b - a) ** 2 for a, b in pairs))
    return {
        "sign_agreement": statistics.fmean(float((a > 0) == (b > 0)) for a, b in pairs),
        "median_rel_err": statistics.median(rel) if rel else math.nan,
        "mean_rel_err": statistics.fmean(rel) if rel else math.nan,
        "noise_to_signal": rms_diff / rms32 if rms32 else math.nan,  # rms(g16 − g32) / rms(g32)
        "correlation": statistics.correlation([a for a, _ in pairs], [b for _, b in pairs])
        if len(pairs) > 2
        else math.nan,
        "median_abs_g_fp32": statistics.median(abs(a) for a, _ in pairs),
    }


def perturbation_survival(compute: ComputeCopy, seed: int, eps: float) -> dict[str, float]:
    """What bf16 rounding leaves of ±ε·z: unperturbed elements and the effective perturbation's error."""
    params = compute.params
    eps_z = TrainableParams(torch.zeros_like(params.flat), params.names, params.shapes)
    get_backend(params.device).apply(eps_z, [seed], [eps])  # exactly ±fp32(ε) per element
    compute.derive([seed], [eps])
    plus = compute.copy.clone()
    compute.derive([seed], [-eps])
    minus = compute.copy
    effective = (plus.float() - minus.float()) / 2
    unperturbed = float((plus == minus).float().mean())
    rel_err = float(torch.linalg.vector_norm(effective - eps_z.flat) / torch.linalg.vector_norm(eps_z.flat))
    compute.derive([], [])
    return {"unperturbed_frac": unperturbed, "effective_perturbation_rel_err": rel_err}


def compare(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    *,
    seeds: Sequence[int],
    eps_values: Sequence[float],
) -> dict[str, Any]:
    """fp32 forwards first, then the same batches and seeds through a bf16 compute copy.

    `model` must be fp32 with every parameter trainable; it ends up reading the bf16 compute copy.
    """
    params = TrainableParams.from_model(model)
    backend = get_backend(params.device)
    theta = params.snapshot()

    def fp32_loss_at(seed: int, value: float, batch: Batch) -> float:
        backend.apply(params, [seed], [value])  # θ + value·z, the canonical fp32 add
        loss = causal_lm_loss(model, batch)
        params.restore(theta)
        return loss

    start = time.perf_counter()
    loss32 = [causal_lm_loss(model, b) for b in batches]
    g32 = {eps: projected_grads(params, fp32_loss_at, seeds, eps, batches) for eps in eps_values}
    fp32_s = time.perf_counter() - start

    compute = ComputeCopy(model, params)  # forwards now read bf16(θ); θ stays fp32

    def bf16_loss_at(seed: int, value: float, batch: Batch) -> float:
        compute.derive([seed], [value])  # copy ← bf16(θ + value·z), as mezo_step_mixed does
        return causal_lm_loss(model, batch)

    start = time.perf_counter()
    compute.derive([], [])
    loss16 = [causal_lm_loss(model, b) for b in batches]
    g16 = {eps: projected_grads(params, bf16_loss_at, seeds, eps, batches) for eps in eps_values}
    bf16_s = time.perf_counter() - start

    abs_diff = [abs(b - a) for a, b in zip(loss32, loss16)]
    rel_diff = [d / abs(a) for d, a in zip(abs_diff, loss32)]
    return {
        "params": params.numel,
        "batches": len(batches),
        "tokens_per_batch": statistics.fmean(b.num_tokens for b in batches),
        "seeds": len(seeds),
        "loss": {
            "fp32": loss32,
            "bf16": loss16,
            "mean_abs_diff": statistics.fmean(abs_diff),
            "max_abs_diff": max(abs_diff),
            "mean_rel_diff": statistics.fmean(rel_diff),
            "max_rel_diff": max(rel_diff),
        },
        "grad": {
            f"{eps:g}": {
                **grad_agreement(g32[eps], g16[eps]),
                **perturbation_survival(compute, seeds[0], eps),
                "g_fp32": g32[eps],
                "g_bf16": g16[eps],
            }
            for eps in eps_values
        },
        "fp32_forward_phase_s": fp32_s,
        "bf16_forward_phase_s": bf16_s,
    }


def print_table(report: dict[str, Any]) -> None:
    res = report["result"]
    print(f"model {report['model']}  ({report['machine']})")
    print(
        f"{res['params']:,} trainable params, {res['batches']} batches of {report['batch_size']} "
        f"(~{res['tokens_per_batch']:.0f} loss tokens each), {res['seeds']} seeds\n"
    )
    loss = res["loss"]
    print("loss per batch      fp32        bf16       |diff|     rel")
    for i, (a, b) in enumerate(zip(loss["fp32"], loss["bf16"])):
        print(f"  batch {i:2d}       {a:9.5f}   {b:9.5f}   {abs(b - a):8.5f}   {abs(b - a) / abs(a):7.4%}")
    print(f"  mean |diff| {loss['mean_abs_diff']:.5f} (max {loss['max_abs_diff']:.5f}), ", end="")
    print(f"mean rel {loss['mean_rel_diff']:.4%} (max {loss['max_rel_diff']:.4%})\n")
    keys = [
        "sign_agreement",
        "median_rel_err",
        "mean_rel_err",
        "noise_to_signal",
        "correlation",
        "median_abs_g_fp32",
        "unperturbed_frac",
        "effective_perturbation_rel_err",
    ]
    print("projected gradient " + "".join(f"{'eps ' + eps:>14s}" for eps in res["grad"]))
    for key in keys:
        print(f"  {key:30s}" + "".join(f"{res['grad'][eps][key]:14.4f}" for eps in res["grad"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m (real weights) or tiny-random")
    parser.add_argument("--examples", type=int, default=64, help="first N examples of the demo eval split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per example (prompt + answer)")
    parser.add_argument("--seeds", type=int, default=32, help="MeZO directions compared")
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-3], help="perturbation scales ε")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from fedmezo.models import load_model

    loaded = load_model(args.model, device=args.device)
    _, eval_split = generate_demo_dataset()
    examples = eval_split[: args.examples]
    batches = [
        b.to(args.device) for b in make_batches(loaded.tokenizer, examples, args.batch_size, args.max_length)
    ]
    seeds = [derive_seed(0, 1, SEED_CLIENT, t) for t in range(args.seeds)]
    result = compare(loaded.model, batches, seeds=seeds, eps_values=args.eps)
    report = {
        "model": args.model,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.device}",
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "result": result,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
