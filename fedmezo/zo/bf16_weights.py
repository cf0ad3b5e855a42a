"""Full-parameter training on bf16 canonical weights (docs/protocol.md §7.4): 2 bytes per parameter.

fp32 θ costs 4 bytes per parameter, twice bf16 inference. Here θ itself is bf16, in one flat buffer in
manifest order; the model's trainable tensors are views of it, as with TrainableParams. Rounding every
update to nearest would erase it (a MeZO step, lr·g ~ 1e-6, is far below half a bf16 ulp of a typical
weight), so θ moves only by `apply`: per element the pairs' fp32 adds of ±c in order, then one
stochastic rounding with bits drawn from the first pair's seed in Philox domain 1 (a round delta is one
apply: one rounding per element per round). Unbiased, and the same bits on every backend (reference,
numba, Triton), so replicas stay identical. The fingerprint is fedmezo-fp-v1 of the buffer's bytes
read as uint32 words (two bf16 per word, a zero half padding an odd count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from fedmezo.zo.backend import fingerprint
from fedmezo.zo.layout import Segment, segments_of
from fedmezo.zo.params import Manifest, unique_trainable
from fedmezo.zo.rounding import perturbed_bf16, sr_apply_bf16
from fedmezo.zo.rounding_numba import perturbed_bf16_numba, sr_apply_bf16_numba
from fedmezo.zo.rounding_triton import perturbed_bf16_triton, sr_apply_bf16_triton
from fedmezo.zo.values import check_seeds

__all__ = ["BF16_SR", "Bf16Kernels", "Bf16Params", "bf16_kernels"]

BF16_SR = "bf16-sr"  # the manifest's name for this weight format

SrApply = Callable[[torch.Tensor, Sequence[tuple[int, float]], int], None]
Perturbed = Callable[[torch.Tensor, int, float, int], torch.Tensor]


class Bf16Kernels:
    """One backend's two §7.4 operations: the stochastic-rounding update and the perturbed forward copy."""

    def __init__(self, name: str, sr_apply: SrApply, perturbed: Perturbed) -> None:
        self.name = name
        self.sr_apply = sr_apply
        self.perturbed = perturbed


def _reference_sr_apply(w: torch.Tensor, pairs: Sequence[tuple[int, float]], tensor_id: int) -> None:
    w.copy_(sr_apply_bf16(w, pairs, tensor_id))


def bf16_kernels(device: torch.device | str, name: str | None = None) -> Bf16Kernels:
    """The §7.4 kernels for `device`: numba on CPU, Triton on CUDA, or the one named."""
    device = torch.device(device)
    name = name or ("triton" if device.type == "cuda" else "numba")
    if name == "reference":
        return Bf16Kernels(name, _reference_sr_apply, perturbed_bf16)
    if name == "numba":
        return Bf16Kernels(name, sr_apply_bf16_numba, perturbed_bf16_numba)
    if name == "triton":
        return Bf16Kernels(name, sr_apply_bf16_triton, perturbed_bf16_triton)
    raise ValueError(f"unknown backend {name!r}; choose reference, numba or triton")


class Bf16Params:
    """The trainable weights of a model as views of one flat bf16 buffer, updated only by §7.4 adds."""

    def __init__(
        self,
        flat: torch.Tensor,
        names: tuple[str, ...],
        shapes: tuple[tuple[int, ...], ...],
        kernels: Bf16Kernels | None = None,
    ) -> None:
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        if flat.dtype != torch.bfloat16 or flat.dim() != 1 or not flat.is_contiguous():
            raise ValueError("flat must be a contiguous 1-D bf16 tensor")
        if flat.numel() != sum(sizes) + sum(sizes) % 2:
            raise ValueError(f"flat holds {flat.numel()} elements, the tensors {sum(sizes)} (padded to even)")
        self.flat = flat
        self.names = names
        self.shapes = shapes
        self.segments: tuple[Segment, ...] = segments_of(sizes)
        self.numel = sum(sizes)
        self.kernels = kernels or bf16_kernels(flat.device)

    @classmethod
    def from_model(cls, model: torch.nn.Module, kernels: Bf16Kernels | None = None) -> Bf16Params:
        """Cast `model` to bf16 and move its trainable tensors (requires_grad) into one flat bf16 buffer.

        The model's frozen tensors and buffers are cast too: the forwards run in bf16 throughout.
        """
        model.to(torch.bfloat16)
        named = sorted(unique_trainable(model), key=lambda item: item[0])
        if not named:
            raise ValueError("the model has no trainable parameters")
        total = sum(p.numel() for _, p in named)
        flat = torch.zeros(total + total % 2, dtype=torch.bfloat16, device=named[0][1].device)
        offset = 0
        for _, param in named:
            view = flat[offset : offset + param.numel()]
            view.copy_(param.detach().reshape(-1))
            param.data = view.view(param.shape)
            offset += param.numel()
        return cls(flat, tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named), kernels)

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def manifest(self) -> Manifest:
        return Manifest(self.names, self.shapes, weights=BF16_SR)

    def view(self, seg: Segment) -> torch.Tensor:
        """The flat segment of one tensor (1-D, contiguous)."""
        return self.flat[seg.offset : seg.offset + seg.numel]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, view) pairs in manifest order, shaped like the model's parameters."""
        for name, shape, seg in zip(self.names, self.shapes, self.segments, strict=True):
            yield name, self.view(seg).view(shape)

    def apply(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        """θ ← SR(θ ± c_1 ± … ± c_K) (§7.4): fp32 adds in the order given, one rounding per element. One
        call is one rounding: a round delta MUST be applied in one call (replicas agree only then)."""
        check_seeds(seeds, values)
        if not seeds:
            return
        pairs = list(zip(seeds, values, strict=True))
        for seg in self.segments:
            self.kernels.sr_apply(self.view(seg), pairs, seg.tensor_id)

    def warm_up(self) -> None:
        """Run both kernels once on a scratch tensor: numba compiles or loads them (seconds on CPU) and
        Triton compiles, now rather than in the first round. Never on θ itself."""
        scratch = torch.zeros(256, dtype=torch.bfloat16, device=self.device)
        self.kernels.sr_apply(scratch, [(1, 1.0)], 0)
        self.kernels.perturbed(scratch, 1, 1.0, 0)

    def snapshot(self) -> torch.Tensor:
        """A host copy of θ (bf16, bit for bit)."""
        return self.flat.detach().to("cpu", copy=True)

    def restore(self, snapshot: torch.Tensor) -> None:
        if snapshot.shape != self.flat.shape or snapshot.dtype != torch.bfloat16:
            raise ValueError("snapshot does not match this parameter set")
        self.flat.copy_(snapshot)

    def fingerprint(self) -> str:
        """fedmezo-fp-v1 of the buffer's words: the bf16 bits reinterpreted, never converted or copied."""
        return fingerprint(self.flat.view(torch.float32))
