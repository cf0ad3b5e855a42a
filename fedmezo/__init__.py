"""fedmezo: federated zeroth-order (MeZO) fine-tuning of LLMs with only seeds and scalars on the wire."""

__all__ = ["__version__"]

__version__ = "0.1.0"
