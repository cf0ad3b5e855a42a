"""The `fedmezo` command line: one entry point that only wires subcommands (one module each)."""

__all__: list[str] = []
