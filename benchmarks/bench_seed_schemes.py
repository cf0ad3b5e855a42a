"""Seed schemes against the number of clients: a client's replay time and downlink bytes per round.

    python benchmarks/bench_seed_schemes.py            # SmolLM2-135M size, N = 3, 10, 100, 1,000
    python benchmarks/bench_seed_schemes.py --quick    # a tiny buffer, N = 3, 10 (seconds; no JSON file)
    python benchmarks/bench_seed_schemes.py --full-replay-max-seeds 4096   # N = 1,000 per client extrapolated

The full run took 26 min on a busy 2-core CPU, 24 of them replaying the per-client delta of N = 1,000.

Why: with per-client seeds a round delta holds a coefficient for every seed of every accepted client
(N·τ·P), so each replica's replay (one regenerate-and-add pass per seed over all θ) and each client's
downlink grow linearly with N. With shared seeds every client uses the round's τ·P seeds, so the delta
holds τ·P coefficients whatever N (docs/estimators.md). Issue #13's done-when: "With shared seeds, replay
time and downlink per round are independent of N (measured 3 → 1,000)". This measures both schemes with
the project's own code, without a model (replay needs only the flat fp32 buffer):

  server close   `fl.rounds.close_round` over N synthetic accepted updates (τ·P random fp32 scalars each,
                 a TaskRecord per client): the delta a server builds; median wall time.
  downlink       bytes one client receives in the round: `fedmezo.sim.wire.seed_scalar_round_bytes` (the
                 GetTask, SubmitUpdate, StreamRoundDeltas and ReportFingerprint responses, serialized as
                 the server's traffic meter counts them); the delta message alone is `fl.wire.delta_to_pb`.
  replay         what a client does with the delta message: parse it (`delta_from_pb`), derive the seeds
                 (`fl.aggregation.delta_from_participants`: from the participants per client, from τ and P
                 when shared) and `fl.replica.Replica.apply` on a buffer of the model's trainable tensor
                 layout (SmolLM2-135M's 272 tensors, 134,515,008 fp32, random values; the CPU numba kernel).
                 "derive" and "apply" are timed apart. A delta with more than --full-replay-max-seeds seeds
                 is applied only for its first --sample-seeds seeds and its time scaled linearly by the seed
                 count: such a row says "extrapolated" in the table and in the JSON. The server applies
                 the same delta to its own replica, so its apply time is the client's.

The fingerprint check after the apply costs the same for every N and scheme (timed once, reported apart).
Output: a markdown table on stdout and a JSON report (--output; default benchmarks/seed_schemes.json, none
with --quick unless given) with the machine and the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmezo.fl.aggregation import delta_from_participants
from fedmezo.fl.config import RunConfig, fp32
from fedmezo.fl.records import DeltaRecord, TaskRecord, Update, UpdateRecord
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import close_round
from fedmezo.fl.vocabulary import FINGERPRINT_BYTES
from fedmezo.fl.wire import delta_from_pb, delta_to_pb, update_to_pb
from fedmezo.sim.wire import seed_scalar_round_bytes
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.zo import RoundDelta, TrainableParams

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "seed_schemes.json"
CLIENTS = (3, 10, 100, 1000)
QUICK_CLIENTS = (3, 10)
CASES = ("per-client:1", "shared:1", "shared:4")  # scheme:P
LOCAL_STEPS = 20
ROUND_ID = 1
LR = 2e-6  # RunConfig's default base learning rate
# A tiny layout for --quick and the test: a few tensors, one with a partial last Philox block.
QUICK_LAYOUT: tuple[tuple[str, tuple[int, ...]], ...] = (("a", (96, 64)), ("b", (64,)), ("c", (50, 33)))
SEED_BATCH = 256  # the numba kernel's seeds per fused pass: a sample of whole batches scales cleanly
MIN_TIMED_S = 1.0  # repeat a cheap measurement until this much time was spent (and at least once)


# --- the parameter buffer -----------------------------------------------------------------------------------
def smollm2_layout() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """SmolLM2-135M's trainable tensors (sorted unique names, tied once): shapes only, on the meta device."""
    from transformers import AutoModelForCausalLM  # only the full run needs it

    from fedmezo.models import smollm2_135m_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(smollm2_135m_config())
    named = model.named_parameters(remove_duplicate=True)
    return tuple(sorted((name, tuple(p.shape)) for name, p in named if p.requires_grad))


def random_params(layout: Sequence[tuple[str, tuple[int, ...]]], seed: int = 0) -> TrainableParams:
    """A flat fp32 buffer with `layout`'s tensors, N(0, 0.02²) values (replay reads and writes them all)."""
    numel = sum(math.prod(shape) for _, shape in layout)
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(numel, generator=generator, dtype=torch.float32).mul_(0.02)
    return TrainableParams(flat, tuple(n for n, _ in layout), tuple(s for _, s in layout))


# --- one round's synthetic updates --------------------------------------------------------------------------
def client_ids(n: int) -> list[str]:
    """The ids `fedmezo simulate` gives N clients (client-001 ... for N < 1,000)."""
    width = len(str(n))
    return [f"client-{i + 1:0{width}d}" for i in range(n)]


def synthetic_round(
    n: int, local_steps: int, perturbations: int, seed: int = 0
) -> tuple[list[Update], list[UpdateRecord], dict[str, TaskRecord]]:
    """N accepted updates of τ·P random fp32 scalars (and τ losses), each with its client's task."""
    rng = np.random.default_rng(seed)
    lr = fp32(LR)
    updates, records, tasks = [], [], {}
    for client_id in client_ids(n):
        grads = tuple(float(g) for g in rng.standard_normal(local_steps * perturbations).astype(np.float32))
        losses = tuple(float(x) for x in (2.0 + rng.random(local_steps)).astype(np.float32))
        update = Update(
            round_id=ROUND_ID, projected_grads=grads, losses=losses, step_time_s=1.0, device="cpu",
            num_examples=int(rng.integers(50, 500)), forward_passes=2 * perturbations * local_steps,
        )  # fmt: skip
        updates.append(update)
        records.append(update.to_record(client_id, received_at=0.0))
        tasks[client_id] = TaskRecord(ROUND_ID, client_id, lr, local_steps)
    return updates, records, tasks


# --- timing helpers -----------------------------------------------------------------------------------------
def timed_median(fn: Callable[[], object], min_total_s: float = MIN_TIMED_S, most: int = 7) -> float:
    """Median wall time of `fn` over as many calls as fit in `min_total_s` (1 to `most`)."""
    times: list[float] = []
    while not times or (sum(times) < min_total_s and len(times) < most):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    import numba

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
    }


# --- one measurement ----------------------------------------------------------------------------------------
@dataclass
class Row:
    scheme: str
    perturbations: int
    clients: int
    coefficients: int  # in the round delta
    delta_message_bytes: int  # StreamRoundDeltasResponse alone
    downlink_bytes: int  # everything one client receives in the round
    uplink_bytes: int  # everything one client sends in the round
    close_round_ms: float  # server: close_round over the N updates
    derive_ms: float  # client: parse the message and derive the delta's seeds
    apply_s: float  # client (and server): Replica.apply of the whole delta
    apply_how: str  # "measured" or "extrapolated"
    apply_runs: int  # timed applies behind apply_s (of the whole delta, or of the sample)
    applied_seeds: int  # seeds per timed apply (the sample, when extrapolated)
    ns_per_param_seed: float  # apply_s / (params × coefficients)

    @property
    def replay_s(self) -> float:
        return self.derive_ms / 1e3 + self.apply_s


def measure(
    replica: Replica,
    scheme: str,
    perturbations: int,
    n: int,
    *,
    local_steps: int,
    full_replay_max_seeds: int,
    sample_seeds: int,
    log: Callable[[str], None],
) -> Row:
    config = RunConfig(seed_scheme=scheme, perturbations=perturbations, local_steps=local_steps).validate()
    updates, records, tasks = synthetic_round(n, local_steps, perturbations)

    # The server: aggregate the accepted updates into the round delta.
    closed = close_round(config, ROUND_ID, records, tasks)
    close_s = timed_median(lambda: close_round(config, ROUND_ID, records, tasks))
    agg = closed.aggregate
    assert len(agg.participants) == n, "every synthetic update must be accepted"
    # The fingerprint's value does not change a message's size (always FINGERPRINT_BYTES raw bytes).
    record = DeltaRecord(ROUND_ID, agg.participants, agg.delta.coefficients, b"", bytes(FINGERPRINT_BYTES))

    # The wire: the delta message and everything a client receives (and sends) in the round.
    message = delta_to_pb(record, seed_scheme=scheme)
    first = client_ids(n)[0]
    uplink, downlink = seed_scalar_round_bytes(
        config, tasks[first], update_to_pb(first, updates[0]), record, rounds_completed=ROUND_ID - 1
    )

    # The client: parse, derive the seeds, check they are the server's, then apply.
    payload = message.SerializeToString()

    def receive() -> RoundDelta:
        received = delta_from_pb(fpb.StreamRoundDeltasResponse.FromString(payload))
        return delta_from_participants(
            config.seeds, ROUND_ID, received.participants, received.coefficients, local_steps
        )

    delta = receive()
    if delta != agg.delta:
        raise AssertionError(f"{scheme} N={n}: the client's delta differs from the server's")
    derive_s = timed_median(receive)

    seeds = delta.num_seeds
    k = max(SEED_BATCH, sample_seeds // SEED_BATCH * SEED_BATCH)
    if seeds <= full_replay_max_seeds or k >= seeds:
        how, target = "measured", delta
    else:
        how, target = "extrapolated", RoundDelta(delta.seeds[:k], delta.coefficients[:k])
    runs: list[float] = []
    while not runs or (sum(runs) < 3 * MIN_TIMED_S and len(runs) < 3):
        start = time.perf_counter()
        replica.apply(target)
        runs.append(time.perf_counter() - start)
    apply_s = statistics.median(runs) * seeds / target.num_seeds
    row = Row(
        scheme=scheme, perturbations=perturbations, clients=n, coefficients=seeds,
        delta_message_bytes=message.ByteSize(), downlink_bytes=downlink, uplink_bytes=uplink,
        close_round_ms=close_s * 1e3, derive_ms=derive_s * 1e3, apply_s=apply_s, apply_how=how,
        apply_runs=len(runs), applied_seeds=target.num_seeds,
        ns_per_param_seed=apply_s * 1e9 / (replica.trainable_params * seeds),
    )  # fmt: skip
    log(
        f"{scheme:>10} P={perturbations} N={n:>5}: {seeds:>6} coefficients, down {downlink:>7} B, "
        f"close {row.close_round_ms:8.1f} ms, derive {row.derive_ms:7.1f} ms, apply {apply_s:8.2f} s ({how})"
    )
    return row


# --- report -------------------------------------------------------------------------------------------------
def _how(row: Row) -> str:
    if row.apply_how == "measured":
        return "measured (1 run)" if row.apply_runs == 1 else f"measured (median of {row.apply_runs} runs)"
    return f"**extrapolated** from {row.applied_seeds:,} seeds measured ({row.apply_runs}×)"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| seeds | P | N | coefficients | delta msg (B) | downlink / client (B) | uplink / client (B) "
        "| server close_round (ms) | client derive (ms) | client apply (s) | replay = derive + apply (s) "
        "| ns / param / seed | apply timing |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scheme} | {r.perturbations} | {r.clients:,} | {r.coefficients:,} | "
            f"{r.delta_message_bytes:,} | {r.downlink_bytes:,} | {r.uplink_bytes:,} | "
            f"{r.close_round_ms:,.1f} | {r.derive_ms:,.2f} | {r.apply_s:,.3f} | {r.replay_s:,.3f} | "
            f"{r.ns_per_param_seed:.3f} | {_how(r)} |"
        )
    return "\n".join(lines)


def parse_case(text: str) -> tuple[str, int]:
    scheme, _, p = text.partition(":")
    return scheme, int(p or 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tiny buffer and N in {3, 10} (seconds)")
    parser.add_argument("--clients", type=int, nargs="+", help=f"N values (default {CLIENTS})")
    parser.add_argument(
        "--cases", nargs="+", default=list(CASES), help="scheme:P pairs (default %(default)s)"
    )
    parser.add_argument("--local-steps", type=int, default=LOCAL_STEPS, help="τ (default %(default)s)")
    parser.add_argument(
        "--full-replay-max-seeds", type=int, default=1 << 30,
        help="apply deltas with more seeds only in part and extrapolate (default: apply every delta whole)",
    )  # fmt: skip
    parser.add_argument(
        "--sample-seeds", type=int, default=2048, help="seeds applied when extrapolating (batches of 256)"
    )
    parser.add_argument("--output", type=Path, help="JSON report (default benchmarks/seed_schemes.json)")
    args = parser.parse_args(argv)
    clients = tuple(args.clients or (QUICK_CLIENTS if args.quick else CLIENTS))
    output = args.output or (None if args.quick else DEFAULT_OUTPUT)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    load_before = load_average()
    layout = QUICK_LAYOUT if args.quick else smollm2_layout()
    replica = Replica(random_params(layout))
    replica.warm_up()
    start = time.perf_counter()
    replica.fingerprint()
    fingerprint_s = time.perf_counter() - start
    log(f"{replica.trainable_params:,} params in {len(layout)} tensors; load average {load_before}")

    rows = [
        measure(
            replica, scheme, p, n, local_steps=args.local_steps,
            full_replay_max_seeds=args.full_replay_max_seeds, sample_seeds=args.sample_seeds, log=log,
        )
        for scheme, p in map(parse_case, args.cases)
        for n in clients
    ]  # fmt: skip
    load_after = load_average()
    table = markdown_table(rows)
    report = {
        "benchmark": "bench_seed_schemes",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "layout": "quick" if args.quick else "smollm2-135m",
        "trainable_params": replica.trainable_params,
        "tensors": len(layout),
        "local_steps": args.local_steps,
        "fingerprint_check_s": fingerprint_s,
        "rows": [{**asdict(r), "replay_s": r.replay_s} for r in rows],
        "table": table,
    }
    print(table)
    print(
        f"\n{replica.trainable_params:,} fp32 params, τ = {args.local_steps}; load average (1, 5, 15 min) "
        f"{load_before} before, {load_after} after; {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores. The fingerprint check after each apply adds "
        f"{fingerprint_s:.2f} s whatever the scheme and N."
    )
    if output is not None:
        output.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
