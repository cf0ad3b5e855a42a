"""Trainable parameters as views of one flat fp32 buffer, in manifest order (design §2–3).

One contiguous buffer lets a single fused kernel regenerate-and-add z over every trainable tensor in
one launch, makes the round-start snapshot one memcpy, and makes the fingerprint one parallel pass over
words that are already in manifest order. Tensor ids are positions in the sorted list of unique names.
The buffer itself (layout.FlatBuffer) is what the backends write; this module adds the model's names
and shapes on top and sits above the backends, whose fingerprint it reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedmezo.zo.backend import fingerprint
from fedmezo.zo.fingerprint import FINGERPRINT_SPEC
from fedmezo.zo.layout import ComputeView, FlatBuffer, Segment, segments_of
from fedmezo.zo.rng import RNG_SPEC

__all__ = ["ComputeView", "Manifest", "Segment", "TrainableParams", "unique_trainable"]


@dataclass(frozen=True)
class Manifest:
    """Sorted unique trainable names and shapes: what two replicas must agree on before syncing.

    The fingerprint spec is part of it, so a replica that hashes θ differently is refused at join
    instead of being found out of sync after every round.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    rng_spec: str = RNG_SPEC
    fingerprint_spec: str = FINGERPRINT_SPEC
    base: str = ""  # the frozen base's dtype when it is not fp32 ("bf16", "fp16"): its forwards differ
    weights: str = ""  # the trainable weights' format when it is not fp32 ("bf16-sr", §7.4)

    def to_json(self) -> str:
        doc: dict[str, object] = {
            "rng_spec": self.rng_spec,
            "fingerprint_spec": self.fingerprint_spec,
            "tensors": [[n, list(s)] for n, s in zip(self.names, self.shapes)],
        }
        if self.base:  # absent for an fp32 base: every manifest from before base dtypes keeps its hash
            doc["base"] = self.base
        if self.weights:  # likewise absent for fp32 weights
            doc["weights"] = self.weights
        return json.dumps(doc, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def numel(self) -> int:
        return sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes)


def unique_trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters, tied weights counted once (under their first registered name)."""
    return [(n, p) for n, p in model.named_parameters(remove_duplicate=True) if p.requires_grad]


class TrainableParams(FlatBuffer):
    """The trainable parameters of a model, rebound as views of one flat fp32 buffer.

    After `from_model`, writing to `flat` changes the model's weights and vice versa; nothing else
    holds a copy, so the ZO engine adds no memory beyond what the model already takes.
    """

    def __init__(self, flat: torch.Tensor, names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...]):
        super().__init__(flat, segments_of([int(np.prod(s, dtype=np.int64)) for s in shapes]))
        self.names = names
        self.shapes = shapes
        self.base = ""  # set by fedmezo.trainable for a LoRA run on a bf16/fp16 base (see Manifest.base)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> TrainableParams:
        """Move every trainable parameter (requires_grad) of `model` into one flat fp32 buffer.

        The parameters must already be fp32 (canonical weights are fp32 everywhere, design §3);
        freeze what should not train (e.g. everything but LoRA adapters) before calling this.
        """
        named = sorted(unique_trainable(model), key=lambda item: item[0])
        if not named:
            raise ValueError("the model has no trainable parameters")
        for name, param in named:
            if param.dtype != torch.float32:
                raise ValueError(
                    f"trainable parameter {name} is {param.dtype}; canonical weights must be fp32"
                )
        device = named[0][1].device
        total = sum(p.numel() for _, p in named)
        flat = torch.empty(total, dtype=torch.float32, device=device)
        offset = 0
        for _, param in named:
            n = param.numel()
            view = flat[offset : offset + n]
            view.copy_(param.detach().reshape(-1))
            param.data = view.view(param.shape)  # the model now reads and writes the flat buffer
            offset += n
        return cls(flat, tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    def manifest(self) -> Manifest:
        return Manifest(self.names, self.shapes, base=self.base)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, view) pairs in manifest order, shaped like the model's parameters."""
        for name, shape, seg in zip(self.names, self.shapes, self.segments):
            yield name, self.flat[seg.offset : seg.offset + seg.numel].view(shape)

    def snapshot(self) -> torch.Tensor:
        """A host-memory fp32 copy of θ: taken at round start so local drift never reaches θ_r.

        From a GPU it lands in page-locked memory (torch's pinned allocator caches the block from one
        round to the next): a pageable copy of SmolLM2-135M took 350 ms on an H200, more than its τ=20
        compiled steps.
        """
        if self.flat.device.type == "cuda":
            host = torch.empty(self.flat.shape, dtype=self.flat.dtype, pin_memory=True)
            host.copy_(self.flat.detach())  # synchronous: the copy is complete when this returns
            return host
        return self.flat.detach().to("cpu", copy=True)

    def restore(self, snapshot: torch.Tensor) -> None:
        """Return exactly to a snapshot (bit for bit)."""
        if snapshot.shape != self.flat.shape or snapshot.dtype != torch.float32:
            raise ValueError("snapshot does not match this parameter set")
        self.flat.copy_(snapshot)
        self.refresh_compute()

    def fingerprint(self) -> str:
        """fedmezo-fp-v1 (hex SHA-256) of θ's fp32 words in manifest order, computed where θ lives.

        Same value on every backend; on CUDA only the chunk digests (16 bytes per 256 KiB) cross to
        the host (fingerprint.py).
        """
        return fingerprint(self.flat)
