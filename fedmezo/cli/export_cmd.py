"""`fedmezo export`: write the current global model and tokenizer from a server state dir."""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["EXIT_STATE", "register"]

logger = logging.getLogger("fedmezo.server")

EXIT_STATE = 3  # the state dir cannot be read or does not reproduce its fingerprints


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the global model as a Hugging Face folder",
        description="Rebuild the canonical model from a server state dir and save_pretrained it.",
    )
    parser.add_argument("--state-dir", dest="state_dir", required=True, help="the server's --state-dir")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--device", default="cpu", help="device used while rebuilding (default cpu)")
    parser.add_argument(
        "--adapter-only",
        dest="adapter_only",
        action="store_true",
        help="LoRA runs: write only the trained adapters (a PEFT folder of a few MB, to apply to your own "
        "copy of the base) instead of the adapters merged into the base",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmezo.fl.errors import FedmezoError
    from fedmezo.server.export import export_model

    try:
        result = export_model(args.state_dir, args.out, device=args.device, adapter_only=args.adapter_only)
    except (FedmezoError, OSError) as exc:
        logger.error("export failed: %s", exc)
        return EXIT_STATE
    print(f"exported round {result.version} (fingerprint {result.fingerprint.hex()}) to {result.out_dir}")
    return 0
