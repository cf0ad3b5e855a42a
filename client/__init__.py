"""fedmezo.client: the client daemon (sync by replay, local MeZO training, metrics).

`Daemon` runs the loop against a `ServerLink` (the real one is `GrpcServerLink`); local training
(`fedmezo.fl.train.train_task`) and the replica (`fedmezo.fl.replica.Replica`) are the protocol's own;
`ReplicaSync` decides how the local replica follows the server's.
Names resolve lazily (PEP 562), so importing the training or sync modules never needs gRPC or torch
loaded by the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "AuthFailed": "errors",
    "ChannelSettings": "connection",
    "ClientConfig": "config",
    "ClientError": "errors",
    "ConfigError": "errors",
    "Daemon": "daemon",
    "GrpcServerLink": "connection",
    "Incompatible": "errors",
    "Outcome": "daemon",
    "Refused": "errors",
    "ReplicaSync": "sync",
    "RetryPolicy": "retry",
    "RpcFailed": "errors",
    "ServerLink": "link",
    "Stopped": "errors",
    "SyncFailed": "errors",
    "Unavailable": "errors",
    "Workload": "workload",
    "build_workload": "workload",
    "load_config": "config",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'fedmezo.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedmezo.client.{_MODULE_OF[name]}"), name)
