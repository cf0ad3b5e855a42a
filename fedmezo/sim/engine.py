"""`Simulation`: N clients and the server in one process, round by round, for research sweeps.

No gRPC, no SQLite, no daemons, but everything that decides the numbers is the production code:
round planning (`plan_round`: sampling and personalized learning rates), local training (`train_task`),
`close_round` (aggregation), the seed-scalar apply (`Replica.apply`) and evaluation (`Evaluator`), all
from `fedmezo.fl`, the code the server and the daemons run. A seed-scalar simulation therefore ends
on the fingerprint a real federation with the same data and config ends on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tqdm.auto import tqdm

from fedmezo.data import (
    ClientDataset,
    DataError,
    Example,
    Scheme,
    generate_demo_dataset,
    partition,
    read_jsonl,
)
from fedmezo.fl.bounds import Scales
from fedmezo.fl.config import RunConfig
from fedmezo.fl.errors import ConfigError
from fedmezo.fl.evaluation import EVAL_LOSS, EXACT_MATCH, Evaluator
from fedmezo.fl.records import TaskRecord
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import History, plan_round, remember
from fedmezo.sim.config import DEMO_DATA, SimOptions
from fedmezo.sim.methods import METHOD_CLASSES, finite_mean
from fedmezo.sim.resume import Progress, identity, load_progress, save_progress
from fedmezo.zo import Backend, Batch, get_backend
from fedmezo.zo.weights import graph_safe

if TYPE_CHECKING:
    from fedmezo.sim.ray_pool import RayClientPool

__all__ = ["RoundResult", "SimResult", "Simulation", "client_data", "write_jsonl_rounds"]

logger = logging.getLogger("fedmezo.sim")


@dataclass(frozen=True)
class RoundResult:
    """One round as the experiments plot it; round 0 is the initial model (evaluation only)."""

    round_id: int
    selected: tuple[str, ...] = ()
    lrs: dict[str, float] = field(default_factory=dict)
    train_loss: float = math.nan  # mean over clients of their mean local training loss
    client_seconds: dict[str, float] = field(default_factory=dict)
    forward_passes: dict[str, int] = field(default_factory=dict)  # per client (a backward counts as 2)
    server_seconds: float = 0.0
    round_seconds: float = 0.0  # federated wall-clock: the slowest client plus the server
    bytes_up: int = 0  # summed over the round's clients
    bytes_down: int = 0
    peak_memory_bytes: int = 0  # the largest client peak of the round
    eval_loss: float | None = None
    exact_match: float | None = None
    fingerprint: str = ""
    bounded: tuple[str, ...] = ()  # clients the poisoning bounds touched (docs/protocol.md §11.2)
    rejected: tuple[str, ...] = ()  # clients whose update the outlier rule rejected


@dataclass
class SimResult:
    method: str
    config: dict[str, object]
    options: dict[str, object]
    trainable_params: int
    clients: dict[str, int]  # client id → examples
    rounds: list[RoundResult] = field(default_factory=list)
    wall_seconds: float = 0.0  # this process, evaluations included

    def eval_losses(self) -> list[tuple[int, float]]:
        return [(r.round_id, r.eval_loss) for r in self.rounds if r.eval_loss is not None]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def client_data(options: SimOptions, config: RunConfig) -> tuple[dict[str, list[Example]], list[Example]]:
    """(client id → training examples, held-out examples) from the options.

    `data` is 'demo' (the built-in dataset, partitioned; its eval split is the default held-out set),
    a JSONL file (partitioned), or a directory of `<client id>.jsonl` files used as they are (the same
    files real daemons would get).
    """
    held_out: list[Example] = []
    try:
        if options.data == DEMO_DATA:
            train, held_out = generate_demo_dataset(seed=0)
        elif Path(options.data).is_dir():
            files = sorted(Path(options.data).glob("*.jsonl"))
            if not files:
                raise ConfigError(f"data directory {options.data} holds no *.jsonl files")
            return {f.stem: read_jsonl(f) for f in files}, _held_out(config, held_out)
        else:
            train = read_jsonl(options.data)
        parts = partition(
            train,
            options.num_clients,
            cast(Scheme, options.partition),
            alpha=options.dirichlet_alpha,
            seed=config.run_seed,
        )
    except (DataError, OSError) as exc:
        raise ConfigError(f"data {options.data}: {exc}") from exc
    width = len(str(options.num_clients))
    clients = {f"client-{i + 1:0{width}d}": part for i, part in enumerate(parts)}
    return clients, _held_out(config, held_out)


def _held_out(config: RunConfig, default: list[Example]) -> list[Example]:
    if config.eval_data:
        try:
            return read_jsonl(config.eval_data)
        except (DataError, OSError) as exc:
            raise ConfigError(f"eval_data {config.eval_data}: {exc}") from exc
    return default


class Simulation:
    """Holds the run: one replica (server and clients take turns on it), the clients' data, history."""

    def __init__(self, config: RunConfig, options: SimOptions, *, exact_match: bool = True) -> None:
        self.config = config
        self.options = options
        self.replica = Replica.for_run(config, options.device)
        self.backend: Backend | None = get_backend(self.replica.params.device)
        self.loss_of: Callable[[Batch], float] | None = None  # CPU: the eager loss on unpadded batches
        if self.replica.params.device.type == "cuda":  # as a GPU client's daemon: bucketed, graphs unless off
            from fedmezo.zo.graphs import BucketedLoss

            model = self.replica.loaded_model()
            # bf16-sr binds perturbed weights per forward: CUDA graphs would replay captured ones
            compiled = options.compile != "off" and graph_safe(self.replica.params)
            self.loss_of = BucketedLoss(model, config.max_length, compiled=compiled)
        examples, held_out = client_data(options, config)
        self.pool: RayClientPool | None = None  # set by run() when options.ray: the clients on Ray actors
        self._examples = examples
        self.datasets: Mapping[str, ClientDataset] = {
            c: ClientDataset.from_examples(self.replica.tokenizer, ex, config.max_length)
            for c, ex in examples.items()
        }
        self.evaluator = (
            Evaluator(
                examples=tuple(held_out[: config.eval_limit]),
                every=config.eval_every,
                max_length=config.max_length,
                max_new_tokens=config.eval_max_new_tokens if exact_match else 0,
            )
            if held_out
            else None
        )
        self.method = METHOD_CLASSES[options.method]()
        self.history: History = {}
        self.scales = Scales()

    def _tasks(self, round_id: int) -> dict[str, TaskRecord]:
        """Round r's selection and personalized learning rates, exactly as the coordinator opens it."""
        return plan_round(self.config, round_id, sorted(self.datasets), self.history)

    def _evaluate(self, version: int) -> tuple[float | None, float | None]:
        if self.evaluator is None or not self.evaluator.due(version, self.config.rounds):
            return None, None
        metrics = self.evaluator.evaluate(self.replica).metrics
        em = metrics[EXACT_MATCH]
        return metrics[EVAL_LOSS], (None if math.isnan(em) else em)

    def run(
        self, *, progress: bool = True, on_round: Callable[[RoundResult], None] | None = None
    ) -> SimResult:
        """All rounds; with `resume_dir`, after the rounds stored there, saving progress after each."""
        start = time.perf_counter()
        directory = Path(self.options.resume_dir) if self.options.resume_dir else None
        ident = identity(asdict(self.config), asdict(self.options), self.replica) if directory else {}
        stored = load_progress(directory, self.replica, ident) if directory else None
        if stored is not None:
            logger.info(
                "resuming from %s after round %d of %d", directory, stored.last_round, self.config.rounds
            )
        if self.options.ray and self.pool is None:
            from fedmezo.sim.ray_pool import RayClientPool

            self.pool = RayClientPool(
                self.config, self.options, self._examples, self.replica.fingerprint(),
                theta=(self.replica.params.flat, self.replica.version) if self.replica.version else None,
            )  # fmt: skip
        try:
            return self._run(
                start, stored, progress=progress, on_round=on_round, save=_saver(directory, ident)
            )
        finally:
            if self.pool is not None:
                self.pool.close()
                self.pool = None

    def _run(
        self,
        start: float,
        stored: Progress | None,
        *,
        progress: bool,
        on_round: Callable[[RoundResult], None] | None,
        save: Callable[[Simulation, SimResult, float], None],
    ) -> SimResult:
        result = SimResult(
            method=self.options.method,
            config=asdict(self.config),
            options=asdict(self.options),
            trainable_params=self.replica.trainable_params,
            clients={c: d.num_examples for c, d in self.datasets.items()},
        )
        earlier = 0.0  # compute seconds of the stored rounds' processes
        if stored is None:
            loss, em = self._evaluate(0)
            initial = RoundResult(
                0, eval_loss=loss, exact_match=em, fingerprint=self.replica.fingerprint().hex()
            )
            result.rounds.append(initial)
            save(self, result, time.perf_counter() - start)
        else:
            self.history, self.scales, earlier = stored.history, stored.scales, stored.wall_seconds
            result.rounds.extend(_round_of(r) for r in stored.rounds)
        if on_round is not None:
            for record in result.rounds:
                on_round(record)
        first = result.rounds[-1].round_id + 1
        bar = tqdm(
            range(first, self.config.rounds + 1),
            desc=f"simulate {self.options.method}",
            unit="round",
            initial=first - 1,
            total=self.config.rounds,
            disable=None if progress else True,
        )
        for round_id in bar:
            tasks = self._tasks(round_id)
            outcome = self.method.run_round(self, round_id, tasks)
            remember(self.history, round_id, outcome.stats)
            loss, em = self._evaluate(round_id)
            clients = outcome.clients
            record = RoundResult(
                round_id=round_id,
                selected=tuple(tasks),
                lrs={c: t.lr for c, t in tasks.items()},
                train_loss=finite_mean(c.mean_loss for c in clients),
                client_seconds={c.client_id: c.seconds for c in clients},
                forward_passes={c.client_id: c.forward_passes for c in clients},
                server_seconds=outcome.server_seconds,
                round_seconds=max((c.seconds for c in clients), default=0.0) + outcome.server_seconds,
                bytes_up=sum(c.bytes_up for c in clients),
                bytes_down=sum(c.bytes_down for c in clients),
                peak_memory_bytes=max((c.peak_memory_bytes for c in clients), default=0),
                eval_loss=loss,
                exact_match=em,
                fingerprint=outcome.fingerprint.hex(),
                bounded=outcome.bounded,
                rejected=outcome.rejected,
            )
            result.rounds.append(record)
            save(self, result, earlier + time.perf_counter() - start)
            bar.set_postfix(train_loss=f"{record.train_loss:.4f}", eval_loss=_fmt(loss))
            if on_round is not None:
                on_round(record)
        result.wall_seconds = earlier + time.perf_counter() - start
        return result


def _round_of(data: Mapping[str, Any]) -> RoundResult:
    """A stored round's record (JSON gives lists where the record holds tuples)."""
    fields = dict(data)
    for name in ("selected", "bounded", "rejected"):
        fields[name] = tuple(fields[name])
    return RoundResult(**fields)


def _saver(
    directory: Path | None, ident: Mapping[str, Any]
) -> Callable[[Simulation, SimResult, float], None]:
    """After each round: nothing, or the progress into `directory` (resume.py)."""

    def save(sim: Simulation, result: SimResult, seconds: float) -> None:
        if directory is not None:
            rounds = [asdict(r) for r in result.rounds]
            save_progress(directory, sim.replica, ident, Progress(rounds, sim.history, sim.scales, seconds))

    return save


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_jsonl_rounds(path: str | Path, result: SimResult) -> None:
    """One JSON object per round (what `--output` asks for), plus a header line with the run."""
    with open(path, "w") as out:
        header = {k: v for k, v in result.to_json().items() if k != "rounds"}
        out.write(json.dumps({"run": header}) + "\n")
        for r in result.rounds:
            out.write(json.dumps(asdict(r)) + "\n")
