"""Export the current global model from a state dir as a Hugging Face folder (`save_pretrained`).

Works on a stopped server (or a running one: SQLite WAL lets a reader in). The model is rebuilt the
way the server does at resume (latest checkpoint + replay of later deltas, every round verified by
its stored fingerprint), so the export is exactly the canonical model at the last closed round.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmezo.fl.config import freeze_parts
from fedmezo.fl.errors import StoreError
from fedmezo.fl.replica import Replica
from fedmezo.server.model_state import CHECKPOINTS_DIR, restore_replica
from fedmezo.server.sqlite_store import SqliteStore
from fedmezo.trainable import QUANTIZED_BASES

__all__ = ["ExportResult", "export_model"]

logger = logging.getLogger("fedmezo.server.export")

STATE_DB = "state.sqlite"


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    version: int
    fingerprint: bytes


def _on_bf16_base(replica: Replica, config: dict[str, Any]) -> Any:
    """The trained adapters on the unquantized (bf16) base: what users merge and load anywhere.

    Merging into an 8- or 4-bit base would round the adapters' small deltas away; QLoRA users merge into
    the original weights the same way. The adapters are θ, copied bit for bit (same names and order).
    """
    twin = Replica.load(
        config["model"], mode="lora", device=str(replica.params.device), rank=config["lora_rank"],
        alpha=config["lora_alpha"], seed=config["run_seed"], base_dtype="bf16",
    )  # fmt: skip
    if twin.params.names != replica.params.names:
        raise StoreError("the bf16 base's adapters do not match the quantized run's")
    twin.params.flat.copy_(replica.params.flat)
    return twin.loaded_model()


def export_model(
    state_dir: str | Path, out_dir: str | Path, *, device: str = "cpu", adapter_only: bool = False
) -> ExportResult:
    """The canonical model at the last closed round: merged into a plain model (LoRA adapters into the
    base, a quantized base's into its bf16 twin), or with `adapter_only` the PEFT adapter folder alone
    (a few MB; users apply it to their own copy of the base with `PeftModel.from_pretrained`)."""
    store = SqliteStore(Path(state_dir) / STATE_DB, read_only=True)
    try:
        raw = store.get_meta("config")
        if raw is None:
            raise StoreError(f"{state_dir} holds no run")
        config = json.loads(raw)
        if adapter_only and config["mode"] != "lora":
            raise StoreError(f"--adapter-only needs a LoRA run; this one trains the {config['mode']} model")
        replica = Replica.load(
            config["model"],
            mode=config["mode"],
            device=device,
            rank=config["lora_rank"],
            alpha=config["lora_alpha"],
            seed=config["run_seed"],
            base_dtype=config.get("base_dtype", "fp32"),  # runs from before base dtypes: fp32
            weights=config.get("weights", "fp32"),  # likewise: bf16-sr exports bf16 weights
            freeze=freeze_parts(config.get("freeze", "")),  # likewise: every weight trained
        )
        initial = store.get_meta("initial_fingerprint")
        if initial and replica.version == 0 and replica.fingerprint().hex() != initial:
            raise StoreError("the model loads differently than when the run started (fingerprint of θ_0)")
        restore_replica(replica, store, Path(state_dir) / CHECKPOINTS_DIR)
    finally:
        store.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model: Any = replica.loaded_model()
    base = config.get("base_dtype", "fp32")
    if adapter_only:
        model.save_pretrained(out)  # a PeftModel saves its adapters only: adapter_config + safetensors
    else:
        if config["mode"] == "lora" and base in QUANTIZED_BASES:
            model = _on_bf16_base(replica, config)
        if config["mode"] == "lora" and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(out)
    if replica.tokenizer is not None:
        replica.tokenizer.save_pretrained(out)
    fingerprint = replica.fingerprint()
    about = {"version": replica.version, "fingerprint": fingerprint.hex(), "model": config["model"]}
    about |= {"trained_on_base": base, "contents": "adapter" if adapter_only else "model"}
    about |= {"weights": config.get("weights", "fp32")}
    (out / "fedmezo.json").write_text(json.dumps(about) + "\n")
    logger.info("exported version %d (fingerprint %s) to %s", replica.version, fingerprint.hex()[:16], out)
    return ExportResult(out, replica.version, fingerprint)
