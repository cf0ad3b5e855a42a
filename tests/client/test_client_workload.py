"""What a client builds from the run settings: the server's max length wins (the local flag is only a
fallback for older servers), and the inference baseline is measured once, right after loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.client_fakes import ToyDataset, toy_model

from fedmezo.client.workload import build_workload, measure_inference_peak
from fedmezo.data import generate_demo_dataset, write_jsonl
from fedmezo.fl.records import RunSettings
from fedmezo.memory import PeakMemory
from fedmezo.zo import RNG_SPEC

MIB = 1 << 20


def _settings(max_length: int | None) -> RunSettings:
    return RunSettings(
        run_id="r", model="tiny-random", mode="full", run_seed=1, rng_spec=RNG_SPEC, manifest_sha256="",
        total_rounds=1, local_steps=2, batch_size=2, max_length=max_length,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, _ = generate_demo_dataset(seed=0)
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_jsonl(path, train[:6])
    return path


@pytest.mark.parametrize(("server_says", "flag", "used"), [(24, 200, 24), (None, 40, 40)])
def test_max_length_from_the_server_wins_over_the_flag(
    data_file: Path, server_says: int | None, flag: int, used: int
) -> None:
    work = build_workload(
        _settings(server_says), data=str(data_file), device="cpu", model_name=None, max_length=flag
    )
    lengths = [len(work.dataset[i].input_ids) for i in range(work.num_examples)]  # type: ignore[index]
    assert max(lengths) == used  # tiny-random's byte tokenizer: every demo example is longer than this
    assert work.inference_peak_memory_bytes > 10 * MIB  # measured once, the process RSS on CPU


def test_inference_peak_of_one_forward_on_cpu() -> None:
    model = toy_model()
    peak = measure_inference_peak(model, ToyDataset(), batch_size=2, device=torch.device("cpu"))
    assert peak > 10 * MIB


def test_cpu_peak_resets_to_the_current_rss() -> None:
    peak = PeakMemory("cpu")
    peak.reset()
    blob = torch.ones(64 * MIB // 4)  # 64 MiB resident for a moment
    blob.add_(1.0)
    del blob
    high = peak.peak_bytes()
    peak.reset()
    if not peak.resettable:
        pytest.skip("/proc/self/clear_refs is not writable here: the peak is the lifetime peak")
    assert high - peak.peak_bytes() >= 32 * MIB


def test_cpu_training_keeps_the_plain_eager_loss(data_file: Path) -> None:
    from fedmezo.client.errors import ConfigError
    from fedmezo.client.workload import training_loss

    work = build_workload(
        _settings(24), data=str(data_file), device="cpu", model_name=None, max_length=24, compile="auto"
    )
    assert work.loss_of is None  # auto means off on CPU: the CPU path is unchanged
    with pytest.raises(ConfigError, match="needs CUDA"):
        training_loss(work.model, torch.device("cpu"), 24, "on")


def test_the_servers_weight_format_is_what_the_client_trains(data_file: Path) -> None:
    import dataclasses

    from fedmezo.client.errors import ConfigError
    from fedmezo.zo.bf16_weights import Bf16Params

    bf16 = dataclasses.replace(_settings(32), weights="bf16-sr")
    work = build_workload(bf16, data=str(data_file), device="cpu", model_name=None, max_length=32)
    assert isinstance(work.params, Bf16Params)
    assert '"weights":"bf16-sr"' in work.params.manifest().to_json()  # what Join compares
    # bf16-sr forwards are bf16 already: an explicit compute copy request does not wrap them again
    again = build_workload(bf16, data=str(data_file), device="cpu", model_name=None, max_length=32,
                           compute_dtype="bf16")  # fmt: skip
    assert isinstance(again.params, Bf16Params)
    unknown = dataclasses.replace(bf16, weights="fp8-sr")  # a newer server's format
    with pytest.raises(ConfigError, match=r"fp8-sr.*upgrade fedmezo"):
        build_workload(unknown, data=str(data_file), device="cpu", model_name=None, max_length=32)


def test_a_client_freezes_what_the_server_says_and_lands_on_its_manifest(data_file: Path) -> None:
    from dataclasses import replace

    from fedmezo.fl.config import RunConfig
    from fedmezo.fl.replica import Replica

    server = Replica.for_run(RunConfig(model="tiny-random", mode="full", freeze="embed_tokens"))
    work = build_workload(
        replace(_settings(None), freeze="embed_tokens"), data=str(data_file), device="cpu", model_name=None,
        max_length=32,
    )  # fmt: skip
    assert work.params.manifest().sha256() == server.manifest_sha256.hex()
    assert work.params.numel == server.trainable_params
