"""fedmezo.server: the aggregation server (rounds, scalar aggregation, SQLite state, export)."""
