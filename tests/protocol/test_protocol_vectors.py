"""docs/protocol.md's test vectors are what fedmezo's code computes, and the document covers the wire.

Each vector block of the document (`<!-- vector: name -->` then a fenced JSON block) is parsed and
compared with `reference_vectors.compute_vectors()`, which calls the real code: exactly, except the
`_approx` floats of forward passes, which are compared within a tolerance.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from reference_vectors import APPROX_TOLERANCE, compute_vectors

from fedmezo.v1 import common_pb2, federation_pb2

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
VECTOR_BLOCK = re.compile(r"<!-- vector: (\S+) -->\n```json\n(.*?)\n```", re.DOTALL)


def doc_vectors() -> dict[str, Any]:
    blocks = VECTOR_BLOCK.findall(DOC.read_text(encoding="utf-8"))
    names = [name for name, _ in blocks]
    assert len(names) == len(set(names)), f"a vector appears twice: {names}"
    return {name: json.loads(body) for name, body in blocks}


DOC_VECTORS = doc_vectors()


@pytest.fixture(scope="module")
def computed() -> dict[str, Any]:
    return dict(json.loads(json.dumps(compute_vectors())))  # tuples → lists, as the JSON has them


def _compare(documented: Any, actual: Any, where: str) -> None:
    if isinstance(documented, dict):
        assert isinstance(actual, dict) and documented.keys() == actual.keys(), where
        for key, value in documented.items():
            if key.endswith("_approx"):
                prefix = next(p for p in APPROX_TOLERANCE if key.startswith(p))
                assert math.isclose(value, actual[key], abs_tol=APPROX_TOLERANCE[prefix]), (
                    f"{where}.{key}: documented {value}, computed {actual[key]}"
                )
            else:
                _compare(value, actual[key], f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(documented) == len(actual), where
        for i, (d, a) in enumerate(zip(documented, actual)):
            _compare(d, a, f"{where}[{i}]")
    else:
        assert documented == actual, f"{where}: documented {documented!r}, computed {actual!r}"


def test_the_document_has_every_vector(computed: dict[str, Any]) -> None:
    assert sorted(DOC_VECTORS) == sorted(computed)


@pytest.mark.parametrize("name", sorted(DOC_VECTORS))
def test_vector_matches_the_code(name: str, computed: dict[str, Any]) -> None:
    _compare(DOC_VECTORS[name], computed[name], name)


def test_every_rpc_message_and_field_is_documented() -> None:
    """A specification an outsider can implement names every method, message field and enum value."""
    text = DOC.read_text(encoding="utf-8")
    service = federation_pb2.DESCRIPTOR.services_by_name["FederationService"]
    missing = [m.name for m in service.methods if f"`{m.name}`" not in text]
    messages = [*federation_pb2.DESCRIPTOR.message_types_by_name.values()]
    messages.append(common_pb2.DESCRIPTOR.message_types_by_name["RunConfig"])
    for message in messages:
        missing += [f"{message.name}.{f.name}" for f in message.fields if f.name not in text]
    for enum in [*federation_pb2.DESCRIPTOR.enum_types_by_name.values()]:
        missing += [
            v.name for v in enum.values[1:] if v.name not in text and v.name.split("_")[-1] not in text
        ]
    assert not missing, f"docs/protocol.md does not mention: {missing}"
