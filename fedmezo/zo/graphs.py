"""Forwards at CUDA-graph speed: the loss on a few static batch shapes, replayed as CUDA graphs.

A small model's MeZO step on a GPU is launch-bound: two eager forwards of SmolLM2-135M spend ~80 ms
issuing ~1,000 small kernels each. `torch.compile(backend="cudagraphs")` records the forward's own
eager kernels once per input shape and replays them with one launch; unlike inductor it fuses and
rewrites nothing, so a compiled loss has the same bits as the eager one on the same batch, and θ after
N steps is bit-identical with and without it (tests/zo/test_graphs.py runs that on a GPU).

Graphs need static shapes, so the batches of both paths are right-padded to a few bucket lengths
(`bucket_length`): padding carries attention mask 0 and label IGNORE_INDEX, so the loss is the same
quantity. Every bucket keeps at least one padding column: transformers skips the explicit causal mask
for an unpadded batch in eager mode but never while tracing, and the two attention kernels differ in
their last bits; with a padding column both paths take the explicit-mask kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fedmezo.zo.objective import IGNORE_INDEX, Batch, response_cross_entropy

__all__ = ["MAX_BUCKETS", "BucketedLoss", "bucket_length", "pad_batch"]

MAX_BUCKETS = 8  # graphs recorded per batch size: each costs a compile (seconds) and a memory pool
_ALIGN = 8  # bucket lengths are multiples of this (tensor-core friendly)


def bucket_length(seq_len: int, max_length: int) -> int:
    """The padded length of a batch whose longest example has `seq_len` tokens.

    At most MAX_BUCKETS lengths for examples of up to `max_length` tokens, each a multiple of 8 and
    at least `seq_len + 1` (one padding column, see the module docstring).
    """
    if seq_len < 1 or max_length < 1:
        raise ValueError(f"lengths must be positive, got seq_len={seq_len}, max_length={max_length}")
    if seq_len > max_length:
        raise ValueError(f"an example of {seq_len} tokens is longer than max_length {max_length}")
    step = _ALIGN * math.ceil((max_length + 1) / (MAX_BUCKETS * _ALIGN))
    return step * math.ceil((seq_len + 1) / step)


def pad_batch(batch: Batch, length: int) -> Batch:
    """Right-pad every row to `length` tokens: input 0, attention mask 0, label IGNORE_INDEX."""
    extra = length - batch.input_ids.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad a batch of length {batch.input_ids.shape[1]} to {length}")
    if extra == 0:
        return batch
    pad = torch.nn.functional.pad
    return Batch(
        input_ids=pad(batch.input_ids, (0, extra), value=0),
        attention_mask=pad(batch.attention_mask, (0, extra), value=0),
        labels=pad(batch.labels, (0, extra), value=IGNORE_INDEX),
    )


class BucketedLoss:
    """The training loss on bucket-padded batches, eager or replayed from CUDA graphs (`compiled`).

    Both settings compute the same bits on the same device; `compiled` needs CUDA. The model stays in
    eval() mode (dropout off), as every MeZO forward requires.
    """

    def __init__(self, model: torch.nn.Module, max_length: int, *, compiled: bool) -> None:
        self.model = model
        self.max_length = max_length
        self.compiled = compiled
        model.eval()
        forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = self._forward
        if compiled:
            # dynamic=False: one graph per bucket shape, never a symbolic-shape graph that can't replay
            forward = torch.compile(self._forward, backend="cudagraphs", dynamic=False)
        self._run = forward

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return response_cross_entropy(logits, labels)

    def pad(self, batch: Batch) -> Batch:
        """The batch as both paths see it."""
        return pad_batch(batch, bucket_length(int(batch.input_ids.shape[1]), self.max_length))

    def __call__(self, batch: Batch) -> float:
        padded = self.pad(batch)
        with torch.inference_mode():
            loss = self._run(padded.input_ids, padded.attention_mask, padded.labels)
            return float(loss)  # copies out of the graph's output buffer before the next replay
