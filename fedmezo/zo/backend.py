"""Which backend runs where: the registry, and the operations that dispatch to it (fingerprint, warm-up).

The interface and the reference backend are in interface.py, the kernels in cpu_kernel.py (numba) and
triton_kernel.py (Triton); this module names them and picks the fastest one for a device, so the
fingerprint of θ is computed where θ lives and the first real call finds its kernels compiled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedmezo.zo.cpu_kernel import NumbaBackend
from fedmezo.zo.fingerprint import fingerprint_from_digests
from fedmezo.zo.interface import Backend, ReferenceBackend
from fedmezo.zo.layout import FlatBuffer, segments_of
from fedmezo.zo.triton_kernel import TritonBackend, triton_available
from fedmezo.zo.values import to_fp32

__all__ = [
    "WARM_UP_ELEMENTS",
    "Backend",
    "ReferenceBackend",
    "available_backends",
    "compute_copy_backend",
    "fingerprint",
    "get_backend",
    "to_fp32",
    "warm_up",
]

WARM_UP_ELEMENTS = 4096  # a few Philox blocks: enough to run every kernel path once

# name -> (constructor, whether it runs on a device here); order is the order available_backends lists
_REGISTRY: dict[str, tuple[Callable[[], Backend], Callable[[torch.device], bool]]] = {
    "reference": (ReferenceBackend, lambda device: True),
    "numba": (NumbaBackend, lambda device: device.type == "cpu"),
    "triton": (TritonBackend, triton_available),
}
_BACKENDS: dict[str, Backend] = {}  # one instance per name: kernels and tables are cached on it


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on `device` here."""
    device = torch.device(device)
    return [name for name, (_, runs_on) in _REGISTRY.items() if runs_on(device)]


def get_backend(device: torch.device | str = "cpu", name: str | None = None) -> Backend:
    """The fastest backend for `device` (numba on CPU, Triton on CUDA), or the one named."""
    device = torch.device(device)
    if name is None:
        name = "triton" if device.type == "cuda" else "numba"
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose {', '.join(_REGISTRY)}")
    if name not in _BACKENDS:
        _BACKENDS[name] = _REGISTRY[name][0]()
    return _BACKENDS[name]


def compute_copy_backend(device: torch.device | str) -> Backend:
    """The backend that keeps a compute copy (mixed.py) on `device`: Triton wherever it runs, since its
    kernel writes the copy in the same pass as θ (CUDA; CPU under TRITON_INTERPRET=1), else the default."""
    device = torch.device(device)
    return get_backend(device, "triton" if triton_available(device) else None)


def fingerprint(flat: torch.Tensor, backend: str | None = None) -> str:
    """fedmezo-fp-v1 of a flat fp32 buffer; the digests run where the buffer lives (numba or Triton)."""
    digests = get_backend(flat.device, backend).chunk_digests(flat)
    return fingerprint_from_digests(digests, flat.numel())


def warm_up(device: torch.device | str, backend: Backend | None = None) -> None:
    """Run the delta and fingerprint kernels of `backend` (default: the device's) once on a scratch buffer.

    Their first call compiles or loads the kernel (about a second on CPU), which the first real step or
    round close would otherwise pay. Never on the real weights: even adding ±0 could flip the sign of a
    −0.0 weight and change the fingerprint.
    """
    device = torch.device(device)
    backend = backend or get_backend(device)
    scratch = FlatBuffer(
        torch.zeros(WARM_UP_ELEMENTS, dtype=torch.float32, device=device), segments_of([WARM_UP_ELEMENTS])
    )
    backend.apply(scratch, [1], [1.0])
    backend.chunk_digests(scratch.flat)
