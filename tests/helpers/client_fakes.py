"""Helpers for the client tests: a toy causal LM, a seeded toy dataset, and a fake server link."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from safetensors.torch import save
from transformers import LlamaConfig, LlamaForCausalLM

from fedmezo.client.errors import Refused
from fedmezo.client.workload import Workload
from fedmezo.fl.records import (
    Activity,
    Checkpoint,
    DeltaRecord,
    JoinResult,
    RunSettings,
    RunState,
    Task,
    TaskResult,
    TaskStatus,
    Update,
)
from fedmezo.zo import (
    RNG_SPEC,
    Batch,
    Contribution,
    TrainableParams,
    apply_round_delta,
    derive_seed,
    round_delta,
)

VOCAB = 64
SEQ_LEN = 12


def toy_model(seed: int = 0) -> torch.nn.Module:
    """A 2-layer Llama small enough that a MeZO step takes milliseconds."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).float().eval()


class ToyDataset:
    """Batches chosen by the step's seed, like fedmezo.data.ClientDataset.batch_for_step."""

    num_examples = 10

    def batch_for_step(self, seed: int, batch_size: int) -> Batch:
        gen = torch.Generator().manual_seed(seed % 2**63)
        ids = torch.randint(0, VOCAB, (batch_size, SEQ_LEN), generator=gen)
        return Batch(ids, torch.ones_like(ids), ids.clone())


def toy_workload(seed: int = 0) -> Workload:
    model = toy_model(seed)
    params = TrainableParams.from_model(model)
    return Workload(model, params, ToyDataset(), ToyDataset.num_examples, "cpu")


def toy_settings(params: TrainableParams, *, rounds: int = 3, steps: int = 4) -> RunSettings:
    return RunSettings(
        run_id="run-1",
        model="toy",
        mode="full",
        run_seed=1234,
        rng_spec=RNG_SPEC,
        manifest_sha256=params.manifest().sha256(),
        total_rounds=rounds,
        local_steps=steps,
        batch_size=2,
        heartbeat_interval_s=3600.0,
        clients_per_round=2,
    )


@dataclass
class FakeServer:
    """A ~40-line in-memory server: rounds with this client plus a scripted peer ("peer" answers g=0.5)."""

    settings: RunSettings
    params: TrainableParams  # the server's canonical replica
    lr: float = 1e-3
    eps: float = 1e-3
    rounds_done: int = 0
    deltas: list[DeltaRecord] = field(default_factory=list)
    submitted: list[Update] = field(default_factory=list)
    fingerprints: list[tuple[int, bytes]] = field(default_factory=list)
    failures: dict[str, list[Exception]] = field(default_factory=dict)  # per method, raised in order
    calls: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    joins: list[dict[str, object]] = field(default_factory=list)  # the keyword arguments of each join
    bad_versions: set[int] = field(default_factory=set)  # versions whose next report is judged diverged

    def __post_init__(self) -> None:
        self.theta0 = bytes.fromhex(self.params.fingerprint())

    def fingerprint_at(self, version: int) -> bytes:
        return self.theta0 if version == 0 else self.deltas[version - 1].fingerprint

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failures.get(name):
            raise self.failures[name].pop(0)

    def get_run_config(self) -> RunSettings:
        self._call("get_run_config")
        return self.settings

    def join(self, **kwargs: object) -> JoinResult:
        self._call("join")
        self.joins.append(kwargs)
        ckpt = self.checkpoint
        finished = self.rounds_done >= self.settings.total_rounds
        return JoinResult(
            self.rounds_done,
            bytes.fromhex(self.params.fingerprint()),
            ckpt.round_id if ckpt else 0,
            len(ckpt.data) if ckpt else 0,
            RunState.FINISHED if finished else RunState.WAITING_FOR_CLIENTS,
            self.settings,
        )

    def heartbeat(self, *, model_version: int, activity: Activity, round_id: int = 0, step: int = 0) -> int:
        return self.rounds_done

    def get_task(
        self, *, known_version: int, wait_s: float, max_deltas: int = 0, fingerprint: bytes = b""
    ) -> TaskResult:
        self._call("get_task")
        in_sync = self._judge(known_version, fingerprint) if fingerprint else None
        missing = self.deltas[known_version:]
        deltas = tuple(missing) if len(missing) <= max_deltas else ()
        if self.rounds_done >= self.settings.total_rounds:
            return TaskResult(TaskStatus.RUN_FINISHED, self.rounds_done, None, deltas, in_sync)
        s = self.settings
        task = Task(self.rounds_done + 1, s.local_steps, self.lr, self.eps, s.batch_size, s.run_seed)
        return TaskResult(TaskStatus.ASSIGNED, self.rounds_done, task, deltas, in_sync)

    def _judge(self, version: int, fingerprint: bytes) -> bool:
        """Record a fingerprint report; in sync unless a test planted the version in `bad_versions`
        (judged diverged once: the client's resync then succeeds)."""
        self.fingerprints.append((version, fingerprint))
        if version in self.bad_versions:
            self.bad_versions.discard(version)
            return False
        return True

    def submit(self, update: Update, *, base_fingerprint: bytes = b"") -> None:
        self._call("submit")
        if base_fingerprint and not self._judge(update.round_id - 1, base_fingerprint):
            raise Refused("FAILED_PRECONDITION", "diverged", "trained from a wrong θ")
        if update.round_id != self.rounds_done + 1:
            raise Refused("FAILED_PRECONDITION", "round_closed", "late")
        self.submitted.append(update)
        self.close_round(update)

    def close_round(self, update: Update | None) -> None:
        """Aggregate this client's update (when given) with the peer's, apply, and store the delta."""
        s, r = self.settings, self.rounds_done + 1
        parts = {"peer": tuple([0.5] * s.local_steps)}
        if update is not None:
            parts["me"] = update.projected_grads
        contributions = [
            Contribution(c, 1.0, self.lr, [derive_seed(s.run_seed, r, c, t) for t in range(len(g))], g)
            for c, g in parts.items()
        ]
        delta = round_delta(contributions)
        apply_round_delta(self.params, delta)
        self.rounds_done = r
        participants = tuple(sorted((c, len(g)) for c, g in parts.items()))
        fingerprint = bytes.fromhex(self.params.fingerprint())
        self.deltas.append(DeltaRecord(r, participants, delta.coefficients, b"", fingerprint))

    def report_fingerprint(self, *, model_version: int, fingerprint: bytes) -> bool:
        self._call("report_fingerprint")
        return self._judge(model_version, fingerprint)

    def stream_deltas(self, *, from_round: int, follow: bool) -> Iterator[DeltaRecord]:
        self._call("stream_deltas")
        yield from self.deltas[from_round - 1 :]

    def download_checkpoint(self) -> Checkpoint:
        self._call("download_checkpoint")
        if self.checkpoint is None:
            raise Refused("NOT_FOUND", "no_checkpoint", "")
        return self.checkpoint

    def save_checkpoint(self) -> None:
        data = save({"flat": self.params.flat.clone()})
        digest = hashlib.sha256(data).digest()
        fingerprint = bytes.fromhex(self.params.fingerprint())
        self.checkpoint = Checkpoint(self.rounds_done, data, digest, fingerprint)

    def close(self) -> None:
        pass


def make_fake_server(rounds: int = 3, steps: int = 4) -> FakeServer:
    params = toy_workload().params
    return FakeServer(toy_settings(params, rounds=rounds, steps=steps), params)
