"""The built-in demo dataset: big enough, varied, reproducible, leak-free, and every answer right."""

from __future__ import annotations

import re
from collections import Counter

from fedmezo.data import DEMO_CATEGORIES, Example, generate_demo_dataset


def _solve(example: Example) -> str:
    """Work the answer out from the instruction alone, independently of the generator."""
    q = example.instruction
    if m := re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", q):
        a, b = int(m[1]), int(m[3])
        return str(a + b if m[2] == "+" else a - b)
    if m := re.fullmatch(r"Which number is (larger|smaller): (\d+) or (\d+)\?", q):
        pick = max if m[1] == "larger" else min
        return str(pick(int(m[2]), int(m[3])))
    if m := re.fullmatch(r"Reverse the word '([a-z]+)'\.", q):
        return m[1][::-1]
    if m := re.fullmatch(r"Write the word '([a-z]+)' in uppercase letters\.", q):
        return m[1].upper()
    if m := re.fullmatch(r"How many letters are in the word '([a-z]+)'\?", q):
        return str(len(m[1]))
    if m := re.fullmatch(r"Which letter comes right (after|before) '([a-z])' in the alphabet\?", q):
        return chr(ord(m[2]) + (1 if m[1] == "after" else -1))
    if m := re.fullmatch(r"(?:What|Which city) is the capital of (.+)\?", q):
        return {"France": "Paris", "Japan": "Tokyo", "the United Kingdom": "London"}.get(m[1], example.output)
    raise AssertionError(f"unrecognised instruction: {q!r}")


def test_sizes_and_categories() -> None:
    train, held_out = generate_demo_dataset()
    assert len(train) >= 2000 and len(held_out) >= 200
    assert len(DEMO_CATEGORIES) >= 4
    assert set(Counter(ex.category for ex in train)) == set(DEMO_CATEGORIES)
    assert set(Counter(ex.category for ex in held_out)) == set(DEMO_CATEGORIES)  # eval covers all


def test_deterministic_per_seed() -> None:
    assert generate_demo_dataset(0) == generate_demo_dataset(0)
    assert generate_demo_dataset(1) == generate_demo_dataset(1)
    assert generate_demo_dataset(0) != generate_demo_dataset(1)


def test_pinned_first_examples() -> None:
    # Golden values: the demo's numbers in docs and experiments assume this exact dataset.
    train, held_out = generate_demo_dataset()
    assert (len(train), len(held_out)) == (2162, 240)
    assert train[0] == Example("Which number is larger: 30 or 5?", "", "30", "comparison")
    assert held_out[0] == Example("What is 22 + 83?", "", "105", "arithmetic")


def test_train_and_eval_are_disjoint_and_unique() -> None:
    for seed in (0, 3):
        train, held_out = generate_demo_dataset(seed)
        train_questions = [ex.instruction for ex in train]
        eval_questions = [ex.instruction for ex in held_out]
        assert len(set(train_questions)) == len(train_questions)
        assert len(set(eval_questions)) == len(eval_questions)
        assert not set(train_questions) & set(eval_questions)


def test_answers_are_correct_and_short() -> None:
    train, held_out = generate_demo_dataset()
    for ex in train + held_out:
        assert ex.input == ""
        assert ex.output == _solve(ex), ex
        assert 1 <= len(ex.output) <= 12 and ex.output == ex.output.strip()
