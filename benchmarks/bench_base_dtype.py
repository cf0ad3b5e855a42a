"""LoRA on a low-precision frozen base: peak memory of a MeZO step ÷ inference of the same stored model.

For each base (fp32, bf16, fp16; int8 and nf4 through bitsandbytes) a fresh process builds the model
with random weights in that dtype (speed and memory do not depend on the values; a quantized base is
loaded quantized from a bf16 copy another process saved, so the probe never held it unquantized),
measures the peak of a plain forward after a warm-up forward (the inference baseline, `PeakMemory`: RSS
high-water mark on CPU, allocator peak on CUDA), then adds fp32 LoRA adapters and measures the peak of
a MeZO step after a warm-up step, on the same batch. Issue #14's goal: a bf16 base trains at ≤ 1.05×
bf16 inference.

    python benchmarks/bench_base_dtype.py --model llama-1b --json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
BASES = ("fp32", "bf16", "fp16", "int8", "nf4")
# Full-parameter modes beside the LoRA bases: every weight trains, fp32 θ or bf16 θ with stochastic
# rounding (§7.4); the inference baseline is the same stored model (fp32 or bf16).
FULL_MODES = ("full-fp32", "full-bf16-sr")
MODES = (*BASES, *FULL_MODES)


def save_bf16(model_name: str, folder: str) -> None:
    """Run in a fresh process: the random model saved in bf16, for the quantized probes to load."""
    from fedmezo import models

    configs = {"llama-1b": models.llama_1b_config, "smollm2-135m": models.smollm2_135m_config,
               "tiny-random": models.tiny_random_config}  # fmt: skip
    models.build_random_model(configs[model_name]()).to(dtype=torch_bf16()).save_pretrained(folder)


def torch_bf16() -> Any:
    import torch

    return torch.bfloat16


def llama_3b_config() -> Any:
    """A 2.97B Llama (Llama-3.2-3B's width and depth, SmolLM2's vocabulary): the largest model whose bf16
    training this 24 GiB machine holds with room to spare, to check the budget table's extrapolation."""
    from fedmezo.models.builtin import _smollm2_family

    return _smollm2_family(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8,
    )  # fmt: skip


def random_model_in(config: Any, dtype: Any) -> Any:
    """`config`'s model allocated in `dtype` with random N(0, 0.02) matrices and unit gains (memory and
    speed do not depend on the values; fedmezo's portable init would build it in fp32 first)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.to_empty(device="cpu")
    for name, buffer in model.named_buffers():
        buffer.copy_(buffers[name])
    model.tie_weights()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=gen)
            else:
                param.fill_(1.0)
    return model.eval()


def probe(
    model_name: str, base: str, batch_size: int, seq_len: int, device: str, folder: str | None = None
) -> dict[str, Any]:
    """Run in a fresh process: the peaks of one forward and of one LoRA MeZO step. A quantized base is
    loaded from `folder` (saved by another process), so this process never held the unquantized model."""
    import peft  # noqa: F401  (imported before the baseline: its code is not training memory)
    import torch

    from fedmezo import models
    from fedmezo.memory import PeakMemory
    from fedmezo.trainable import base_load_options, prepare_trainable
    from fedmezo.zo import Batch, get_backend, make_loss_fn, mezo_step

    configs = {"llama-1b": models.llama_1b_config, "smollm2-135m": models.smollm2_135m_config,
               "tiny-random": models.tiny_random_config}  # fmt: skip
    configs["llama-3b"] = llama_3b_config
    if base == "full-bf16-sr":  # built in bf16 directly: a 3B model never passes through 12 GB of fp32
        model = random_model_in(configs[model_name](), torch.bfloat16)
        return probe_full(model, base, batch_size, seq_len, device)
    if base in FULL_MODES:
        return probe_full(models.build_random_model(configs[model_name]()), base, batch_size, seq_len, device)
    dtype, quantize = base_load_options(base, "lora")
    if quantize is not None:  # bitsandbytes quantizes as transformers loads
        from transformers import AutoModelForCausalLM

        from fedmezo.models.loader import _bnb_config

        if folder is None:
            raise ValueError("a quantized base is loaded from a saved folder (--folder)")
        model = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=_bnb_config(quantize), device_map={"": device}
        ).eval()
    else:
        model = models.build_random_model(configs[model_name]()).to(dtype=dtype).to(device).eval()
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    base_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    batch = Batch(ids, torch.ones_like(ids), ids.clone())
    peak = PeakMemory(device)
    peak.reset()
    make_loss_fn(model, batch)()  # bitsandbytes repacks its weights at the first forward on a device
    peak.reset()
    make_loss_fn(model, batch)()
    inference = peak.peak_bytes()
    model, params = prepare_trainable(model, "lora", lora_rank=8, lora_alpha=16.0, base_dtype=base)
    loss_fn = make_loss_fn(model, batch)
    mezo_step(params, loss_fn, seed=1, eps=1e-3, lr=1e-6, backend=get_backend(params.device))  # warm
    peak.reset()
    result = mezo_step(params, loss_fn, seed=2, eps=1e-3, lr=1e-6, backend=get_backend(params.device))
    step = peak.peak_bytes()
    return {
        "base": base,
        "model_params": base_params,  # the base's (bitsandbytes counts its packed bytes: not comparable)
        "stored_weight_bytes": stored,
        "adapter_params": params.numel,
        "inference_peak_bytes": inference,
        "step_peak_bytes": step,
        "ratio": step / inference,
        "loss": (result.loss_plus + result.loss_minus) / 2,
        "resettable": peak.resettable,
    }


def probe_full(model: Any, mode: str, batch_size: int, seq_len: int, device: str) -> dict[str, Any]:
    """The peaks of one forward and of one full-parameter MeZO step on the same stored model."""
    import torch

    from fedmezo.memory import PeakMemory
    from fedmezo.zo import Batch, TrainableParams, make_loss_fn
    from fedmezo.zo.bf16_shift import Bf16Shift
    from fedmezo.zo.bf16_weights import Bf16Params
    from fedmezo.zo.estimators import InPlace, Perturbation, estimate_step

    model = model.to(device).eval()
    params: Any
    move: Perturbation
    if mode == "full-bf16-sr":
        params = Bf16Params.from_model(model)  # casts the model to bf16
        move = Bf16Shift(model, params)
    else:
        params = TrainableParams.from_model(model)
        move = InPlace(params)
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    loss_fn = make_loss_fn(model, Batch(ids, torch.ones_like(ids), ids.clone()))
    peak = PeakMemory(device)
    loss_fn()
    peak.reset()
    loss_fn()
    inference = peak.peak_bytes()
    estimate_step("mezo", move, loss_fn, seeds=[1], eps=1e-3, lr=1e-6)  # warm-up: kernels compiled
    peak.reset()
    result = estimate_step("mezo", move, loss_fn, seeds=[2], eps=1e-3, lr=1e-6)
    step = peak.peak_bytes()
    return {
        "base": mode,
        "model_params": sum(p.numel() for p in model.parameters()),
        "stored_weight_bytes": stored,
        "trainable_params": params.numel,
        "inference_peak_bytes": inference,
        "step_peak_bytes": step,
        "ratio": step / inference,
        "loss": result.loss,
        "resettable": peak.resettable,
    }


def run(model: str, bases: list[str], batch_size: int, seq_len: int, device: str) -> dict[str, Any]:
    import tempfile

    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-base-") as folder:
        if any(b in ("int8", "nf4") for b in bases):
            subprocess.run([sys.executable, str(SCRIPT), "--save", folder, "--model", model], check=True)
        for base in bases:
            rows[base] = _probe_process(model, base, batch_size, seq_len, device, folder)
            print(f"{base}: step/inference {rows[base]['ratio']:.3f}", file=sys.stderr)
    return {
        "model": model,
        "device": device,
        "machine": platform.processor() or platform.machine(),
        "batch": f"{batch_size}x{seq_len}",
        "bases": rows,
        "budgets": budget_table(rows),
    }


BUDGETS_GIB = (8, 16, 24, 80)
# bytes per parameter of a LoRA run's stored base when the CPU RSS cannot show it (bitsandbytes keeps the
# bf16 pages it quantized from mapped on CPU): 8-bit and 4-bit linear layers, measured as stored weights
QUANTIZED = ("int8", "nf4")


def budget_table(rows: dict[str, Any], budgets_gib: tuple[int, ...] = BUDGETS_GIB) -> dict[str, Any]:
    """The largest model (parameters) whose MeZO step fits each budget, per mode, extrapolated from one
    measured size: peak(N) = b·N + a, with b the stored bytes per parameter and a the step's peak beyond
    the stored weights (activations at this batch, kernels' scratch, on CPU the process itself). a grows
    with the width and vocabulary, slowly: at batch 4 × 64 it is hundreds of MiB against GBs of weights.
    Quantized bases take their a from the bf16 row (their CPU RSS holds the bf16 pages they came from)."""
    arch = max(int(r.get("model_params", 0)) for m, r in rows.items() if m not in QUANTIZED)
    table: dict[str, Any] = {}
    for mode, row in rows.items():
        per_param = row["stored_weight_bytes"] / arch
        source = rows.get("bf16", row) if mode in QUANTIZED else row
        overhead = source["step_peak_bytes"] - source["stored_weight_bytes"]
        table[mode] = {
            "bytes_per_param": per_param,
            "overhead_bytes": overhead,
            "largest_params": {str(g): max(0.0, (g * 2**30 - overhead) / per_param) for g in budgets_gib},
        }
    return table


def _probe_process(model: str, base: str, batch_size: int, seq_len: int, device: str, folder: str) -> Any:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--probe", base, "--model", model, "--batch-size", str(batch_size),
         "--seq-len", str(seq_len), "--device", device, "--folder", folder],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama-1b", help="llama-1b, llama-3b, smollm2-135m or tiny-random")
    parser.add_argument(
        "--bases", nargs="+", default=list(BASES), choices=MODES, help="LoRA bases and full modes"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--probe", choices=MODES, help=argparse.SUPPRESS)  # internal: one fresh process
    parser.add_argument("--folder", help=argparse.SUPPRESS)  # internal: the saved model quantized probes load
    parser.add_argument("--save", help=argparse.SUPPRESS)  # internal: save the random model there in bf16
    args = parser.parse_args(argv)
    if args.save:
        save_bf16(args.model, args.save)
        return 0
    if args.probe:
        row = probe(args.model, args.probe, args.batch_size, args.seq_len, args.device, args.folder)
        print(json.dumps(row))
        return 0
    report = run(args.model, args.bases, args.batch_size, args.seq_len, args.device)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for base, row in report["bases"].items():
            mib = {
                k: row[k] / 2**20 for k in ("stored_weight_bytes", "inference_peak_bytes", "step_peak_bytes")
            }
            print(
                f"{base}: weights {mib['stored_weight_bytes']:.0f} MiB, inference peak "
                f"{mib['inference_peak_bytes']:.0f} MiB, LoRA step peak {mib['step_peak_bytes']:.0f} MiB, "
                f"ratio {row['ratio']:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
