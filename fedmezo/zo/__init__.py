"""The zeroth-order engine: portable perturbations, the MeZO step, round deltas. Pure math, no I/O.

Modules, bottom-up (each imports only modules listed before it):

- philox, rng, seeds, values, fingerprint: the specs and their readable references (Philox4x32-10,
  z(seed), 64-bit seeds, fp32 coefficients, fedmezo-fp-v1 chunk digests)
- layout: the flat fp32 buffer and its segments, what every kernel writes
- interface: the Backend protocol and the reference backend
- fingerprint_numba, cpu_kernel; _triton_kernels, _triton_fingerprint, triton_kernel: the kernels
- backend: the registry (get_backend), the dispatching fingerprint and the kernel warm-up
- params: TrainableParams (a model's trainable weights as a flat buffer) and the Manifest
- objective, step, delta, mixed, graphs: the loss, the MeZO step, round deltas, bf16 compute copies,
  CUDA-graph forwards on bucket-padded batches
"""

from fedmezo.zo.backend import (
    Backend,
    ReferenceBackend,
    available_backends,
    compute_copy_backend,
    fingerprint,
    get_backend,
    warm_up,
)
from fedmezo.zo.delta import Contribution, RoundDelta, apply_round_delta, round_delta
from fedmezo.zo.fingerprint import FINGERPRINT_SPEC
from fedmezo.zo.objective import IGNORE_INDEX, Batch, causal_lm_loss, make_loss_fn
from fedmezo.zo.params import Manifest, Segment, TrainableParams
from fedmezo.zo.rng import RNG_SPEC, rademacher
from fedmezo.zo.seeds import derive_round_seeds, derive_seed, derive_shared_seed
from fedmezo.zo.step import StepResult, mezo_step

__all__ = [
    "FINGERPRINT_SPEC",
    "IGNORE_INDEX",
    "RNG_SPEC",
    "Backend",
    "Batch",
    "Contribution",
    "Manifest",
    "ReferenceBackend",
    "RoundDelta",
    "Segment",
    "StepResult",
    "TrainableParams",
    "apply_round_delta",
    "available_backends",
    "causal_lm_loss",
    "compute_copy_backend",
    "derive_round_seeds",
    "derive_seed",
    "derive_shared_seed",
    "fingerprint",
    "get_backend",
    "make_loss_fn",
    "mezo_step",
    "rademacher",
    "round_delta",
    "warm_up",
]
