"""`fedmezo simulate`: N clients and the server in one process, on the daemons' own engine."""

from fedmezo.sim.config import METHODS, RUN_KEYS, SimOptions, load_sim_config
from fedmezo.sim.engine import RoundResult, SimResult, Simulation, client_data, write_jsonl_rounds

__all__ = [
    "METHODS",
    "RUN_KEYS",
    "RoundResult",
    "SimOptions",
    "SimResult",
    "Simulation",
    "client_data",
    "load_sim_config",
    "write_jsonl_rounds",
]
