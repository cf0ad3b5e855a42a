"""fedmezo.dashboard: FastAPI app and browser UI over the server's status service."""
