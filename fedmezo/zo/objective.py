"""The training objective: mean next-token cross-entropy over response tokens, in fp32 (design §6).

Both MeZO forward passes call this on the same batch, in eval() mode (dropout off) and under
`torch.inference_mode()` so no autograd state is ever kept: memory stays at inference level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["IGNORE_INDEX", "Batch", "causal_lm_loss", "make_loss_fn", "response_cross_entropy"]

IGNORE_INDEX = -100  # label value of prompt and padding tokens: they carry no loss


@dataclass(frozen=True)
class Batch:
    """A padded batch: input_ids, attention_mask and labels, each (batch, seq_len) int64."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def num_tokens(self) -> int:
        """Tokens that carry loss (response tokens)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def response_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean next-token cross-entropy over labelled (response) positions, in fp32.

    The one definition of the training objective: MeZO evaluates it under inference_mode, and the
    backprop baseline of `fedmezo simulate` differentiates the very same expression.
    """
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V) fp32
    shift_labels = labels[:, 1:]  # (B, T-1)
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="mean",
    )


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> float:
    """Token-mean cross-entropy of the response tokens, accumulated in fp32; NaN when no token counts."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            return float(response_cross_entropy(logits, batch.labels))
    finally:
        model.train(was_training)


def make_loss_fn(model: torch.nn.Module, batch: Batch) -> Callable[[], float]:
    """A zero-argument loss closure over one batch: what `mezo_step` evaluates at θ ± εz."""
    return lambda: causal_lm_loss(model, batch)
