"""What a client trains: the server's model (full or LoRA) on the chosen device, and the local data.

Built once, after the client has learnt the run settings from the server, so an operator only has to
point a client at its data: model name, training mode, LoRA shape and max length come from the run.
Right after loading, the client measures the peak memory of one plain forward pass on a training batch:
the inference baseline operators compare MeZO's training peak with (reported at Join).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedmezo.client.errors import ConfigError
from fedmezo.fl.config import freeze_parts
from fedmezo.fl.records import RunSettings
from fedmezo.fl.train import StepDataset, device_label
from fedmezo.memory import PeakMemory
from fedmezo.zo import Backend, Batch, TrainableParams, causal_lm_loss, get_backend
from fedmezo.zo.weights import WEIGHT_FORMATS, Weights, graph_safe, warm_up_weights

__all__ = ["Workload", "build_workload", "measure_inference_peak", "resolve_device", "training_loss"]

logger = logging.getLogger("fedmezo.client")

INFERENCE_PROBE_SEED = 0  # the training batch of this seed is the one the inference peak is measured on


@dataclass
class Workload:
    model: torch.nn.Module
    params: Weights
    dataset: StepDataset
    num_examples: int
    device: str  # label for the operator, e.g. "cuda:0 (NVIDIA H100)"
    backend: Backend | None = None
    inference_peak_memory_bytes: int = 0  # one plain forward on a training batch; 0 = not measured
    loss_of: Callable[[Batch], float] | None = None  # None: eager causal_lm_loss on unpadded batches


def resolve_device(requested: str) -> torch.device:
    """`auto` picks CUDA when available; an explicit `cuda` without a GPU is a configuration error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: no CUDA device is available")
    return device


def build_workload(
    settings: RunSettings,
    *,
    data: str,
    device: str,
    model_name: str | None,
    max_length: int,
    compute_dtype: str = "fp32",
    compile: str = "off",
) -> Workload:
    """Load the model the run uses, make its trainable part one flat fp32 buffer, encode the data."""
    from fedmezo.data import ClientDataset, DataError, read_jsonl
    from fedmezo.models import ModelNotFoundError, load_model
    from fedmezo.trainable import prepare_trainable

    target = resolve_device(device)
    name = model_name or settings.model
    if model_name and model_name != settings.model:
        logger.warning("--model %s overrides the server's model %s", model_name, settings.model)
    from fedmezo.trainable import BASES, base_load_options

    if settings.base_dtype not in BASES:
        raise ConfigError(
            f"the server's run uses base dtype {settings.base_dtype!r}, which this client does not know "
            f"({', '.join(BASES)}); upgrade fedmezo"
        )
    base = settings.base_dtype if settings.mode == "lora" else "fp32"
    if settings.weights not in WEIGHT_FORMATS:
        raise ConfigError(
            f"the server's run trains {settings.weights!r} weights, which this client does not know "
            f"({', '.join(WEIGHT_FORMATS)}); upgrade fedmezo"
        )
    dtype, quantize = base_load_options(base, settings.mode)
    try:
        loaded = load_model(name, device=target, dtype=dtype, quantize=quantize)
        examples = read_jsonl(Path(data))
    except (ModelNotFoundError, DataError, OSError) as exc:
        raise ConfigError(str(exc)) from exc
    model, params = prepare_trainable(
        loaded.model,
        settings.mode,
        lora_rank=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        run_seed=settings.lora_seed,
        base_dtype=base,
        weights=settings.weights if settings.mode == "full" else "fp32",
        freeze=freeze_parts(settings.freeze),
    )
    if isinstance(params, TrainableParams) and (
        compute_dtype == "bf16" or (compute_dtype == "auto" and target.type == "cuda")
    ):  # bf16-sr weights are bf16 already: their forwards need no compute copy
        from fedmezo.zo.mixed import ComputeCopy

        ComputeCopy(model, params)  # forwards read bf16; θ stays the canonical fp32 buffer
        logger.info("forwards in bfloat16 from a compute copy of the fp32 weights")
    length = settings.max_length or max_length  # the server's, when it says (it decides batch shapes)
    if settings.max_length and settings.max_length != max_length:
        logger.info(
            "max length %d from the server (local fallback %d unused)", settings.max_length, max_length
        )
    dataset = ClientDataset.from_examples(loaded.tokenizer, examples, length)
    logger.info(
        "model %s (%s, %d trainable) on %s; %d examples, max length %d",
        name,
        settings.mode,
        params.numel,
        target,
        dataset.num_examples,
        length,
    )
    if not graph_safe(params):  # bf16-sr: perturbed weights are bound per forward, graphs cannot see them
        if compile == "on" and target.type == "cuda":
            raise ConfigError(
                "--compile on cannot run a bf16-sr run: CUDA graphs replay the weights at captured "
                "addresses and bf16-sr binds perturbed weights per forward; use --compile off or auto"
            )
        compile = "off"
    loss_of = training_loss(model, target, length, compile)
    backend = get_backend(target)
    warm_up_weights(params, backend)  # the kernels load now, not in the first round's first step
    inference_peak = measure_inference_peak(model, dataset, settings.batch_size, target)
    logger.info(
        "inference peak memory (one forward, batch %d): %.1f MiB", settings.batch_size, inference_peak / 2**20
    )
    return Workload(
        model=model,
        params=params,
        dataset=dataset,
        num_examples=dataset.num_examples,
        device=device_label(target),
        backend=backend,
        inference_peak_memory_bytes=inference_peak,
        loss_of=loss_of,
    )


def training_loss(
    model: torch.nn.Module, device: torch.device, max_length: int, compile: str
) -> Callable[[Batch], float] | None:
    """The loss the steps evaluate: on CUDA, bucket-padded batches replayed as CUDA graphs unless
    `compile` is off (then the same padded batches, eager: the same bits); on CPU the plain eager loss."""
    if compile == "on" and device.type != "cuda":
        raise ConfigError("--compile on needs CUDA (CUDA graphs); use --compile off or auto on CPU")
    if device.type != "cuda":
        return None
    from fedmezo.zo.graphs import BucketedLoss

    compiled = compile in ("on", "auto")
    logger.info("forwards %s on batches padded to bucket lengths", "as CUDA graphs" if compiled else "eager")
    return BucketedLoss(model, max_length, compiled=compiled)


def measure_inference_peak(
    model: torch.nn.Module, dataset: StepDataset, batch_size: int, device: torch.device
) -> int:
    """Peak memory (bytes) of one plain forward pass + loss on a training batch, no perturbation.

    The same objective and batch shape as a MeZO step's forward (eval mode, inference_mode), measured
    the way training peaks are (fedmezo.memory.PeakMemory), so the two are directly comparable.
    """
    batch = dataset.batch_for_step(INFERENCE_PROBE_SEED, max(1, batch_size)).to(device)
    peak = PeakMemory(device)
    peak.reset()
    causal_lm_loss(model, batch)
    return peak.peak_bytes()
