"""Choosing what trains: all weights (full-parameter ZO) or LoRA adapters (LoRA-ZO, via PEFT).

LoRA adapters must start bit-identical on every participant, so their initialisation never uses
torch's generators: A gets ±1/sqrt(fan_in) from the portable Philox generator (fedmezo-rng-v1,
init domain) seeded by the run seed, and B starts at zero, so the adapted model equals the base model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Literal

import torch

from fedmezo.zo.params import TrainableParams
from fedmezo.zo.rng import DOMAIN_INIT, rademacher
from fedmezo.zo.weights import WEIGHT_FORMATS, Weights, weights_of

__all__ = [
    "BASES",
    "BASE_DTYPES",
    "DEFAULT_LORA_TARGETS",
    "QUANTIZED_BASES",
    "TrainMode",
    "add_lora",
    "base_load_options",
    "prepare_trainable",
]

TrainMode = Literal["full", "lora"]
# The frozen base of a LoRA run may sit in low precision: its weights never change, so only its
# forwards differ (and the manifest says which base every replica runs). Adapters stay fp32.
BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# bitsandbytes-quantized bases (linear layers in 8 or 4 bits, the rest bf16): loaded quantized, see
# fedmezo.models.load_model(quantize=...).
QUANTIZED_BASES = ("int8", "nf4")
BASES = (*BASE_DTYPES, *QUANTIZED_BASES)


def base_load_options(base: str, mode: str) -> tuple[torch.dtype, str | None]:
    """(dtype, quantize) for load_model: what the run's base means for loading (fp32 in full mode)."""
    if base not in BASES:
        raise ValueError(f"unknown base dtype {base!r}; choose one of {', '.join(BASES)}")
    if mode != "lora" or base == "fp32":
        return torch.float32, None
    if base in QUANTIZED_BASES:
        return torch.bfloat16, base
    return BASE_DTYPES[base], None


DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")  # FedMeZO's and PEFT's usual choice for Llama-style models


def _init_seed(run_seed: int) -> int:
    digest = hashlib.blake2b(run_seed.to_bytes(8, "little"), digest_size=8, person=b"fedmezo/lora/v1")
    return int.from_bytes(digest.digest(), "little")


def add_lora(
    model: torch.nn.Module,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    run_seed: int = 0,
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS,
) -> torch.nn.Module:
    """Wrap `model` with PEFT LoRA adapters, initialised portably; only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model

    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT annotates int but accepts float
        lora_dropout=0.0,
        target_modules=list(target_modules),
    )
    peft_model = get_peft_model(model, config)  # freezes the base weights
    adapters = sorted((name, param) for name, param in peft_model.named_parameters() if param.requires_grad)
    if not adapters:
        raise ValueError(f"no module matched the LoRA targets {target_modules}")
    seed = _init_seed(run_seed)
    with torch.no_grad():
        for tensor_id, (name, param) in enumerate(adapters):
            if "lora_B" in name:
                param.zero_()
            else:  # lora_A: (rank, fan_in)
                scale = 1.0 / math.sqrt(param.shape[-1])
                signs = rademacher(seed, tensor_id, param.numel(), domain=DOMAIN_INIT).to(torch.float64)
                param.copy_((signs * scale).to(torch.float32).view(param.shape))
    return peft_model


def prepare_trainable(
    model: torch.nn.Module,
    mode: TrainMode = "full",
    *,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    run_seed: int = 0,
    base_dtype: str = "fp32",
    weights: str = "fp32",
    freeze: Sequence[str] = (),
) -> tuple[torch.nn.Module, Weights]:
    """Mark what trains and gather it into one flat buffer; returns the (maybe wrapped) model.

    `base_dtype` (LoRA only) casts the frozen base to bf16 or fp16 before the fp32 adapters are added;
    load the model in that dtype already (fedmezo.models.load_model(dtype=...)) to never hold it in fp32.
    `weights` (full mode only) is the trained weights' format: fp32, or bf16-sr (§7.4: the model is cast
    to bf16 and θ moves by stochastically rounded adds). `freeze` names parts of weight names that stay
    frozen (e.g. "embed_tokens"); each must match a weight (in lora mode an adapter, e.g. "lora_A": the
    A factors keep their seeded initialisation and only B trains), and something must still train.
    """
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    if weights != "fp32" and mode != "full":
        raise ValueError(f"weights {weights} need mode 'full': LoRA adapters stay fp32 (see base_dtype)")
    if base_dtype not in BASES:
        raise ValueError(f"unknown base dtype {base_dtype!r}; choose one of {', '.join(BASES)}")
    if mode == "full":
        if base_dtype != "fp32":
            raise ValueError(
                "a low-precision base needs mode 'lora': full-parameter mode trains the fp32 weights"
            )
        for param in model.parameters():
            param.requires_grad_(True)
        _freeze(model, freeze)
    elif mode == "lora":
        if base_dtype in QUANTIZED_BASES:
            if not getattr(model, "is_quantized", False):
                raise ValueError(f"base {base_dtype}: load the model quantized (load_model(quantize=...))")
        else:
            model.to(dtype=BASE_DTYPES[base_dtype])
        model = add_lora(model, rank=lora_rank, alpha=lora_alpha, run_seed=run_seed)
        _freeze(model, freeze, adapters_only=True)
    else:
        raise ValueError(f"unknown training mode {mode!r}; choose 'full' or 'lora'")
    model.eval()
    params = weights_of(model, weights)
    if isinstance(params, TrainableParams):
        params.base = "" if base_dtype == "fp32" else base_dtype
    return model, params


# A `freeze` part that names a role instead of a weight: the input embedding whatever the architecture
# calls it (embed_tokens, wte, word_embeddings), so one setting fits every model. A hyphen never occurs
# in a PyTorch parameter name, so the keyword cannot shadow a name part.
INPUT_EMBEDDINGS = "input-embeddings"


def _freeze(model: torch.nn.Module, parts: Sequence[str], *, adapters_only: bool = False) -> None:
    """Keep every weight whose name contains one of `parts` out of θ (tied weights under either name).

    `adapters_only` (lora mode): each part must name trainable adapter weights, since the base is frozen.
    """
    named = list(model.named_parameters(remove_duplicate=False))
    for part in parts:
        if adapters_only and part == INPUT_EMBEDDINGS:
            raise ValueError(f"freeze {part!r}: in lora mode the base is frozen already; name adapters")
        if part == INPUT_EMBEDDINGS:
            matched = list(_input_embeddings(model).parameters())
        else:
            matched = [param for name, param in named if part in name]
        if adapters_only:
            matched = [param for param in matched if param.requires_grad]
        if not matched:
            kind = "adapter" if adapters_only else "weight"
            raise ValueError(f"freeze {part!r} matches no {kind} of the model")
        for param in matched:
            param.requires_grad_(False)
    if not any(param.requires_grad for _, param in named):
        raise ValueError(f"freeze {', '.join(parts)} leaves no weight to train")


def _input_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if not isinstance(embeddings, torch.nn.Module):
        raise ValueError(f"freeze {INPUT_EMBEDDINGS!r}: {type(model).__name__} has no input embedding")
    return embeddings
