"""Server test fixtures: the tiny-random replica, loaded once per session and reset for every test.

The harness itself (running_server, FakeClient, ...) lives in tests/helpers/server_rpc.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedmezo.fl.replica import Replica


@pytest.fixture(scope="session")
def _tiny() -> tuple[Replica, torch.Tensor]:
    replica = Replica.load("tiny-random")
    return replica, replica.params.snapshot()


@pytest.fixture
def replica(_tiny: tuple[Replica, torch.Tensor]) -> Iterator[Replica]:
    """The server's tiny-random replica, reset to θ_0 for every test (one load per session)."""
    rep, snap = _tiny
    rep.params.restore(snap)
    rep.version = 0
    yield rep
    rep.params.restore(snap)
    rep.version = 0
