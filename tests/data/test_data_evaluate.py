"""Held-out evaluation on a tiny real model: loss, greedy exact match, and the answer normalisation."""

from __future__ import annotations

import dataclasses
import math

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedmezo.data import evaluate, exact_match, generate_answers, generate_demo_dataset, normalize_answer

_, HELD_OUT = generate_demo_dataset()
EXAMPLES = HELD_OUT[:6]


def test_loss_and_exact_match_are_in_range(
    tiny_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> None:
    tiny_model.train()
    result = evaluate(
        tiny_model, tokenizer, HELD_OUT, batch_size=4, max_new_tokens=4, limit=6, progress=False
    )
    assert result.num_examples == 6
    assert math.isfinite(result.loss) and result.loss > 0
    assert 0.0 <= result.exact_match <= 1.0
    assert tiny_model.training  # evaluation restores the mode it found
    tiny_model.eval()


def test_loss_does_not_depend_on_batching(
    tiny_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> None:
    one = evaluate(tiny_model, tokenizer, EXAMPLES, batch_size=1, max_new_tokens=1, progress=False)
    four = evaluate(tiny_model, tokenizer, EXAMPLES, batch_size=4, max_new_tokens=1, progress=False)
    assert one.loss == pytest.approx(four.loss, rel=1e-5)  # token-weighted, and padding is masked


def test_left_padding_does_not_change_greedy_answers(
    tiny_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> None:
    examples = [*EXAMPLES[:2], dataclasses.replace(EXAMPLES[2], instruction="A much longer question " * 5)]
    alone = generate_answers(tiny_model, tokenizer, examples, batch_size=1, max_new_tokens=6, progress=False)
    padded = generate_answers(tiny_model, tokenizer, examples, batch_size=3, max_new_tokens=6, progress=False)
    assert alone == padded


def test_exact_match_reaches_one_when_answers_are_what_the_model_says(
    tiny_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> None:
    said = generate_answers(tiny_model, tokenizer, EXAMPLES, max_new_tokens=4, progress=False)
    parroted = [dataclasses.replace(ex, output=answer) for ex, answer in zip(EXAMPLES, said, strict=True)]
    result = evaluate(tiny_model, tokenizer, parroted, max_new_tokens=4, progress=False)
    assert result.exact_match == 1.0


def test_normalisation() -> None:
    assert normalize_answer("  Paris.\n") == "paris"
    assert exact_match(" ELPPA ", "elppa")
    assert exact_match("68.", "68")
    assert exact_match("New Delhi", "new delhi")
    assert not exact_match("6 8", "68")
    assert not exact_match("68..", "68")  # only one trailing period is forgiven
    assert not exact_match("", "68")


def test_nothing_to_evaluate(tiny_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match="no examples"):
        evaluate(tiny_model, tokenizer, [], progress=False)
