"""Instruction data for federated MeZO: records, tokenization, seeded batches, demo data, partitions, eval."""

from fedmezo.data.demo import DEMO_CATEGORIES, generate_demo_dataset
from fedmezo.data.evaluate import EvalResult, evaluate, exact_match, generate_answers, normalize_answer
from fedmezo.data.loader import ClientDataset, step_indices
from fedmezo.data.partition import Scheme, category_of, partition
from fedmezo.data.records import DataError, Example, read_jsonl, write_jsonl
from fedmezo.data.tokenize import EncodedExample, collate, encode_example, end_of_turn_id, pad_token_id

__all__ = [
    "DEMO_CATEGORIES",
    "ClientDataset",
    "DataError",
    "EncodedExample",
    "EvalResult",
    "Example",
    "Scheme",
    "category_of",
    "collate",
    "encode_example",
    "end_of_turn_id",
    "evaluate",
    "exact_match",
    "generate_answers",
    "generate_demo_dataset",
    "normalize_answer",
    "pad_token_id",
    "partition",
    "read_jsonl",
    "step_indices",
    "write_jsonl",
]
