"""The built-in `tiny-random` model and its byte-level ChatML tokenizer (no downloads), plus variants."""

from __future__ import annotations

import copy

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedmezo.models import LoadedModel, load_model


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model("tiny-random")


@pytest.fixture(scope="session")
def tiny_model(tiny: LoadedModel) -> PreTrainedModel:
    return tiny.model


@pytest.fixture(scope="session")
def tokenizer(tiny: LoadedModel) -> PreTrainedTokenizerBase:
    return tiny.tokenizer


@pytest.fixture(scope="session")
def plain_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The same tokenizer without a chat template: exercises the plain "### Instruction" format."""
    variant = copy.deepcopy(tokenizer)
    variant.chat_template = None
    return variant
