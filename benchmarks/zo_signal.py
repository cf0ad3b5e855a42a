"""Which weights are worth perturbing: gradient signal against curvature cost, per weight group.

    python benchmarks/zo_signal.py --model smollm2-135m --batches 6 [--json out.json]

A zeroth-order step along a random ±1 direction z descends by η·|g| (FZOO's normalised step; MeZO's
is η·|g|² on average) and pays about η²·zᵀHz/2 = η²·tr(H)/2 in curvature, where g and H are the gradient
and Hessian restricted to the trained weights. With the best rate the progress per step is
∝ |g|² / tr(H), so a weight group with little gradient and much curvature slows every step down: leave
it frozen (`--freeze`). This measures both at θ_0 on demo batches: |g|² from backprop (each batch's,
averaged, and that of the mean gradient), tr(H) by Hutchinson's estimator zᵀ(Hz) with one Rademacher z
per batch (a Hessian-vector product by double backprop; unbiased per group because z is independent
across groups, but noisy: a group's trace can come out negative on few batches). Each trace comes with
its standard error over the probes; a ratio whose trace is not at least 2 SE above zero is not a
measurement (printed as "noise"). A research aid, not part of training: it needs backprop memory
(~3× inference).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

GROUPS = (
    "embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    "input_layernorm", "post_attention_layernorm",
)  # fmt: skip


def group_of(name: str) -> str:
    """The weight group of a parameter name (Llama-style names; other weights by their own name)."""
    for group in GROUPS:
        if group in name:
            return group
    return "final_norm" if "norm" in name else name


def measure(
    model_name: str, batches: int, batch_size: int = 4, max_length: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Per group: parameters, mean per-batch |g|², |mean g|², Hutchinson tr(H), and the two ratios."""
    from fedmezo.data import ClientDataset, generate_demo_dataset
    from fedmezo.models import load_model
    from fedmezo.zo.objective import response_cross_entropy

    torch.manual_seed(seed)
    loaded = load_model(model_name)
    model = loaded.model.float().eval()
    model.config._attn_implementation = "eager"  # the fused CPU attention has no double backward
    train, _ = generate_demo_dataset(seed=0)
    random.Random(seed).shuffle(train)  # every category among the first batches
    data = ClientDataset.from_examples(loaded.tokenizer, train[: batches * batch_size], max_length)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    numel: dict[str, int] = defaultdict(int)
    for name, param in named:
        numel[group_of(name)] += param.numel()
    g2: dict[str, float] = defaultdict(float)
    probes: dict[str, list[float]] = defaultdict(list)  # each batch's zᵀHz restricted to the group
    mean_grad = [torch.zeros_like(p) for p in params]
    seen = 0
    for batch in data.iter_batches(batch_size):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = response_cross_entropy(logits, batch.labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        zs = [torch.randint(0, 2, p.shape, dtype=p.dtype).mul_(2).sub_(1) for p in params]
        hz = torch.autograd.grad(sum((g * z).sum() for g, z in zip(grads, zs, strict=True)), params)
        probe: dict[str, float] = defaultdict(float)
        for (name, _), g, z, h, m in zip(named, grads, zs, hz, mean_grad, strict=True):
            group = group_of(name)
            g2[group] += float((g.detach() ** 2).sum())
            probe[group] += float((z * h).sum())
            m += g.detach()
        for group, value in probe.items():
            probes[group].append(value)
        seen += 1
        print(f"batch {seen}/{batches}: loss {float(loss):.3f}", file=sys.stderr, flush=True)
        del grads, hz, zs, logits, loss
    mg2: dict[str, float] = defaultdict(float)
    for (name, _), m in zip(named, mean_grad, strict=True):
        mg2[group_of(name)] += float(((m / seen) ** 2).sum())
    rows = {
        group: {
            "numel": numel[group],
            "g2": g2[group] / seen,
            "mean_g2": mg2[group],
            "trace": sum(probes[group]) / seen,
            "trace_se": standard_error(probes[group]),
            "probes": probes[group],
        }
        for group in numel
    }
    for row in rows.values():
        row["ratio"] = row["g2"] / row["trace"] if row["trace"] else float("nan")
        row["mean_ratio"] = row["mean_g2"] / row["trace"] if row["trace"] else float("nan")
    return {"model": model_name, "batches": seen, "batch_size": batch_size, "groups": rows}


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of `values` (nan for fewer than two)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def measured(trace: float, se: float) -> bool:
    """Whether a trace is at least 2 standard errors above zero (else its ratio is noise)."""
    return trace > 0 and not trace < 2 * se


def subset_ratio(rows: dict[str, dict[str, Any]], groups: Sequence[str]) -> dict[str, float]:
    """|g|² / tr(H) of training these groups together (sums, not a mean of ratios), with the subset's
    trace and its standard error (the probes' per-batch sums over the groups)."""
    per_probe = [sum(values) for values in zip(*(rows[g]["probes"] for g in groups), strict=True)]
    trace = sum(per_probe) / len(per_probe)
    return {
        "ratio": sum(rows[g]["g2"] for g in groups) / trace,
        "trace": trace,
        "trace_se": standard_error(per_probe),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", type=int, default=6, help="demo batches (one Hutchinson probe each)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = measure(args.model, args.batches)
    rows = result["groups"]
    print(f"{'group':26s} {'params':>11s} {'|g|^2':>9s} {'|Eg|^2':>9s} {'tr H':>9s} {'± SE':>8s} "
          f"{'|g|^2/trH':>10s}")  # fmt: skip
    for group, row in sorted(rows.items(), key=lambda kv: -kv[1]["ratio"] if kv[1]["trace"] > 0 else 0):
        ratio = f"{row['ratio']:10.3g}" if measured(row["trace"], row["trace_se"]) else f"{'noise':>10s}"
        print(f"{group:26s} {row['numel']:11,d} {row['g2']:9.4g} {row['mean_g2']:9.4g} {row['trace']:9.4g} "
              f"{row['trace_se']:8.3g} {ratio}")  # fmt: skip
    everything = list(rows)
    result["subsets"] = {"all": subset_ratio(rows, everything)}
    if "embed_tokens" in rows:
        rest = [g for g in everything if g != "embed_tokens"]
        result["subsets"]["all but embed_tokens"] = subset_ratio(rows, rest)
    for label, value in result["subsets"].items():
        reading = "" if measured(value["trace"], value["trace_se"]) else " (trace within 2 SE of zero: noise)"
        print(f"trained together, {label}: |g|^2 / tr(H) = {value['ratio']:.3g}, tr(H) {value['trace']:.4g} "
              f"± {value['trace_se']:.3g}{reading}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
