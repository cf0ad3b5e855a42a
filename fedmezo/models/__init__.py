"""Causal LMs for fedmezo: built-ins (tiny-random, SmolLM2-135M), local folders, .gguf files, the HF cache."""

from fedmezo.models.builtin import (
    build_random_model,
    llama_1b_config,
    smollm2_135m_config,
    tiny_random_config,
)
from fedmezo.models.loader import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    LoadedModel,
    ModelNotFoundError,
    default_cache_dir,
    load_model,
)

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelNotFoundError",
    "build_random_model",
    "default_cache_dir",
    "llama_1b_config",
    "load_model",
    "smollm2_135m_config",
    "tiny_random_config",
]
