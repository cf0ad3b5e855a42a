"""The replica: a model whose trainable weights are the canonical θ at `version` (rounds applied).

One class for the server, every client and the simulation. θ only ever changes by `apply` of a round
delta (or by loading a verified checkpoint), so replicas that applied the same deltas hold the same
bytes, which their fingerprints prove. A checkpoint is a safetensors file holding the trainable flat
fp32 buffer (tensor "flat") with string metadata (at least the version and the fingerprint).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from fedmezo.fl.errors import StoreError, SyncFailed
from fedmezo.fl.records import CheckpointRecord
from fedmezo.zo import Backend, RoundDelta
from fedmezo.zo.weights import Weights, add_pairs, warm_up_weights

if TYPE_CHECKING:
    from fedmezo.fl.config import RunConfig

__all__ = ["CHECKPOINT_TENSOR", "Replica", "file_sha256"]

CHECKPOINT_TENSOR = "flat"
_HASH_CHUNK_BYTES = 1 << 20


def file_sha256(path: str | Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.digest()


def _reason(exc: BaseException) -> str:
    """The OS's words for a failed file operation ("No space left on device"), else the message."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


@dataclass
class Replica:
    """θ at `version`; `model`/`tokenizer` are there when the replica was loaded from a model name."""

    params: Weights  # fp32 θ (TrainableParams) or bf16 θ with stochastic rounding (Bf16Params)
    version: int = 0
    backend: Backend | None = None
    model: torch.nn.Module | None = None
    tokenizer: Any = None

    @classmethod
    def load(cls, model_name: str, *, mode: str = "full", device: str = "cpu", **lora: Any) -> Replica:
        """Load θ_0 of a model exactly as every participant does."""
        from fedmezo.models import load_model  # transformers: only when a model is really loaded
        from fedmezo.trainable import base_load_options, prepare_trainable

        base = str(lora.get("base_dtype", "fp32"))
        weights = str(lora.get("weights", "fp32"))
        dtype, quantize = base_load_options(base, mode)
        loaded = load_model(model_name, device=device, dtype=dtype, quantize=quantize)
        model, params = prepare_trainable(
            loaded.model,
            "lora" if mode == "lora" else "full",
            lora_rank=lora.get("rank", 8),
            lora_alpha=lora.get("alpha", 16.0),
            run_seed=lora.get("seed", 0),
            base_dtype=base,
            weights=weights,
            freeze=tuple(lora.get("freeze", ())),
        )
        return cls(params, model=model, tokenizer=loaded.tokenizer)

    @classmethod
    def for_run(cls, config: RunConfig, device: str | None = None) -> Replica:
        """θ_0 of the run `config` defines (its model, mode, LoRA shape and seed) on `device`."""
        from fedmezo.fl.config import freeze_parts

        return cls.load(
            config.model,
            mode=config.mode,
            device=device or str(getattr(config, "device", "cpu")),
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            seed=config.run_seed,
            base_dtype=getattr(config, "base_dtype", "fp32"),
            weights=getattr(config, "weights", "fp32"),
            freeze=freeze_parts(getattr(config, "freeze", "")),
        )

    def loaded_model(self) -> torch.nn.Module:
        """The model around θ (a replica made from bare parameters has none: it only syncs)."""
        if self.model is None:
            raise ValueError("this replica holds only parameters; load it with Replica.load for a model")
        return self.model

    # --- identity ---
    @property
    def manifest_sha256(self) -> bytes:
        return bytes.fromhex(self.params.manifest().sha256())

    def fingerprint(self) -> bytes:
        return bytes.fromhex(self.params.fingerprint())

    @property
    def trainable_params(self) -> int:
        """Elements of the trainable flat buffer (unique tensors, tied once; LoRA: the adapters)."""
        return int(self.params.numel)

    def weight_bytes(self) -> int:
        """Bytes of every model parameter as held; tied parameters counted once (θ alone without a model)."""
        if self.model is None:
            return int(self.params.numel) * self.params.flat.element_size()
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def warm_up(self) -> None:
        """Load the delta, fingerprint (and bf16-sr) kernels now, not during round 1's close."""
        warm_up_weights(self.params, self.backend)

    # --- the only ways θ changes ---
    def apply(self, delta: RoundDelta) -> None:
        """θ_{v+1} = θ_v + Σ_s c_s z(s); the version moves even for an empty (aborted-round) delta."""
        add_pairs(self.params, delta.seeds, delta.coefficients, self.backend)
        self.version += 1

    def apply_round(self, round_id: int, delta: RoundDelta, fingerprint: bytes = b"") -> None:
        """Apply round `round_id`'s delta, which must be the next one; check the fingerprint if given."""
        if round_id != self.version + 1:
            raise SyncFailed(f"got round {round_id}'s delta at model version {self.version}")
        self.apply(delta)
        if fingerprint and self.fingerprint() != fingerprint:
            raise SyncFailed(f"fingerprint differs from the server's after round {round_id}")

    def load_flat(self, flat: torch.Tensor, version: int, fingerprint: bytes = b"") -> None:
        """Become `version` with θ = `flat`; with a fingerprint, refuse (and keep θ) when it differs."""
        own = self.params.flat
        if flat.dtype != own.dtype or flat.numel() != own.numel():
            raise SyncFailed(
                f"checkpoint holds {flat.numel()} {flat.dtype} values, the model {own.numel()} {own.dtype}"
            )
        snapshot = self.params.snapshot() if fingerprint else None
        self.params.restore(flat.reshape(-1).contiguous())
        if fingerprint and self.fingerprint() != fingerprint:
            assert snapshot is not None
            self.params.restore(snapshot)
            raise SyncFailed(f"checkpoint of version {version} does not match its fingerprint")
        self.version = version

    # --- checkpoints ---
    def write_checkpoint(self, path: Path, metadata: Mapping[str, str] | None = None) -> CheckpointRecord:
        """Write θ atomically (tmp, fsync, rename) with the version and fingerprint in the metadata.

        A failed write (full disk, read-only dir) removes its partial file and raises StoreError."""
        tmp = path.with_suffix(".tmp")
        fingerprint = self.fingerprint()
        meta = {**(metadata or {}), "version": str(self.version), "fingerprint": fingerprint.hex()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            flat = self.params.flat.detach().cpu().contiguous()
            save_file({CHECKPOINT_TENSOR: flat}, str(tmp), metadata=meta)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            return CheckpointRecord(
                self.version, str(path), file_sha256(path), path.stat().st_size, fingerprint
            )
        except (OSError, SafetensorError) as exc:
            with contextlib.suppress(OSError):  # the dir itself may be what failed
                tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write checkpoint {path}: {_reason(exc)}") from exc

    def save_checkpoint(self, directory: str | Path) -> CheckpointRecord:
        """The server's numbered checkpoint of this version in `directory`."""
        return self.write_checkpoint(Path(directory) / f"round-{self.version:06d}.safetensors")

    def load_checkpoint(self, record: CheckpointRecord) -> None:
        """Return to a stored checkpoint, refusing a file whose hash or fingerprint does not match."""
        try:
            digest = file_sha256(record.path)
        except OSError as exc:
            raise StoreError(f"checkpoint {record.path} cannot be read: {_reason(exc)}") from exc
        if digest != record.sha256:
            raise StoreError(f"checkpoint {record.path} is corrupt (sha256 mismatch)")
        with safe_open(record.path, framework="pt") as fh:
            flat = fh.get_tensor(CHECKPOINT_TENSOR)
        try:
            self.load_flat(flat, record.round_id, record.fingerprint)
        except SyncFailed as exc:
            raise StoreError(f"checkpoint {record.path} does not fit this model: {exc}") from exc

    def load_checkpoint_bytes(self, data: bytes, *, version: int, sha256: bytes, fingerprint: bytes) -> None:
        """Load a downloaded checkpoint file after verifying its sha256, then its fingerprint."""
        digest = hashlib.sha256(data).digest()
        if digest != sha256:
            raise SyncFailed(f"checkpoint sha256 {digest.hex()[:12]} != announced {sha256.hex()[:12]}")
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError) as exc:
            raise SyncFailed(f"checkpoint of round {version} is not a safetensors file: {exc}") from exc
        self.load_flat(self._flat_of(tensors), version, fingerprint)

    def read_checkpoint(self, path: Path) -> tuple[dict[str, str], torch.Tensor] | None:
        """(metadata, flat) of a checkpoint file written by `write_checkpoint`; None if unreadable."""
        try:
            with safe_open(str(path), framework="pt") as fh:
                return dict(fh.metadata() or {}), fh.get_tensor(CHECKPOINT_TENSOR)
        except (OSError, SafetensorError, KeyError, ValueError):
            return None

    def _flat_of(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One flat fp32 tensor, or one tensor per trainable name (concatenated in manifest order)."""
        if len(tensors) == 1:
            (flat,) = tensors.values()
            return flat.reshape(-1)
        if set(self.params.names) <= set(tensors):
            parts = [tensors[name].reshape(-1) for name in self.params.names]
            pad = self.params.flat.numel() - sum(p.numel() for p in parts)  # bf16-sr: a zero to even
            if pad == 1:
                parts.append(torch.zeros(1, dtype=parts[0].dtype))
            return torch.cat(parts)
        raise SyncFailed(f"checkpoint holds tensors {sorted(tensors)[:5]}..., not this model's")
