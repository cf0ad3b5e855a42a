"""CUDA-graph forwards: bucket lengths stay few and always leave a padding column, padding does not
change the objective, and (on a GPU) the compiled loss and θ after N steps are bit-identical to eager."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from fedmezo.data import ClientDataset, generate_demo_dataset
from fedmezo.fl.records import Task
from fedmezo.fl.train import train_task
from fedmezo.models import load_model
from fedmezo.trainable import prepare_trainable
from fedmezo.zo import IGNORE_INDEX, Batch, causal_lm_loss, get_backend
from fedmezo.zo.graphs import MAX_BUCKETS, BucketedLoss, bucket_length, pad_batch
from fedmezo.zo.mixed import ComputeCopy

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MAX_LENGTH = 48


@pytest.mark.parametrize("max_length", [8, 9, 48, 63, 64, 65, 127, 256, 511, 512, 1000, 4096])
def test_buckets_are_few_aligned_and_leave_a_padding_column(max_length: int) -> None:
    buckets = [bucket_length(n, max_length) for n in range(1, max_length + 1)]
    assert len(set(buckets)) <= MAX_BUCKETS
    assert all(b % 8 == 0 and b >= n + 1 for n, b in enumerate(buckets, start=1))
    assert buckets == sorted(buckets)  # a longer batch never gets a shorter bucket
    assert buckets[-1] - (max_length + 1) < max_length // MAX_BUCKETS + 8  # the waste stays bounded


def test_bucket_rejects_lengths_outside_the_run() -> None:
    with pytest.raises(ValueError, match="longer than max_length"):
        bucket_length(65, 64)
    with pytest.raises(ValueError, match="positive"):
        bucket_length(0, 64)


@pytest.fixture
def dynamo() -> Iterator[Any]:
    """A fresh dynamo cache per test (its recompile limit is per process) and its counters."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def _graphs_were_used(stats: Any) -> bool:
    """Graphs were traced and none was skipped by the CUDA-graph backend (a silent eager fallback)."""
    return stats["stats"]["unique_graphs"] >= 1 and not stats["inductor"]["cudagraph_skips"]


def _workload(device: str, dtype: str = "fp32") -> tuple[torch.nn.Module, object, ClientDataset]:
    loaded = load_model("tiny-random", device=torch.device(device))
    model, params = prepare_trainable(loaded.model, "full", run_seed=0)
    if dtype == "bf16":
        ComputeCopy(model, params)
    train, _ = generate_demo_dataset(seed=0)
    return model, params, ClientDataset.from_examples(loaded.tokenizer, train[:40], MAX_LENGTH)


def _batches(dataset: ClientDataset, count: int) -> list[Batch]:
    return [dataset.batch_for_step(seed, 3) for seed in range(count)]


def test_padding_is_masked_and_leaves_the_loss_unchanged() -> None:
    model, _params, dataset = _workload("cpu")
    loss = BucketedLoss(model, MAX_LENGTH, compiled=False)
    for batch in _batches(dataset, 4):
        padded = loss.pad(batch)
        width = batch.input_ids.shape[1]
        assert padded.input_ids.shape[1] == bucket_length(width, MAX_LENGTH) > width
        assert torch.equal(padded.input_ids[:, :width], batch.input_ids)
        assert not padded.attention_mask[:, width:].any()
        assert (padded.labels[:, width:] == IGNORE_INDEX).all()
        assert loss(batch) == pytest.approx(causal_lm_loss(model, batch), rel=1e-5)  # the same quantity
        assert loss(batch) == causal_lm_loss(model, padded)  # eager bucketed loss: exactly the plain one
    assert pad_batch(padded, padded.input_ids.shape[1]) is padded
    with pytest.raises(ValueError, match="cannot pad"):
        pad_batch(padded, 2)


def test_traced_loss_has_the_eager_bits_on_cpu(dynamo: Any) -> None:
    """On CPU no graph is recorded, but dynamo still traces transformers' forward into aten ops (the
    path whose mask handling differs from eager's): its losses must be the eager ones, bit for bit."""
    model, _params, dataset = _workload("cpu")
    eager = BucketedLoss(model, MAX_LENGTH, compiled=False)
    traced = BucketedLoss(model, MAX_LENGTH, compiled=True)
    batches = _batches(dataset, 6)
    assert len({b.input_ids.shape[1] for b in batches}) >= 2
    assert [traced(b) for b in batches] == [eager(b) for b in batches]
    assert dynamo["stats"]["unique_graphs"] >= 2  # really traced, once per bucket


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compiled_loss_is_bit_identical_to_eager_and_reads_live_weights(dtype: str, dynamo: Any) -> None:
    model, params, dataset = _workload("cuda", dtype)
    eager = BucketedLoss(model, MAX_LENGTH, compiled=False)
    graphed = BucketedLoss(model, MAX_LENGTH, compiled=True)
    batches = [b.to("cuda") for b in _batches(dataset, 12)]
    assert len({bucket_length(b.input_ids.shape[1], MAX_LENGTH) for b in batches}) >= 2  # several graphs
    for round_ in range(3):  # warm-up, record, replays
        for batch in batches:
            assert graphed(batch) == eager(batch), round_
    flat = params.compute.copy if dtype == "bf16" else params.flat  # type: ignore[attr-defined]
    flat.mul_(1.01)  # the graphs read the weights where they live: an in-place change is seen
    assert all(graphed(batch) == eager(batch) for batch in batches)
    assert _graphs_were_used(dynamo), dict(dynamo)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("dtype", "estimator", "perturbations"), [("fp32", "mezo", 1), ("bf16", "fzoo", 4)])
def test_theta_after_steps_is_bit_identical_with_and_without_compile(
    dtype: str, estimator: str, perturbations: int, dynamo: Any
) -> None:
    task = Task(
        round_id=1, local_steps=6, lr=1e-3, eps=1e-3, batch_size=3, run_seed=5,
        estimator=estimator, perturbations=perturbations,
    )  # fmt: skip
    outcome = {}
    for compiled in (False, True):
        model, params, dataset = _workload("cuda", dtype)
        local: list[str] = []
        result = train_task(
            model, params, dataset, task, "c1", backend=get_backend(params.device), progress=False,  # type: ignore[attr-defined]
            loss_of=BucketedLoss(model, MAX_LENGTH, compiled=compiled),
            on_trained=lambda p, local=local: local.append(p.fingerprint()),
        )  # fmt: skip
        outcome[compiled] = (local[0], result.projected_grads, result.losses)
    assert outcome[True] == outcome[False]
    assert _graphs_were_used(dynamo), dict(dynamo)
