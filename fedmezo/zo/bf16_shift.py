"""Perturbed forwards on bf16 canonical weights without a second copy of the model (§7.4).

MeZO perturbs θ in place and undoes it; on bf16 weights the undo is not exact (θ + εz − εz rounds
twice), and a full compute copy would double the 2 bytes per parameter. Instead every module that owns
trainable tensors gets a forward pre-hook that swaps in bf16(θ_t ± v) for its own tensors, made by one
kernel from the canonical view, and a forward hook that swaps the canonical view back. θ is never
written by a shift, and the extra memory is one module's tensors at a time. A tied tensor (embeddings
and LM head) is derived once per forward, by the first module that runs, and kept until its last user
has run (on smollm2-135m the tied embedding is a fifth of θ).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedmezo.zo.bf16_weights import Bf16Params

__all__ = ["Bf16Shift"]


class _Slot:
    """One trainable tensor as one module holds it: the Parameter, its canonical view and tensor id."""

    def __init__(self, param: torch.nn.Parameter, canonical: torch.Tensor, tensor_id: int) -> None:
        self.param = param
        self.canonical = canonical
        self.tensor_id = tensor_id


class Bf16Shift:
    """The estimators' Perturbation (fedmezo.zo.estimators) for Bf16Params: shifts live in hooks only."""

    def __init__(self, model: torch.nn.Module, params: Bf16Params) -> None:
        self.params = params
        self._shift: tuple[int, float] | None = None
        by_name = {name: tensor_id for tensor_id, name in enumerate(params.names)}
        canonical = dict(params.tensors())
        by_param = {id(model.get_parameter(name)): name for name in params.names}
        self._slots: list[_Slot] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._users: dict[int, int] = {}  # tensor id -> modules that hold it (2 for a tied tensor)
        self._shared: dict[int, list[Any]] = {}  # tied tensor id -> [perturbed copy, users still to run]
        for module in model.modules():
            slots = []
            for param in module.parameters(recurse=False):
                name = by_param.get(id(param))
                if name is not None:
                    slots.append(_Slot(param, canonical[name], by_name[name]))
            if slots:
                for slot in slots:
                    self._users[slot.tensor_id] = self._users.get(slot.tensor_id, 0) + 1
                self._slots += slots
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(slots)))
                self._handles.append(module.register_forward_hook(self._post_hook(slots)))
        if {s.tensor_id for s in self._slots} != set(range(len(params.names))):
            raise ValueError("some trainable tensors belong to no module: their forwards cannot be shifted")

    def _pre_hook(self, slots: list[_Slot]) -> Any:
        def hook(module: torch.nn.Module, args: Any) -> None:
            for slot in slots:
                if self._shift is None:
                    slot.param.data = slot.canonical
                    continue
                users = self._users[slot.tensor_id]
                shared = self._shared.get(slot.tensor_id) if users > 1 else None
                if shared is None:
                    seed, value = self._shift
                    copy = self.params.kernels.perturbed(slot.canonical, seed, value, slot.tensor_id)
                    if users > 1:
                        shared = self._shared[slot.tensor_id] = [copy, users]
                else:
                    copy = shared[0]
                if shared is not None:
                    shared[1] -= 1
                    if shared[1] == 0:  # its last user this forward: the copy goes with this module's
                        del self._shared[slot.tensor_id]
                slot.param.data = copy

        return hook

    def _post_hook(self, slots: list[_Slot]) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            for slot in slots:
                slot.param.data = slot.canonical  # the perturbed copy is dropped here

        return hook

    def _unshift(self) -> None:
        self._shift = None
        self._shared.clear()
        for slot in self._slots:  # a forward that raised may have left a perturbed copy bound
            slot.param.data = slot.canonical

    def shift(self, seed: int, value: float) -> None:
        """The next forwards see θ + value·z(seed), rounded to nearest (θ itself is not written)."""
        self._shared.clear()  # a forward that raised may have left a tied copy of the last shift
        self._shift = (seed, value)

    def reset(self) -> None:
        self._unshift()

    def update(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        """Drop the shift, then θ ← SR(θ + Σ value·z(seed)), one rounding per element (§7.4)."""
        self._unshift()
        self.params.apply(seeds, values)

    def close(self) -> None:
        """Remove the hooks: the model reads θ as plain bf16 weights again."""
        self._unshift()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
