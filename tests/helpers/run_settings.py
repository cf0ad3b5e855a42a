"""The training settings the protocol tests are written against.

The server's defaults are FZOO with P = 8 on the LoRA B factors (LoRA-FA), shared seeds and a cosine rate
(issue #13: the best measured). Tests of the wire, the store, security and faults build updates by hand
(one scalar per local step), compare per-client seed lists and exact learning rates, and load replicas of
every weight; they name the settings they assume instead of inheriting defaults chosen for learning.
The defaults themselves run end to end in tests/e2e/test_simulate_matches_federation.py.
"""

from __future__ import annotations

from fedmezo.fl.config import DEFAULTS_BEFORE_FZOO

# The estimator, scheme, schedule, frozen part and mode of the defaults before FZOO's; each test keeps
# its own rate and τ.
PROTOCOL_RUN: dict[str, object] = {
    k: DEFAULTS_BEFORE_FZOO[k]
    for k in ("estimator", "perturbations", "seed_scheme", "lr_schedule", "freeze", "mode")
}

PROTOCOL_RUN_FLAGS: tuple[str, ...] = tuple(
    f"--{name.replace('_', '-')}={value}" for name, value in PROTOCOL_RUN.items()
)
