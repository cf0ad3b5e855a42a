"""`load_model` dispatch: built-ins, save_pretrained folders, and clear errors for what is not there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmezo.models import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    LoadedModel,
    ModelNotFoundError,
    default_cache_dir,
    load_model,
)
from fedmezo.models.gguf import gguf_cache_name


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny-random")


def test_builtins() -> None:
    assert DEFAULT_MODEL in BUILTIN_MODELS
    assert {"tiny-random", "smollm2-135m"} == set(BUILTIN_MODELS)


def test_tiny_random_is_ready_for_training(tiny: LoadedModel) -> None:
    assert tiny.name == "tiny-random"
    assert "fedmezo-rng-v1" in tiny.source
    assert not tiny.model.training
    assert {p.dtype for p in tiny.model.parameters()} == {torch.float32}
    assert {p.device.type for p in tiny.model.parameters()} == {"cpu"}
    assert tiny.tokenizer.pad_token == "<pad>"
    assert tiny.tokenizer.padding_side == "right"
    assert tiny.tokenizer.chat_template


def test_load_saved_folder(tiny: LoadedModel, tmp_path: Path) -> None:
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.source == str(tmp_path)
    assert not loaded.model.training
    reference, restored = tiny.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(reference[name], restored[name]) for name in reference)
    assert loaded.model.get_output_embeddings().weight is loaded.model.get_input_embeddings().weight
    text = "héllo, 世界"
    assert loaded.tokenizer.decode(loaded.tokenizer(text)["input_ids"]) == text
    assert loaded.tokenizer.chat_template == tiny.tokenizer.chat_template
    assert loaded.tokenizer.pad_token == "<pad>"


def test_missing_path_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no such file or directory.*\.gguf.*tiny-random"):
        load_model(str(tmp_path / "nowhere" / "model"))


def test_folder_without_weights_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no config\.json and no \.gguf file"):
        load_model(str(tmp_path))


def test_unknown_hub_id_fails_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so the id cannot resolve to a folder of the same name
    with pytest.raises(ModelNotFoundError, match=r"not in the Hugging Face cache.*HF_HOME") as info:
        load_model("fedmezo-test/no-such-model")
    assert isinstance(info.value, FileNotFoundError)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDMEZO_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("FEDMEZO_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "fedmezo"


def test_folder_with_two_gguf_files_is_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"2 \.gguf files"):
        load_model(str(tmp_path))


def test_gguf_cache_name_follows_the_file(tmp_path: Path) -> None:
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"v1")
    first = gguf_cache_name(gguf_file)
    assert first.startswith("gguf-model-")
    assert gguf_cache_name(gguf_file) == first
    gguf_file.write_bytes(b"v2, longer")
    assert gguf_cache_name(gguf_file) != first
