"""Schemathesis against the dashboard's own OpenAPI document, backed by a real fedmezo server on loopback
(the live run of conftest.py: three closed tiny-random rounds, round 4 open).

Every operation gets schema-driven requests through the ASGI app, valid ones (positive mode) and
deliberately invalid ones (negative mode: wrong types, out-of-range numbers, unknown values). Checked
on every response: never a 5xx, the status code, content type and headers are documented, the body
matches its documented schema, invalid input is refused with a 4xx and valid input is served.

Schemathesis's pytest integration (`schemathesis.pytest.from_fixture`) reads a private pytest
attribute that pytest 9 removed, so the operations are driven through its Python API instead: one
Hypothesis test per (operation, mode) from `APIOperation.as_strategy`.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fedmezo.dashboard.app import create_app

QUICK_EXAMPLES = 15  # per operation and mode in `make test`
LONG_EXAMPLES = 300  # per operation and mode under `make test-long`
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
# /api/events follows the run forever by default; a fuzzed request must end, so each one replays and
# closes (follow=false); its other parameters are generated as usual.
FIXED_QUERY = {"/api/events": {"follow": "false"}}


class _NoSource:
    """Enough of a StatusSource to build the app and read its OpenAPI document at collection time."""

    address = "unused"


def _operations() -> list[tuple[str, GenerationMode]]:
    """Every GET operation, valid input; plus invalid input where there is input (a parameter)."""
    document = create_app(_NoSource()).openapi()  # type: ignore[arg-type]
    cases = []
    for path, methods in sorted(document["paths"].items()):
        cases.append((path, GenerationMode.POSITIVE))
        if methods["get"].get("parameters"):
            cases.append((path, GenerationMode.NEGATIVE))
    return cases


OPERATIONS = _operations()


@pytest.fixture
def dashboard_schema(live_source: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(live_source, event_poll_s=0.01))


def _fuzz(schema: Any, path: str, mode: GenerationMode, examples: int) -> None:
    operation = schema[path]["GET"]
    strategy = operation.as_strategy(generation_mode=mode, query=FIXED_QUERY.get(path))

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=strategy)
    def one(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    one()


def test_every_documented_operation_is_fuzzed() -> None:
    assert [f"{path} {mode.value}" for path, mode in OPERATIONS] == [
        "/api/clients positive",
        "/api/clients negative",
        "/api/events positive",
        "/api/events negative",
        "/api/rounds positive",
        "/api/rounds negative",
        "/api/status positive",
        "/healthz positive",
        "/metrics positive",
    ]


@pytest.mark.parametrize(("path", "mode"), OPERATIONS, ids=[f"{p} {m.value}" for p, m in OPERATIONS])
def test_dashboard_api_conforms_to_its_schema(dashboard_schema: Any, path: str, mode: GenerationMode) -> None:
    _fuzz(dashboard_schema, path, mode, QUICK_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "mode"), OPERATIONS, ids=[f"{p} {m.value}" for p, m in OPERATIONS])
def test_dashboard_api_conforms_to_its_schema_long(
    dashboard_schema: Any, path: str, mode: GenerationMode
) -> None:
    _fuzz(dashboard_schema, path, mode, LONG_EXAMPLES)


# --- regressions: what the fuzzer found, pinned -------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("after=18446744073709551616", {}, 422),  # was a 500: a uint64 cannot hold it (ValueError)
        ("after=9223372036854775808", {}, 422),  # no stored cursor gets there
        ("", {"Last-Event-ID": "18446744073709551616"}, 422),  # the browser's reconnect header
        ("after=9223372036854775807", {}, 200),  # the last storable cursor: nothing after it
    ],
)
def test_event_cursors_beyond_what_the_server_stores_are_refused(
    live_source: Any, query: str, headers: dict[str, str], status: int
) -> None:
    client = TestClient(create_app(live_source, event_poll_s=0.01))
    response = client.get(f"/api/events?follow=false&{query}", headers=headers)
    assert response.status_code == status, response.text
