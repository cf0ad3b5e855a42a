"""The wire contract: buf-style naming, stubs that match the .proto files, and a compact round."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FileDescriptor

from fedmezo.v1 import common_pb2, federation_pb2, status_pb2

ROOT = Path(__file__).resolve().parents[2]
FILES: list[FileDescriptor] = [common_pb2.DESCRIPTOR, federation_pb2.DESCRIPTOR, status_pb2.DESCRIPTOR]


def test_every_proto_has_stubs() -> None:
    protos = sorted(p.stem for p in (ROOT / "proto" / "fedmezo" / "v1").glob("*.proto"))
    assert protos == sorted(Path(f.name).stem for f in FILES)
    for f in FILES:
        assert f.package == "fedmezo.v1"


def test_buf_style_names() -> None:
    for f in FILES:
        for service in f.services_by_name.values():
            assert service.name.endswith("Service")
            for method in service.methods:
                assert method.input_type.name == f"{method.name}Request", method.full_name
                assert method.output_type.name == f"{method.name}Response", method.full_name
        for enum in f.enum_types_by_name.values():
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
            assert enum.values[0].number == 0 and enum.values[0].name == prefix + "UNSPECIFIED", enum.name
            assert all(v.name.startswith(prefix) for v in enum.values), enum.name
        for message in f.message_types_by_name.values():
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", message.name)
            assert all(re.fullmatch(r"[a-z][a-z0-9_]*", field.name) for field in message.fields)


def test_stubs_are_fresh(tmp_path: Path) -> None:
    """Regenerate into a scratch tree and compare with the imported stubs byte for byte."""
    grpc_tools = pytest.importorskip("grpc_tools")
    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(
        str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "fedmezo" / "v1").glob("*.proto")
    )
    outs = [f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}", *outs, *protos]
    subprocess.run(cmd, check=True)
    for generated in (tmp_path / "fedmezo" / "v1").iterdir():
        current = ROOT / "fedmezo" / "v1" / generated.name
        assert current.exists() and current.read_bytes() == generated.read_bytes(), (
            f"{current} is stale: run scripts/gen_proto.py"
        )
    for name in ("federation_pb2_grpc", "status_pb2_grpc"):
        importlib.import_module(f"fedmezo.v1.{name}")


def test_seeds_are_64_bit_and_scalars_fp32() -> None:
    from google.protobuf.descriptor import FieldDescriptor as F

    task = federation_pb2.Task.DESCRIPTOR.fields_by_name
    assert task["run_seed"].type == F.TYPE_FIXED64 and task["lr"].type == F.TYPE_FLOAT
    upd = federation_pb2.SubmitUpdateRequest.DESCRIPTOR.fields_by_name
    assert upd["projected_grads"].type == F.TYPE_FLOAT and upd["projected_grads"].is_packed
    assert common_pb2.RunConfig.DESCRIPTOR.fields_by_name["run_seed"].type == F.TYPE_FIXED64


def test_a_round_with_20_steps_fits_in_1_kib() -> None:
    """Upper bound of one client's messages in a 3-client, 20-step round (long ids, big numbers)."""
    steps, cid = 20, "client-0000000001"
    task = federation_pb2.GetTaskResponse(
        status=federation_pb2.TASK_STATUS_ASSIGNED,
        rounds_completed=999,
        task=federation_pb2.Task(round_id=1000, local_steps=steps, lr=1e-6, eps=1e-3, batch_size=16,
                                 run_seed=2**64 - 1, clip=10.0, deadline_s=600.0),
    )  # fmt: skip
    get = federation_pb2.GetTaskRequest(client_id=cid, known_version=999, wait_s=30.0)
    submit = federation_pb2.SubmitUpdateRequest(
        client_id=cid, round_id=1000, projected_grads=[1.5] * steps, losses=[2.5] * steps, step_time_s=0.5,
        peak_memory_bytes=80 << 30, device="cuda:0 (NVIDIA H100 80GB HBM3)", num_examples=100_000,
    )  # fmt: skip
    ack = federation_pb2.SubmitUpdateResponse(status=federation_pb2.UPDATE_STATUS_ACCEPTED, round_id=1000)
    delta = federation_pb2.StreamRoundDeltasResponse(
        round_id=1000,
        participants=[federation_pb2.Participant(client_id=cid, local_steps=steps)] * 3,
        coefficients=[1e-7] * (3 * steps),
        fingerprint=b"\xff" * 32,
    )
    stream = federation_pb2.StreamRoundDeltasRequest(client_id=cid, from_round=1000, follow=True)
    report = federation_pb2.ReportFingerprintRequest(
        client_id=cid, model_version=1000, fingerprint=b"\xff" * 32
    )
    reply = federation_pb2.ReportFingerprintResponse(in_sync=True, action=federation_pb2.SYNC_ACTION_NONE)
    total = sum(m.ByteSize() for m in (task, get, submit, ack, delta, stream, report, reply))
    assert total <= 1024, total
    # participants + coefficients beats (seed, coef) pairs: 4 vs 12 bytes per local step
    assert len(delta.coefficients) * 4 < len(delta.coefficients) * 12


def test_removed_fields_stay_reserved() -> None:
    """A removed field's number and name are reserved, so no later field reuses them with another meaning."""
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto()
    federation_pb2.StreamRoundDeltasResponse.DESCRIPTOR.CopyToProto(proto)
    assert "packed_delta" not in federation_pb2.StreamRoundDeltasResponse.DESCRIPTOR.fields_by_name
    assert "packed_delta" in proto.reserved_name
    assert any(r.start <= 4 < r.end for r in proto.reserved_range)
