"""The flat fp32 buffer that kernels write: where each trainable tensor sits in it, and its compute copy.

A leaf module, so that the backends depend on the buffer alone: TrainableParams (params.py) adds names,
shapes and the manifest on top of it and sits above the backends, because its fingerprint dispatches
to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["ComputeView", "FlatBuffer", "Segment", "segments_of"]


@dataclass(frozen=True)
class Segment:
    """One trainable tensor inside the flat buffer: its tensor id, offset and element count."""

    tensor_id: int
    offset: int
    numel: int


def segments_of(sizes: Sequence[int]) -> tuple[Segment, ...]:
    """Consecutive segments of the given element counts; tensor ids are positions (manifest order)."""
    segments = []
    offset = 0
    for tensor_id, numel in enumerate(sizes):
        segments.append(Segment(tensor_id=tensor_id, offset=offset, numel=int(numel)))
        offset += int(numel)
    return tuple(segments)


class ComputeView(Protocol):
    """A low-precision copy of θ that the model's forwards read (fedmezo.zo.mixed.ComputeCopy)."""

    copy: torch.Tensor

    def derive(self, seeds: Sequence[int], values: Sequence[float]) -> None: ...


class FlatBuffer:
    """θ as one contiguous 1-D fp32 buffer cut into segments: the unit every backend writes in one pass."""

    def __init__(self, flat: torch.Tensor, segments: tuple[Segment, ...]):
        if flat.dtype != torch.float32 or flat.dim() != 1 or not flat.is_contiguous():
            raise ValueError("flat must be a contiguous 1-D fp32 tensor")
        total = sum(seg.numel for seg in segments)
        if total != flat.numel():
            raise ValueError(f"the segments hold {total} elements, flat holds {flat.numel()}")
        self.flat = flat
        self.segments = segments
        # Set by ComputeCopy: every write to θ (backend.apply, restore) then also refreshes the copy.
        self.compute: ComputeView | None = None

    @property
    def numel(self) -> int:
        return self.flat.numel()

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def refresh_compute(self) -> None:
        """copy ← lowp(θ) after θ was written (round to nearest even, as the fused kernel does)."""
        if self.compute is not None:
            self.compute.copy.copy_(self.flat)

    def scratch(self) -> FlatBuffer:
        """A copy of θ with the same segments and no compute copy: lets a backend add without touching θ."""
        return FlatBuffer(self.flat.detach().clone(), self.segments)
