"""The server's replica applies a many-seed round delta in seed batches: bit-identical to one call."""

from __future__ import annotations

import numpy as np
import torch

from fedmezo.fl.replica import Replica
from fedmezo.zo import RoundDelta, TrainableParams, apply_round_delta
from fedmezo.zo.cpu_kernel import SEED_BATCH as CPU_SEED_BATCH


def test_batched_apply_equals_one_fused_call(replica: Replica) -> None:
    rng = np.random.default_rng(3)
    n = CPU_SEED_BATCH * 2 + CPU_SEED_BATCH // 2  # two full batches and a partial one
    seeds = tuple(sorted({int(s) for s in rng.integers(0, 2**64, size=n, dtype=np.uint64)}))
    coefficients = tuple(float(c) for c in (rng.standard_normal(len(seeds)) * 1e-3).astype(np.float32))
    delta = RoundDelta(seeds, coefficients)
    reference = TrainableParams(replica.params.flat.clone(), replica.params.names, replica.params.shapes)
    apply_round_delta(reference, delta)  # all seeds in one kernel call

    replica.apply(delta)

    assert replica.version == 1
    assert torch.equal(replica.params.flat, reference.flat)
    assert replica.params.fingerprint() == reference.fingerprint()
