"""A client's training data, with the batch of a MeZO step chosen by that step's seed.

A MeZO step is replayable from its seed only if its batch is too: the same seed must pick the same
examples on every machine, numpy or Python version. So the indices come from the raw output of a
Philox4x64-10 counter generator (a fixed function of key and counter, unlike `Generator.choice`,
whose algorithm numpy may change) fed through a Fisher–Yates shuffle written out here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedmezo.data.records import Example
from fedmezo.data.tokenize import EncodedExample, collate, encode_example, pad_token_id
from fedmezo.zo.objective import Batch

__all__ = ["BATCH_KEY_DOMAIN", "ClientDataset", "step_indices"]

# Second Philox key word ("data" in ASCII): keeps batch sampling apart from any other use of a seed.
BATCH_KEY_DOMAIN = 0x64617461
_MAX_SEED = 2**64 - 1


def step_indices(seed: int, batch_size: int, num_examples: int) -> list[int]:
    """The example indices of the batch for `seed`: distinct while batch_size ≤ num_examples.

    Draws a seeded permutation of range(num_examples) (Fisher–Yates on Philox words; the modulo bias,
    below num_examples / 2**64, is negligible) and takes its head. A larger batch continues with fresh
    permutations, so every example appears before any repeats.
    """
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be an unsigned 64-bit integer, got {seed}")
    if batch_size < 1 or num_examples < 1:
        raise ValueError(f"batch_size ({batch_size}) and num_examples ({num_examples}) must be positive")
    bits = np.random.Philox(key=np.array([seed, BATCH_KEY_DOMAIN], dtype=np.uint64))
    indices: list[int] = []
    while len(indices) < batch_size:
        take = min(batch_size - len(indices), num_examples)
        perm = list(range(num_examples))
        words = bits.random_raw(take)  # uint64, one per swap
        for i in range(take):  # partial Fisher–Yates: perm[:take] is a uniform random arrangement
            j = i + int(words[i]) % (num_examples - i)
            perm[i], perm[j] = perm[j], perm[i]
        indices.extend(perm[:take])
    return indices


class ClientDataset:
    """The encoded examples of one client: seeded batches for training, sequential ones for evaluation."""

    def __init__(self, encoded: Sequence[EncodedExample], pad_id: int) -> None:
        if not encoded:
            raise ValueError("a client dataset needs at least one example")
        self._encoded = list(encoded)
        self.pad_id = pad_id

    @classmethod
    def from_examples(
        cls, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int
    ) -> ClientDataset:
        """Encode once up front: a MeZO step then costs two forward passes and no tokenization."""
        encoded = [encode_example(tokenizer, ex, max_length) for ex in examples]
        return cls(encoded, pad_token_id(tokenizer))

    @property
    def num_examples(self) -> int:
        return len(self._encoded)

    def __len__(self) -> int:
        return len(self._encoded)

    def __getitem__(self, index: int) -> EncodedExample:
        return self._encoded[index]

    def batch_for_step(self, seed: int, batch_size: int) -> Batch:
        """The batch of the MeZO step with this seed: the same examples, in the same order, everywhere."""
        indices = step_indices(seed, batch_size, self.num_examples)
        return collate([self._encoded[i] for i in indices], self.pad_id)

    def iter_batches(self, batch_size: int) -> Iterator[Batch]:
        """All examples in order, `batch_size` at a time (the last batch may be smaller): for evaluation."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, self.num_examples, batch_size):
            yield collate(self._encoded[start : start + batch_size], self.pad_id)
