"""Models that need no download: architecture configs, the tiny byte-level tokenizer, portable random init.

Random weights come from fedmezo-rng-v1 (design §2), not from `torch.manual_seed`: torch's streams differ
between CPU and CUDA and across versions, while these weights must be bit-identical on every machine so
that a test's golden fingerprint, and every replica in a federation, agree.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from accelerate import init_empty_weights
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from fedmezo.zo.rng import DOMAIN_INIT, ELEMENTS_PER_BLOCK, rademacher_blocks

__all__ = [
    "CHATML_TEMPLATE",
    "build_random_model",
    "build_tiny_random",
    "empty_model",
    "llama_1b_config",
    "smollm2_135m_config",
    "tiny_random_config",
    "tiny_tokenizer",
]

# ChatML, the format SmolLM2-Instruct was tuned on (without its default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")  # ids 256..259
TINY_VOCAB_SIZE = 256 + len(TINY_SPECIAL_TOKENS)
TINY_MAX_LENGTH = 1024  # tokens (= bytes): enough for the demo's short chat examples

INIT_SEED_LABEL = "fedmezo-random-init-v1"  # changing it changes every random model's weights
INIT_CHUNK_BLOCKS = 2**15  # Philox blocks generated at once: 4 Mi elements, ~50 MB of temporaries


def tiny_random_config() -> LlamaConfig:
    """A ~1.7M-parameter Llama over the tiny byte vocabulary: end-to-end runs in seconds on a laptop CPU."""
    return LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_LENGTH,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=256,  # <|endoftext|>
        eos_token_id=258,  # <|im_end|>: ends an assistant turn
        pad_token_id=259,  # <pad>
    )


def _smollm2_family(**shape: Any) -> LlamaConfig:
    """A Llama on SmolLM2's vocabulary, rope and special tokens (so SmolLM2's tokenizer fits it)."""
    return LlamaConfig(
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **shape,
    )


def smollm2_135m_config() -> LlamaConfig:
    """SmolLM2-135M's architecture (134.5M parameters), for benchmarks on machines without its weights."""
    return _smollm2_family(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
    )


def llama_1b_config() -> LlamaConfig:
    """A 1.07B-parameter Llama on SmolLM2's vocabulary (fits its tokenizer), for GPU speed benchmarks."""
    return _smollm2_family(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of the ByteLevel pre-tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    mapping = {b: chr(b) for b in [*printable, *range(ord("®"), ord("ÿ") + 1)]}
    unprintable = (b for b in range(256) if b not in mapping)
    mapping.update({b: chr(256 + i) for i, b in enumerate(unprintable)})
    return mapping


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built in code: ids 0-255 are the bytes, so any text round-trips exactly."""
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=TINY_MAX_LENGTH,
        padding_side="right",
    )


def _init_seed(seed: int) -> int:
    """The 64-bit Philox key for `seed`: a hash, so nearby seeds give unrelated weights."""
    digest = hashlib.blake2b(f"{INIT_SEED_LABEL}/{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def empty_model(config: PretrainedConfig) -> PreTrainedModel:
    """`config`'s model on the CPU with uninitialised parameters, skipping transformers' slow torch-RNG init.

    Parameters are created on the meta device; buffers (rotary frequencies) are computed for real and kept.
    """
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.to_empty(device="cpu")  # replaces buffers too, and unties shared parameters
    for name, buffer in model.named_buffers():
        buffer.copy_(buffers[name])
    model.tie_weights()
    return model


def _fill_rademacher(param: torch.Tensor, key: int, tensor_id: int, std: float) -> None:
    """param ← fp32(std · z), z = rademacher(key, tensor_id, numel, DOMAIN_INIT); chunked to bound memory."""
    flat = param.view(-1)
    chunk = INIT_CHUNK_BLOCKS * ELEMENTS_PER_BLOCK
    for start in range(0, flat.numel(), chunk):
        end = min(start + chunk, flat.numel())
        num_blocks = -(-(end - start) // ELEMENTS_PER_BLOCK)
        z = rademacher_blocks(key, tensor_id, start // ELEMENTS_PER_BLOCK, num_blocks, DOMAIN_INIT)
        flat[start:end] = (z[: end - start].to(torch.float64) * std).to(torch.float32)  # exact: ±fp32(std)


def build_random_model(config: PretrainedConfig, *, seed: int = 0) -> PreTrainedModel:
    """A model with portable random weights, identical bit for bit on every machine and torch version.

    Matrices (linear, embedding) get std·z with z Rademacher ±1 and std = config.initializer_range; the
    tensor id is the index of the parameter's name in the sorted unique names (tied weights once, as in
    the model manifest). Biases are 0 and 1-D gains (RMSNorm) are 1. fp32, eval mode, on the CPU.
    """
    model = empty_model(config)
    key = _init_seed(seed)
    std = float(getattr(config, "initializer_range", 0.02))
    params = dict(model.named_parameters())  # deduplicates tied weights
    with torch.no_grad():
        for tensor_id, name in enumerate(sorted(params)):
            param = params[name]
            if param.dim() >= 2:
                _fill_rademacher(param, key, tensor_id, std)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return model.float().eval()


def build_tiny_random(*, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The `tiny-random` built-in: portable random weights plus the byte-level ChatML tokenizer."""
    return build_random_model(tiny_random_config(), seed=seed), tiny_tokenizer()
