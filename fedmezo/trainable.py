"""Choosing what trains: all weights (full-parameter ZO) or LoRA adapters (LoRA-ZO, via PEFT).

LoRA adapters must start bit-identical on every participant, so their initialisation never uses
torch's generators: A gets ±1/sqrt(fan_in) from the portable Philox generator (fedmezo-rng-v1,
init domain) seeded by the run seed, and B starts at zero, so the adapted model equals the base model.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch

from fedmezo.zo.params import TrainableParams
from fedmezo.zo.rng import DOMAIN_INIT, rademacher

__all__ = ["DEFAULT_LORA_TARGETS", "TrainMode", "add_lora", "prepare_trainable"]

TrainMode = Literal["full", "lora"]
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
) -> tuple[torch.nn.Module, TrainableParams]:
    """Mark what trains and gather it into one flat fp32 buffer; returns the (maybe wrapped) model."""
    if mode == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    elif mode == "lora":
        model = add_lora(model, rank=lora_rank, alpha=lora_alpha, run_seed=run_seed)
    else:
        raise ValueError(f"unknown training mode {mode!r}; choose 'full' or 'lora'")
    model.eval()
    return model, TrainableParams.from_model(model)
