"""The client's configuration: defaults < TOML file < `FEDMEZO_*` environment < flags (flags win).

Everything about the *run* (model, seeds, lr, eps, batch size, τ) comes from the server at join, so
this holds only what is local to the edge device: where the server is, who we are, how we prove it,
where the data is, and which device trains. Invalid combinations are rejected here, at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmezo import settings
from fedmezo.fl.errors import ConfigError
from fedmezo.settings import ENV_PREFIX, setting

__all__ = ["ENV_PREFIX", "SECRET_FIELDS", "ClientConfig", "load_config"]


@dataclass(frozen=True)
class ClientConfig:
    """What is local to this device; frozen and checked at construction, so a bad one never starts."""

    server: str = setting("", "server address HOST:PORT")
    data: str = setting("", "this client's training data, JSON Lines (Alpaca or Dolly fields)")
    client_id: str = setting(
        "", "this client's id; must be the identity of the token when the server has tokens"
    )
    token: str | None = setting(
        None, "bearer token (secret; prefer --token-file so it stays out of `ps`)", secret=True
    )
    token_file: str | None = setting(None, "file whose first line is the bearer token")
    insecure: bool = setting(False, "plaintext gRPC (no TLS); the server must be started with --insecure too")
    tls_ca: str | None = setting(None, "PEM CA bundle to verify the server (default: system roots)")
    tls_cert: str | None = setting(None, "PEM client certificate for mTLS (needs --tls-key)")
    tls_key: str | None = setting(None, "PEM client private key for mTLS (needs --tls-cert)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N; auto picks cuda when available")
    compute_dtype: str = setting(
        "fp32",
        "fp32 | bf16 | auto: dtype of the forwards; bf16 reads a compute copy derived from the fp32 "
        "weights (GPU speed, canonical weights unchanged); auto = bf16 on CUDA, fp32 on CPU",
    )
    compile: str = setting(
        "auto",
        "auto | on | off: replay the forwards as CUDA graphs (torch.compile, backend cudagraphs) on "
        "batches padded to at most 8 bucket lengths; the same bits as eager, several times faster for "
        "small models; auto = on with CUDA, off on CPU (on needs CUDA)",
    )
    model: str | None = setting(None, "model name; default and normally: what the server says")
    state_dir: str = setting(
        "", "where the client keeps its replica between restarts (default ~/.fedmezo/client/ID)"
    )
    max_length: int = setting(
        256,
        "fallback only: token length examples are truncated to when the server does not send one "
        "(servers before RunConfig.max_length); the server's value always wins",
    )
    rpc_deadline_s: float = setting(30.0, "deadline of every unary RPC (seconds); long-polls add their wait")
    long_poll_s: float = setting(
        20.0, "how long one GetTask waits for a task (seconds); fewer polls, fewer bytes"
    )
    threads: int = setting(0, "torch CPU threads (0 = torch default)")
    progress: bool = setting(True, "show a tqdm progress bar while training")

    def __post_init__(self) -> None:
        if not self.server:
            raise ConfigError("--server HOST:PORT is required")
        if not self.data:
            raise ConfigError("--data FILE is required")
        if not self.client_id:
            raise ConfigError("--client-id is required")
        if self.token and self.token_file:
            raise ConfigError("give either --token or --token-file, not both")
        if self.insecure and (self.tls_ca or self.tls_cert or self.tls_key):
            raise ConfigError("--insecure cannot be combined with TLS options")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("mTLS needs both --tls-cert and --tls-key")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.compute_dtype not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"--compute-dtype must be fp32, bf16 or auto, got {self.compute_dtype!r}")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"--compile must be auto, on or off, got {self.compile!r}")
        if self.compile == "on" and self.device == "cpu":
            raise ConfigError("--compile on needs CUDA (CUDA graphs); use --compile off or auto on CPU")
        if self.max_length < 8:
            raise ConfigError(f"--max-length must be at least 8 tokens, got {self.max_length}")
        if self.rpc_deadline_s <= 0 or self.long_poll_s <= 0:
            raise ConfigError("deadlines must be positive")

    def resolved_token(self) -> str | None:
        """The bearer token, read from --token-file when given."""
        if self.token_file:
            try:
                text = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read token file {self.token_file}: {exc}") from exc
            if not text:
                raise ConfigError(f"token file {self.token_file} is empty")
            return text.splitlines()[0].strip()
        return self.token

    def resolved_state_dir(self) -> Path:
        return (
            Path(self.state_dir) if self.state_dir else Path.home() / ".fedmezo" / "client" / self.client_id
        )

    def redacted(self) -> dict[str, Any]:
        """The effective config for the log, secrets replaced by `***`."""
        return settings.redacted(self)


SECRET_FIELDS = settings.secret_fields(ClientConfig)


def load_config(
    flags: Mapping[str, Any], *, config_file: str | None = None, environ: Mapping[str, str] | None = None
) -> ClientConfig:
    """Merge the sources; `flags` holds only what was given on the command line (None = not given).

    The file is `config_file`, else a `config` flag, else $FEDMEZO_CONFIG: a `[client]` table or the
    top-level keys.
    """
    return settings.load(ClientConfig, "client", flags=flags, env=environ, toml_path=config_file)
