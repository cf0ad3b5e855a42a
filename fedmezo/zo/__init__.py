"""The zeroth-order engine: portable perturbations, the MeZO step, round deltas. Pure math, no I/O."""

from fedmezo.zo.backend import Backend, ReferenceBackend, available_backends, get_backend
from fedmezo.zo.delta import Contribution, RoundDelta, apply_round_delta, round_delta
from fedmezo.zo.fingerprint import FINGERPRINT_SPEC, fingerprint
from fedmezo.zo.objective import IGNORE_INDEX, Batch, causal_lm_loss, make_loss_fn
from fedmezo.zo.params import Manifest, Segment, TrainableParams
from fedmezo.zo.rng import RNG_SPEC, rademacher
from fedmezo.zo.seeds import derive_round_seeds, derive_seed
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
    "derive_round_seeds",
    "derive_seed",
    "fingerprint",
    "get_backend",
    "make_loss_fn",
    "mezo_step",
    "rademacher",
    "round_delta",
]
