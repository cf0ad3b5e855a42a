"""Full-parameter MeZO on bf16 canonical weights (§7.4) against fp32 weights, on the same steps.

    python benchmarks/bench_bf16_weights.py                       # smollm2-135m, all runs, table
    python benchmarks/bench_bf16_weights.py --steps 40 --eval-every 20 --model tiny-random   # quick
    python benchmarks/bench_bf16_weights.py --estimator fzoo --perturbations 8 --lr 3e-3 --steps 112 \
        --eval-every 14 --seeds 0 1 2 --formats fp32 bf16-sr      # FZOO's step scale (1,008 forwards)

Issue #14 asks whether bf16 weights with stochastic rounding (2 bytes per parameter) learn like fp32
weights (4 bytes). Every run trains one data stream with MeZO or FZOO (`--estimator`; same lr, ε,
batches and direction seeds for every format given the stream's seed) and evaluates the held-out loss
every `--eval-every` steps:

  fp32      θ fp32, perturbed in place (the client's default CPU path)
  bf16-sr   θ bf16, updates stochastically rounded, perturbed forwards made per module (bf16_shift)
  bf16-rn   θ bf16, updates rounded to nearest: the failure SR exists to avoid (updates erased)
  fp32-bf16fwd  θ fp32, forwards from a bf16 compute copy (the GPU client's mixed precision): what bf16
            forwards alone cost, so that bf16-sr's gap to fp32 splits into forwards and storage
  bf16-sr-vec32  an experiment: matrices bf16-sr, the 1-D tensors (RMSNorm gains, ~1.0, whose bf16
            ulp 2^-7 dwarfs MeZO's updates) kept fp32 with fp32 adds, their forwards reading bf16 copies

`--round-steps τ` trains as a one-client federation does: τ local steps from θ_r, then θ_r restored and
the round's τ·P pairs applied as one delta: the canonical trajectory (for bf16-sr one stochastic rounding
per element per round, §7.4; for fp32 the per-step trajectory without the drift of its perturb-and-undo
adds).

The run-to-run noise is the spread between fp32 runs on different streams (`--seeds`), or between fp32
runs on the same batches with other directions (`--direction-salt k`: ZO's own noise). The summary of
a run without `--direction-salt` shows the fp32 runs with other directions that exist as `fp32-dirK`
and reports every gap to fp32 on the same stream alike (final, mean and mean |·| over the second half).
Each run is a fresh process (its peak memory is its own: a training step's peak ÷ a plain forward's
peak, both after a warm-up, `PeakMemory`), and writes one JSON file under `--out`, so an interrupted
sweep resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
FORMATS = ("fp32", "bf16-sr", "bf16-rn", "fp32-bf16fwd", "bf16-sr-vec32")
CLIENT = "bench-bf16-weights"
DIRECTION_SALT = 1_000_003  # --direction-salt k draws directions from stream seed + k·this
NOISE_PREFIX = "fp32-dir"  # fp32 runs with other directions join the summary as fp32-dir1, fp32-dir2, ...
MAX_NOISE_SALT = 4


def _trim() -> None:
    """Hand freed heap back to the OS, so the RSS baseline is the model, not the loader's leftovers."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_one(args: argparse.Namespace, fmt: str, seed: int) -> dict[str, Any]:
    import torch

    from fedmezo.data.demo import generate_demo_dataset
    from fedmezo.data.tokenize import collate, encode_example, pad_token_id
    from fedmezo.memory import PeakMemory
    from fedmezo.models import load_model
    from fedmezo.zo import TrainableParams, causal_lm_loss, derive_seed, get_backend
    from fedmezo.zo.bf16_shift import Bf16Shift
    from fedmezo.zo.bf16_weights import Bf16Params
    from fedmezo.zo.estimators import InPlace, Perturbation, estimate_step, forwards_per_step
    from fedmezo.zo.mixed import ComputeCopy, CopyShift
    from fedmezo.zo.weights import add_pairs

    torch.manual_seed(0)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    train, held_out = generate_demo_dataset()
    pad = pad_token_id(tokenizer)

    def batch_of(examples: Sequence[Any]) -> Any:
        return collate([encode_example(tokenizer, ex, args.max_length) for ex in examples], pad)

    rng = random.Random(seed)
    direction_stream = seed + DIRECTION_SALT * args.direction_salt  # same batches, other directions
    order = [rng.randrange(len(train)) for _ in range(args.steps * args.batch_size)]
    eval_batches = [
        batch_of(held_out[i : i + args.batch_size])
        for i in range(0, min(args.eval_examples, len(held_out)), args.batch_size)
    ]
    move: Perturbation
    if fmt == "fp32":
        params: Any = TrainableParams.from_model(model)
        move = InPlace(params)
    elif fmt == "fp32-bf16fwd":
        params = TrainableParams.from_model(model)
        # the device's fast kernel: under tests' TRITON_INTERPRET=1 the default would be interpreted Triton
        move = CopyShift(ComputeCopy(model, params, backend=get_backend(params.device)))
    elif fmt == "bf16-sr-vec32":
        params = _Vec32(model)
        move = params
    else:
        params = Bf16Params.from_model(model)
        move = Bf16Shift(model, params)
        if fmt == "bf16-rn":
            move = _NearestUpdates(move)

    def held_out_loss() -> float:
        return statistics.fmean(causal_lm_loss(model, b) for b in eval_batches)

    # memory: a plain forward's peak, then a training step's, each after a warm-up
    _trim()
    peak = PeakMemory("cpu")
    probe = batch_of(train[: args.batch_size])
    causal_lm_loss(model, probe)
    peak.reset()
    causal_lm_loss(model, probe)
    inference_peak = peak.peak_bytes()
    snapshot = params.snapshot()
    P = args.perturbations
    probe_seeds = [list(range(1, P + 1)), list(range(P + 1, 2 * P + 1))]
    estimate_step(
        args.estimator, move, lambda: causal_lm_loss(model, probe), seeds=probe_seeds[0], eps=args.eps, lr=0.0
    )
    peak.reset()
    estimate_step(
        args.estimator, move, lambda: causal_lm_loss(model, probe), seeds=probe_seeds[1], eps=args.eps, lr=0.0
    )
    train_peak = peak.peak_bytes()
    params.restore(snapshot)
    del snapshot

    curve = [(0, held_out_loss())]
    train_losses: list[float] = []
    start = time.perf_counter()
    step_seconds = 0.0
    tau = args.round_steps
    round_start: Any = None
    delta_seeds: list[int] = []
    delta_values: list[float] = []
    for t in range(args.steps):
        if tau > 1 and t % tau == 0:
            round_start = params.snapshot()
        batch = batch_of([train[i] for i in order[t * args.batch_size : (t + 1) * args.batch_size]])
        tick = time.perf_counter()
        result = estimate_step(
            args.estimator,
            move,
            functools.partial(causal_lm_loss, model, batch),
            seeds=[derive_seed(direction_stream, 1, CLIENT, t * P + p) for p in range(P)],
            eps=args.eps,
            lr=args.lr,
        )
        if tau > 1:
            if not result.skipped:
                delta_seeds += result.seeds
                delta_values += [-args.lr * a for a in result.scalars]
            if (t + 1) % tau == 0 or t + 1 == args.steps:  # the round's delta onto θ_r, in one apply
                params.restore(round_start)
                add_pairs(params, delta_seeds, delta_values)
                delta_seeds, delta_values = [], []
        step_seconds += time.perf_counter() - tick
        train_losses.append(result.loss)
        if (t + 1) % args.eval_every == 0 or t + 1 == args.steps:
            curve.append((t + 1, held_out_loss()))
            print(
                f"  {fmt} seed {seed}: step {t + 1}/{args.steps} held-out {curve[-1][1]:.4f}", file=sys.stderr
            )
    return {
        "format": fmt,
        "seed": seed,
        "direction_salt": args.direction_salt,
        "estimator": args.estimator,
        "perturbations": P,
        "round_steps": tau,
        "forwards_per_step": forwards_per_step(args.estimator, P),
        "params": params.numel,
        "curve": curve,
        "train_losses": train_losses,
        "step_s": step_seconds / args.steps,
        "wall_s": time.perf_counter() - start,
        "inference_peak_bytes": inference_peak,
        "train_peak_bytes": train_peak,
        "memory_ratio": train_peak / inference_peak,
        "fingerprint": params.fingerprint(),
    }


class _Vec32:
    """bf16-sr-vec32's weights and Perturbation in one: matrices in a Bf16Params with its hooks, vectors
    fp32 canonical (tensor ids after the matrices') whose bf16 copies the forwards read."""

    def __init__(self, model: Any) -> None:
        import torch

        from fedmezo.zo.bf16_shift import Bf16Shift
        from fedmezo.zo.bf16_weights import Bf16Params

        self.vectors = {n: p for n, p in model.named_parameters() if p.dim() == 1}
        self.canonical = {n: p.detach().float().clone() for n, p in self.vectors.items()}
        for p in self.vectors.values():
            p.requires_grad_(False)
        self.matrices = Bf16Params.from_model(model)  # casts the model (and the vectors' copies) to bf16
        self.hooks = Bf16Shift(model, self.matrices)
        self.first_id = len(self.matrices.names)
        self.numel = self.matrices.numel + sum(v.numel() for v in self.canonical.values())
        self._torch = torch

    def _signs(self, seed: int, index: int, numel: int) -> Any:
        from fedmezo.zo.rng import rademacher

        return rademacher(seed, self.first_id + index, numel).float()

    def _bind(self, seed: int | None, value: float) -> None:
        for index, (name, p) in enumerate(self.vectors.items()):
            w = self.canonical[name]
            if seed is not None:
                v = self._torch.tensor(value, dtype=self._torch.float32)
                w = w + self._torch.where(self._signs(seed, index, w.numel()) > 0, v, -v)
            p.data = w.to(self._torch.bfloat16)

    def shift(self, seed: int, value: float) -> None:
        self.hooks.shift(seed, value)
        self._bind(seed, value)

    def reset(self) -> None:
        self.hooks.reset()
        self._bind(None, 0.0)

    def update(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        self.hooks.update(seeds, values)
        for seed, value in zip(seeds, values, strict=True):  # fp32 adds, in order, per element
            v = self._torch.tensor(value, dtype=self._torch.float32)
            for index, name in enumerate(self.vectors):
                w = self.canonical[name]
                w.add_(self._torch.where(self._signs(seed, index, w.numel()) > 0, v, -v))
        self._bind(None, 0.0)

    def snapshot(self) -> Any:
        return self.matrices.snapshot(), {n: w.clone() for n, w in self.canonical.items()}

    def restore(self, snapshot: Any) -> None:
        self.matrices.restore(snapshot[0])
        for name, w in snapshot[1].items():
            self.canonical[name].copy_(w)
        self._bind(None, 0.0)

    def fingerprint(self) -> str:
        import hashlib

        digest = hashlib.sha256(self.matrices.fingerprint().encode())
        for name in self.vectors:
            digest.update(self.canonical[name].numpy().tobytes())
        return digest.hexdigest()


class _NearestUpdates:
    """bf16-rn: Bf16Shift's forwards, but θ ← bf16_rne(θ ± c) per pair (what plain bf16 training does)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def shift(self, seed: int, value: float) -> None:
        self.inner.shift(seed, value)

    def reset(self) -> None:
        self.inner.reset()

    def update(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        self.inner.reset()
        params = self.inner.params
        for seed, value in zip(seeds, values, strict=True):
            for seg in params.segments:
                view = params.view(seg)
                view.copy_(params.kernels.perturbed(view, seed, value, seg.tensor_id))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Final held-out loss per format, and the fp32 spread across streams (the noise)."""
    by_format: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_format.setdefault(run["format"], []).append(run)
    out: dict[str, Any] = {}
    for fmt, group in by_format.items():
        finals = [r["curve"][-1][1] for r in group]
        out[fmt] = {
            "final": dict((str(r["seed"]), r["curve"][-1][1]) for r in group),
            "start": group[0]["curve"][0][1],
            "mean_final": statistics.fmean(finals),
            "memory_ratio": statistics.fmean(r["memory_ratio"] for r in group),
            "inference_peak_mib": statistics.fmean(r["inference_peak_bytes"] for r in group) / 2**20,
            "train_peak_mib": statistics.fmean(r["train_peak_bytes"] for r in group) / 2**20,
            "step_s": statistics.fmean(r["step_s"] for r in group),
        }
    fp32 = {str(r["seed"]): r["curve"][-1][1] for r in by_format.get("fp32", [])}
    if len(fp32) > 1:
        out["fp32_stream_spread"] = max(fp32.values()) - min(fp32.values())
    sr = {str(r["seed"]): r["curve"][-1][1] for r in by_format.get("bf16-sr", [])}
    paired = [sr[s] - fp32[s] for s in sr if s in fp32]
    if paired:
        out["bf16_sr_minus_fp32_same_stream"] = paired
    curves = {(r["format"], str(r["seed"])): dict(r["curve"]) for r in runs}
    for fmt in sorted({f for f, _ in curves if f == "bf16-sr" or f.startswith(NOISE_PREFIX)}):
        gaps = {s: _gaps(curves[(fmt, s)], curves[("fp32", s)]) for f, s in curves if f == fmt}
        gaps = {s: g for s, g in gaps.items() if g is not None}
        if gaps:  # the noise rows are what the bf16-sr row is judged against
            out[f"{fmt}_minus_fp32"] = gaps
    return out


def _gaps(curve: dict[int, float], fp32: dict[int, float] | None) -> dict[str, float] | None:
    """`curve` − fp32 on the same stream: at the end, and its mean and mean |·| over the second half."""
    if not fp32:
        return None
    last = max(fp32)
    half = [step for step in fp32 if step >= last / 2 and step in curve]
    if last not in curve or not half:
        return None
    return {
        "final": curve[last] - fp32[last],
        "second_half_mean": statistics.fmean(curve[t] - fp32[t] for t in half),
        "second_half_mean_abs": statistics.fmean(abs(curve[t] - fp32[t]) for t in half),
    }


def _noise_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The fp32 runs of these settings with other directions (`--direction-salt k`) that exist: ZO's
    own run-to-run noise on the same batches, shown and summarized beside the formats."""
    found = []
    for seed in args.seeds:
        for salt in range(1, MAX_NOISE_SALT + 1):
            path = _run_path(argparse.Namespace(**{**vars(args), "direction_salt": salt}), "fp32", seed)
            if path.exists():
                found.append({**json.loads(path.read_text()), "format": f"{NOISE_PREFIX}{salt}"})
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="data and direction streams")
    parser.add_argument("--rn-seeds", type=int, nargs="*", default=[0], help="streams bf16-rn runs on")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--estimator", default="mezo", choices=("mezo", "fzoo"))
    parser.add_argument("--perturbations", type=int, default=1, help="P: seeded directions per step")
    parser.add_argument(
        "--round-steps", type=int, default=1, help="τ: local steps per round, the delta applied once a round"
    )
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument(
        "--direction-salt",
        type=int,
        default=0,
        help="k > 0: the same batches with other directions (fp32 against fp32 with k: ZO's own noise)",
    )
    parser.add_argument("--out", type=Path, default=SCRIPT.parent / "bf16_weights")
    parser.add_argument("--run", nargs=2, metavar=("FORMAT", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.eval_every <= 0 or args.steps <= 0 or args.perturbations <= 0 or args.round_steps <= 0:
        parser.error("--steps, --eval-every, --perturbations and --round-steps must be positive")
    if args.round_steps > 1:
        if args.eval_every % args.round_steps:
            parser.error("--eval-every must be a multiple of --round-steps (evaluate θ between rounds)")
        if set(args.formats) - {"fp32", "bf16-sr"}:
            parser.error("--round-steps > 1 is for the fp32 and bf16-sr arms (pass --formats fp32 bf16-sr)")

    if args.run:
        fmt, seed = args.run[0], int(args.run[1])
        result = run_one(args, fmt, seed)
        path = _run_path(args, fmt, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)  # whole or absent: a killed run is redone, never half-read
        return 0

    plan = [(fmt, seed) for seed in args.seeds for fmt in args.formats if fmt in ("fp32", "bf16-sr")]
    plan += [("fp32-bf16fwd", seed) for seed in args.rn_seeds if "fp32-bf16fwd" in args.formats]
    plan += [("bf16-sr-vec32", seed) for seed in args.rn_seeds if "bf16-sr-vec32" in args.formats]
    plan += [("bf16-rn", seed) for seed in args.rn_seeds if "bf16-rn" in args.formats]
    runs = []
    for fmt, seed in plan:
        path = _run_path(args, fmt, seed)
        if not path.exists():
            print(f"run {fmt} seed {seed} ...", file=sys.stderr)
            forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
            cmd = [sys.executable, str(SCRIPT), *forwarded, "--run", fmt, str(seed)]
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        runs.append(json.loads(path.read_text()))
    if not args.direction_salt and "fp32" in args.formats:
        runs += _noise_runs(args)
    summary = {
        "model": args.model,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "steps": args.steps,
        "lr": args.lr,
        "eps": args.eps,
        "estimator": args.estimator,
        "perturbations": args.perturbations,
        "round_steps": args.round_steps,
        "batch_size": args.batch_size,
        "eval_examples": args.eval_examples,
        "summary": summarize(runs),
        "curves": {f"{r['format']}/{r['seed']}": r["curve"] for r in runs},
    }
    tag = _estimator_tag(args) + (f"-tau{args.round_steps}" if args.round_steps > 1 else "")
    tag += f"-dir{args.direction_salt}" if args.direction_salt else ""
    (args.out / f"summary{tag}.json").write_text(json.dumps(summary, indent=1))
    plot_curves(runs, args.out / f"curves{tag}.png")
    if args.json:
        print(json.dumps(summary))
    else:
        for fmt, row in summary["summary"].items():
            print(fmt, json.dumps(row))
    return 0


STYLE: dict[str, Any] = {
    "fp32": "-",
    "bf16-sr": "--",
    "bf16-rn": ":",
    "fp32-bf16fwd": "-.",
    "bf16-sr-vec32": (0, (6, 2, 1, 2, 1, 2)),
}
NOISE_STYLE = (0, (1, 1.5))  # dotted: fp32 with other directions


def plot_curves(runs: list[dict[str, Any]], path: Path) -> None:
    """Held-out loss against steps, one line per run: format by line style, stream by colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        steps, losses = zip(*run["curve"], strict=True)
        style = NOISE_STYLE if run["format"].startswith(NOISE_PREFIX) else STYLE.get(run["format"], "-")
        ax.plot(steps, losses, linestyle=style, color=f"C{run['seed']}",
                label=f"{run['format']}, stream {run['seed']}")  # fmt: skip
    per_step = runs[0].get("forwards_per_step", 2) if runs else 2
    ax.set_xlabel(f"{runs[0].get('estimator', 'mezo') if runs else 'mezo'} steps ({per_step} forwards each)")
    ax.set_ylabel("held-out loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _estimator_tag(args: argparse.Namespace) -> str:
    """'' for MeZO with one direction (the first sweep's file names), else e.g. '-fzoo-p8'."""
    if args.estimator == "mezo" and args.perturbations == 1:
        return ""
    return f"-{args.estimator}-p{args.perturbations}"


def _run_path(args: argparse.Namespace, fmt: str, seed: int) -> Path:
    key = f"{args.model}-s{args.steps}-lr{args.lr:g}-eps{args.eps:g}-b{args.batch_size}"
    key += f"-e{args.eval_examples}x{args.eval_every}-L{args.max_length}{_estimator_tag(args)}"
    if args.round_steps > 1:
        key += f"-tau{args.round_steps}"
    if args.direction_salt:
        key += f"-dir{args.direction_salt}"
    return args.out / "runs" / f"{key}-{fmt}-seed{seed}.json"


if __name__ == "__main__":
    sys.exit(main())
