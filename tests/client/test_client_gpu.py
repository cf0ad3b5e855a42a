"""Mixed hardware: a client training on CUDA stays bit-identical with a server replica on CPU."""

from __future__ import annotations

import pytest
import torch
from helpers.client_fakes import SEQ_LEN, ToyDataset, make_fake_server, toy_model

from fedmezo.client.daemon import Daemon, Outcome
from fedmezo.client.retry import RetryPolicy
from fedmezo.client.workload import Workload, resolve_device, training_loss
from fedmezo.fl.train import device_label
from fedmezo.zo import TrainableParams, get_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_auto_device_picks_cuda() -> None:
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("compile_", ["off", "auto"])
def test_cuda_client_matches_cpu_server_every_round(compile_: str) -> None:
    server = make_fake_server(rounds=3)  # CPU replica, numba backend
    device = torch.device("cuda")
    torch._dynamo.reset()

    def cuda_workload(_settings: object) -> Workload:
        model = toy_model().to(device)
        params = TrainableParams.from_model(model)
        loss_of = training_loss(model, device, SEQ_LEN, compile_)  # auto: CUDA-graph forwards
        return Workload(
            model, params, ToyDataset(), ToyDataset.num_examples, device_label(device), get_backend(device),
            loss_of=loss_of,
        )  # fmt: skip

    daemon = Daemon(server, "me", cuda_workload, RetryPolicy(sleep=lambda _s: False), progress_bar=False)
    assert daemon.run() is Outcome.FINISHED
    assert daemon.replica is not None and daemon.replica.params.device.type == "cuda"
    by_round = {d.round_id: d.fingerprint for d in server.deltas}
    assert [v for v, _ in server.fingerprints] == [1, 2, 3]
    assert all(by_round[v] == fp for v, fp in server.fingerprints)
    assert server.submitted[0].device.startswith("cuda:0 (")
    assert server.submitted[0].peak_memory_bytes > 0


def test_inference_peak_on_cuda_is_the_allocator_peak() -> None:
    from fedmezo.client.workload import measure_inference_peak

    device = torch.device("cuda")
    model = toy_model().to(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = measure_inference_peak(model, ToyDataset(), batch_size=2, device=device)
    assert weights <= peak < weights + (256 << 20)  # weights + one forward's activations, not the context
