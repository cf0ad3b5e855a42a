"""The federated protocol as plain code: run config, round planning and closing, the replica, local
training and the wire conversions. No gRPC server, no SQLite, no asyncio: the server, the client daemon
and `fedmezo simulate` all run these same functions (see docs/architecture.md)."""
