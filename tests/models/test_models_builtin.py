"""The built-in architectures, the byte-level tokenizer and the portable random init."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

import fedmezo.models
from fedmezo.models import build_random_model, llama_1b_config, smollm2_135m_config, tiny_random_config
from fedmezo.models.builtin import _init_seed, tiny_tokenizer
from fedmezo.zo.rng import DOMAIN_INIT, rademacher

# sha256 of tiny-random's fp32 weights (seed 0) in sorted-name order. It pins fedmezo-rng-v1 init across
# machines and torch versions: it may change only with a deliberate change of the init recipe.
TINY_RANDOM_FINGERPRINT = "55aa0a67d305494f10efcb01e73abf01debd25e39e2702520992402937df1a7e"


def fingerprint(model: torch.nn.Module) -> str:
    params = dict(model.named_parameters())
    digest = hashlib.sha256()
    for name in sorted(params):
        digest.update(params[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tiny() -> PreTrainedModel:
    return build_random_model(tiny_random_config())


def meta_param_count(config: PretrainedConfig) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def test_public_all_is_sorted() -> None:
    assert list(fedmezo.models.__all__) == sorted(fedmezo.models.__all__)
    assert all(hasattr(fedmezo.models, name) for name in fedmezo.models.__all__)


def test_tiny_random_size_and_dtype(tiny: PreTrainedModel) -> None:
    assert 1_000_000 <= sum(p.numel() for p in tiny.parameters()) <= 5_000_000
    assert all(p.dtype == torch.float32 for p in tiny.parameters())
    assert not tiny.training
    assert tiny.get_output_embeddings().weight is tiny.get_input_embeddings().weight


def test_tiny_random_is_bit_identical_across_builds(tiny: PreTrainedModel) -> None:
    again = build_random_model(tiny_random_config())
    first, second = tiny.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].numpy().tobytes() == second[name].numpy().tobytes(), name


def test_tiny_random_golden_fingerprint(tiny: PreTrainedModel) -> None:
    assert fingerprint(tiny) == TINY_RANDOM_FINGERPRINT


def test_init_follows_rng_spec(tiny: PreTrainedModel) -> None:
    """Each matrix is fp32(0.02 · z) with z = rademacher(key, index in sorted names, DOMAIN_INIT)."""
    params = dict(tiny.named_parameters())
    for tensor_id, name in enumerate(sorted(params)):
        param = params[name]
        if param.dim() >= 2:
            z = rademacher(_init_seed(0), tensor_id, param.numel(), DOMAIN_INIT)
            assert torch.equal(param.detach().view(-1), (z.to(torch.float64) * 0.02).to(torch.float32)), name
        else:
            assert torch.all(param == 1.0), name  # RMSNorm gains


def test_init_seed_changes_weights(tiny: PreTrainedModel) -> None:
    other = build_random_model(tiny_random_config(), seed=1)
    assert fingerprint(other) != fingerprint(tiny)


def test_init_crosses_chunk_boundaries(monkeypatch: pytest.MonkeyPatch, tiny: PreTrainedModel) -> None:
    """Chunked filling (used to bound memory on 1B models) gives the same bits as one big chunk."""
    monkeypatch.setattr(fedmezo.models.builtin, "INIT_CHUNK_BLOCKS", 3)
    assert fingerprint(build_random_model(tiny_random_config())) == fingerprint(tiny)


TOKENIZER = tiny_tokenizer()


@settings(deadline=None)  # shared 2-core CI machines: a slow example is not a failure
@given(st.text())
def test_tiny_tokenizer_round_trips_unicode(text: str) -> None:
    assert TOKENIZER.decode(TOKENIZER(text)["input_ids"]) == text


def test_tiny_tokenizer_special_tokens() -> None:
    tokenizer = tiny_tokenizer()
    assert len(tokenizer) == tiny_random_config().vocab_size == 260
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<pad>"]) == [257, 258, 259]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<pad>")
    assert tokenizer.padding_side == "right"
    assert tokenizer("é")["input_ids"] == [0xC3, 0xA9]  # ids 0-255 are the UTF-8 bytes


def test_tiny_chat_template_is_chatml() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tiny_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tiny_random_generates(tiny: PreTrainedModel) -> None:
    tokenizer = tiny_tokenizer()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt"
    )
    out = tiny.generate(**prompt, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 5)
    assert int(out.max()) < tiny.config.vocab_size


@pytest.mark.parametrize(
    ("make_config", "low", "high"),
    [(smollm2_135m_config, 0.9 * 135e6, 1.1 * 135e6), (llama_1b_config, 1.0e9, 1.3e9)],
)
def test_benchmark_configs_have_their_advertised_size(
    make_config: Callable[[], PretrainedConfig], low: float, high: float
) -> None:
    assert low <= meta_param_count(make_config()) <= high
