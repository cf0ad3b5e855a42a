"""Seeded batches: a MeZO step's seed fixes its batch, on every machine."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from fedmezo.data import ClientDataset, Example, step_indices


def _dataset(tokenizer: PreTrainedTokenizerBase, n: int = 20) -> ClientDataset:
    examples = [Example(f"What is {i} + 1?", "", str(i + 1), "arithmetic") for i in range(n)]
    return ClientDataset.from_examples(tokenizer, examples, max_length=128)


def test_same_seed_same_batch(tokenizer: PreTrainedTokenizerBase) -> None:
    data, again = _dataset(tokenizer), _dataset(tokenizer)
    for seed in (0, 1, 2**63 + 12345, 2**64 - 1):
        first, second = data.batch_for_step(seed, 4), again.batch_for_step(seed, 4)
        assert torch.equal(first.input_ids, second.input_ids)
        assert torch.equal(first.attention_mask, second.attention_mask)
        assert torch.equal(first.labels, second.labels)


def test_indices_are_pinned() -> None:
    # Golden values: a change here changes which batch every recorded seed trained on.
    assert step_indices(0, 5, 100) == [99, 22, 56, 20, 41]
    assert step_indices(2**64 - 1, 3, 10) == [2, 4, 3]


def test_different_seeds_differ_and_cover_the_data() -> None:
    batches = {tuple(step_indices(seed, 4, 20)) for seed in range(50)}
    assert len(batches) == 50
    assert {i for batch in batches for i in batch} == set(range(20))


def test_indices_are_distinct_until_the_data_runs_out() -> None:
    for seed in range(20):
        assert len(set(step_indices(seed, 20, 20))) == 20  # a full permutation
        oversized = step_indices(seed, 25, 20)
        assert len(oversized) == 25 and set(oversized[:20]) == set(range(20))


def test_invalid_arguments() -> None:
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="unsigned 64-bit"):
            step_indices(seed, 1, 1)
    with pytest.raises(ValueError, match="positive"):
        step_indices(0, 0, 10)
    with pytest.raises(ValueError, match="at least one"):
        ClientDataset([], pad_id=0)


def test_iter_batches_is_sequential_and_complete(tokenizer: PreTrainedTokenizerBase) -> None:
    data = _dataset(tokenizer, n=10)
    assert data.num_examples == len(data) == 10
    batches = list(data.iter_batches(4))
    assert [b.input_ids.shape[0] for b in batches] == [4, 4, 2]
    rows = [row[mask.bool()].tolist() for b in batches for row, mask in zip(b.input_ids, b.attention_mask)]
    assert rows == [data[i].input_ids for i in range(10)]


def test_batch_for_step_holds_the_seeded_examples(tokenizer: PreTrainedTokenizerBase) -> None:
    data = _dataset(tokenizer)
    batch = data.batch_for_step(7, 3)
    rows = [row[mask.bool()].tolist() for row, mask in zip(batch.input_ids, batch.attention_mask)]
    assert rows == [data[i].input_ids for i in step_indices(7, 3, data.num_examples)]
