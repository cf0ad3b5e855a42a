"""The client's `--compile`: MeZO/FZOO step time with CUDA-graph forwards vs eager, on the client's own
training path (fedmezo.fl.train.train_task with client.workload.training_loss), issue #14 item 3.

For each compute dtype (fp32 forwards; bf16 forwards from a compute copy) and each setting (off, on):
the step time after warm-up, the step time ÷ two forwards of the same setting, the speed-up of `on`
over `off`, peak memory, and whether θ after the steps and the uploaded scalars are bit-identical
between the two settings (they must be). Random weights with the model's exact architecture (speed
does not depend on the values); batches of random tokens with lengths spread over the run's max length,
so every bucket is used. The client refuses `--compile on` without CUDA; `--device cpu` runs the same
comparison with dynamo's traced forwards but no graphs (the test suite's check of this script).

    python benchmarks/bench_compile.py --model smollm2-135m --steps 20 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from typing import Any

import torch
from torch._dynamo.utils import counters

from fedmezo.data.loader import ClientDataset
from fedmezo.data.tokenize import EncodedExample
from fedmezo.fl.records import Task
from fedmezo.fl.train import train_task
from fedmezo.memory import PeakMemory
from fedmezo.zo import get_backend
from fedmezo.zo.graphs import BucketedLoss

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from bench_zo import load


def random_dataset(vocab: int, max_length: int, count: int = 64, seed: int = 0) -> ClientDataset:
    """Examples of max_length/4 .. max_length tokens, the second half of each one the response."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        n = rng.randint(max(2, max_length // 4), max_length)
        ids = [rng.randrange(vocab) for _ in range(n)]
        labels = [-100] * (n // 2) + ids[n // 2 :]
        examples.append(EncodedExample(input_ids=ids, labels=labels))
    return ClientDataset(examples, pad_id=0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_task(
    model: Any, params: Any, dataset: ClientDataset, task: Task, loss: BucketedLoss
) -> dict[str, Any]:
    """The task once to warm up (compiles every bucket it meets), then timed again from the same θ_r."""
    backend = get_backend(params.device)
    warm = train_task(model, params, dataset, task, "bench", backend=backend, progress=False, loss_of=loss)
    sync(params.device)
    local: list[str] = []
    peak = PeakMemory(params.device)
    peak.reset()
    start = time.perf_counter()
    result = train_task(
        model, params, dataset, task, "bench", backend=backend, progress=False, loss_of=loss,
        on_trained=lambda p: local.append(p.fingerprint()),
    )  # fmt: skip
    sync(params.device)
    seconds = time.perf_counter() - start
    batches = [dataset.batch_for_step(s, task.batch_size).to(params.device) for s in range(8)]
    forward_s = []
    for batch in batches:
        loss(batch)
        sync(params.device)
        t0 = time.perf_counter()
        loss(batch)
        loss(batch)
        sync(params.device)
        forward_s.append(time.perf_counter() - t0)
    step_s = result.step_time_s  # train_task's own clock: the τ steps, not the round-start snapshot
    two = statistics.median(forward_s)
    return {
        "step_ms": step_s * 1e3,
        "two_forwards_ms": two * 1e3,
        "step_ratio": step_s / two,
        "first_task_s": warm.step_time_s * task.local_steps,  # compiles every bucket it meets
        "task_overhead_s": seconds - result.step_time_s * task.local_steps,  # snapshot, restore, setup
        "peak_mib": peak.peak_bytes() / 2**20,
        "theta": local[0],
        "scalars": list(result.projected_grads),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from fedmezo.trainable import prepare_trainable
    from fedmezo.zo.mixed import ComputeCopy

    device = torch.device(args.device)
    report: dict[str, Any] = {
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "host": platform.node(),
        "batch": f"{args.batch_size}x<= {args.max_length}",
        "estimator": f"{args.estimator} P={args.perturbations}",
        "steps": args.steps,
        "modes": {},
    }
    task = Task(
        round_id=1, local_steps=args.steps, lr=1e-6, eps=1e-3, batch_size=args.batch_size, run_seed=3,
        estimator=args.estimator, perturbations=args.perturbations,
    )  # fmt: skip
    for dtype in args.dtypes:
        rows: dict[str, Any] = {}
        for setting in ("off", "on"):
            torch._dynamo.reset()
            counters.clear()
            model = load(args.model, True, device)
            model, params = prepare_trainable(model, "full")
            if dtype == "bf16":
                ComputeCopy(model, params)
            dataset = random_dataset(model.config.vocab_size, args.max_length)
            loss = BucketedLoss(model, args.max_length, compiled=setting == "on")
            rows[setting] = timed_task(model, params, dataset, task, loss)
            rows[setting]["dynamo_graphs"] = int(counters["stats"]["unique_graphs"])
            rows[setting]["graph_breaks"] = int(sum(counters["graph_break"].values()))
            rows[setting]["cudagraph_skips"] = int(counters["inductor"]["cudagraph_skips"])
            print(f"{dtype} compile {setting}: {rows[setting]['step_ms']:.1f} ms/step", file=sys.stderr)
            del model, params, loss
            if device.type == "cuda":
                torch.cuda.empty_cache()
        off, on = rows["off"], rows["on"]
        report["modes"][dtype] = {
            "off": {k: v for k, v in off.items() if k not in ("theta", "scalars")},
            "on": {k: v for k, v in on.items() if k not in ("theta", "scalars")},
            "speedup": off["step_ms"] / on["step_ms"],
            "bit_identical": off["theta"] == on["theta"] and off["scalars"] == on["scalars"],
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, llama-1b or tiny-random")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--estimator", default="mezo", choices=["mezo", "fzoo", "adamezo"])
    parser.add_argument("--perturbations", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda", help="cuda (graphs) or cpu (traced, no graphs: a check)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_compile measures CUDA graphs: no CUDA device here", file=sys.stderr)
        return 2
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for dtype, row in report["modes"].items():
            print(
                f"{dtype}: off {row['off']['step_ms']:.1f} ms, on {row['on']['step_ms']:.1f} ms/step "
                f"(x{row['speedup']:.2f}); step/two forwards {row['off']['step_ratio']:.2f} / "
                f"{row['on']['step_ratio']:.2f}; bit-identical {row['bit_identical']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
