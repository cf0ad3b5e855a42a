"""fedmezo.client: the client daemon (sync by replay, local MeZO training, metrics)."""
