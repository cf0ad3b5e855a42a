"""`weights = bf16-sr` as a run setting: on the wire, in the replica (deltas, checkpoints), refused where
it does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmezo.fl.config import RunConfig
from fedmezo.fl.errors import StoreError
from fedmezo.fl.replica import Replica
from fedmezo.fl.wire import run_config_to_pb, run_settings_from_pb
from fedmezo.trainable import prepare_trainable
from fedmezo.zo import RoundDelta
from fedmezo.zo.bf16_weights import Bf16Params
from fedmezo.zo.rounding import sr_apply_bf16
from fedmezo.zo.values import to_fp32


def bf16_replica() -> Replica:
    return Replica.for_run(
        RunConfig(model="tiny-random", mode="full", weights="bf16-sr", freeze="")
    )  # every weight


def test_the_run_config_carries_the_weight_format() -> None:
    pb = run_config_to_pb(RunConfig(mode="full", weights="bf16-sr"), "run", b"\0" * 32)
    assert pb.weights == "bf16-sr" and run_settings_from_pb(pb).weights == "bf16-sr"
    fp32 = run_config_to_pb(RunConfig(), "run", b"\0" * 32)
    assert fp32.weights == "" and run_settings_from_pb(fp32).weights == "fp32"  # as older servers send


def test_a_replica_applies_deltas_with_stochastic_rounding() -> None:
    replica = bf16_replica()
    assert isinstance(replica.params, Bf16Params) and replica.params.flat.dtype == torch.bfloat16
    model = replica.loaded_model()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert replica.weight_bytes() == 2 * replica.trainable_params  # tied once, 2 bytes each
    before = dict((n, t.clone()) for n, t in replica.params.tensors())
    pairs = [(3, to_fp32(1e-3)), (2**64 - 5, to_fp32(-4e-4))]  # a delta: ascending seeds, fp32 values
    replica.apply(RoundDelta(tuple(s for s, _ in pairs), tuple(c for _, c in pairs)))
    assert replica.version == 1
    for tensor_id, (name, tensor) in enumerate(replica.params.tensors()):
        expected = sr_apply_bf16(before[name], pairs, tensor_id)
        assert torch.equal(tensor.view(torch.int16), expected.view(torch.int16)), name


def test_checkpoints_round_trip_and_refuse_the_other_format(tmp_path: Path) -> None:
    replica = bf16_replica()
    replica.apply(RoundDelta((9,), (to_fp32(1e-2),)))
    record = replica.save_checkpoint(tmp_path)
    fresh = bf16_replica()
    assert fresh.fingerprint() != replica.fingerprint()
    fresh.load_checkpoint(record)
    assert fresh.fingerprint() == replica.fingerprint() and fresh.version == 1
    fp32 = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze=""))
    before = fp32.fingerprint()
    with pytest.raises(StoreError, match="does not fit this model"):
        fp32.load_checkpoint(record)  # bf16 values into an fp32 replica: refused, θ kept
    assert fp32.fingerprint() == before and fp32.version == 0
    assert fp32.manifest_sha256 != replica.manifest_sha256  # and they would never have joined together


def test_lora_adapters_stay_fp32() -> None:
    model = Replica.for_run(RunConfig(model="tiny-random", mode="full")).loaded_model()
    with pytest.raises(ValueError, match="need mode 'full'"):
        prepare_trainable(model, "lora", weights="bf16-sr")
    with pytest.raises(ValueError, match="unknown weight format"):
        prepare_trainable(model, "full", weights="fp8")
