"""Partitions: every example to exactly one non-empty client, reproducibly, with the promised skew."""

from __future__ import annotations

from collections import Counter
from typing import get_args

import pytest

from fedmezo.data import DataError, Example, Scheme, category_of, generate_demo_dataset, partition
from fedmezo.data.partition import UNCATEGORIZED

TRAIN, _ = generate_demo_dataset()
SCHEMES = get_args(Scheme)


def _mean_dominant_share(clients: list[list[Example]]) -> float:
    """Mean over clients of their largest category's share: 1.0 means one category per client."""
    return sum(max(Counter(map(category_of, c)).values()) / len(c) for c in clients) / len(clients)


def _is_subsequence(part: list[Example], whole: list[Example]) -> bool:
    it = iter(whole)
    return all(any(ex is other for other in it) for ex in part)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_clients", [1, 3, 7, 20])
def test_every_example_to_exactly_one_nonempty_client(scheme: Scheme, num_clients: int) -> None:
    clients = partition(TRAIN, num_clients, scheme, alpha=0.1, seed=5)
    assert len(clients) == num_clients
    assert all(clients)
    assert sorted(id(ex) for c in clients for ex in c) == sorted(id(ex) for ex in TRAIN)
    assert all(_is_subsequence(c, TRAIN) for c in clients)  # input order kept within a client


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deterministic_per_seed(scheme: Scheme) -> None:
    assert partition(TRAIN, 5, scheme, seed=1) == partition(TRAIN, 5, scheme, seed=1)
    if scheme != "category":  # whole categories dealt in name order do not depend on the seed
        assert partition(TRAIN, 5, scheme, seed=1) != partition(TRAIN, 5, scheme, seed=2)


def test_iid_is_balanced_and_mixed() -> None:
    clients = partition(TRAIN, 6, "iid")
    sizes = [len(c) for c in clients]
    assert max(sizes) - min(sizes) <= 1
    global_share = max(Counter(map(category_of, TRAIN)).values()) / len(TRAIN)
    assert _mean_dominant_share(clients) == pytest.approx(global_share, abs=0.05)


def test_category_gives_whole_categories_round_robin() -> None:
    clients = partition(TRAIN, 3, "category")
    names = sorted(Counter(map(category_of, TRAIN)))
    for k, name in enumerate(names):
        holders = [i for i, c in enumerate(clients) if any(category_of(ex) == name for ex in c)]
        assert holders == [k % 3]  # the whole category, on client k mod 3
    assert {category_of(ex) for ex in clients[0]} == set(names[0::3])


def test_category_with_more_clients_than_categories_splits_big_categories() -> None:
    clients = partition(TRAIN, 12, "category")
    assert all(len({category_of(ex) for ex in c}) == 1 for c in clients)  # one category per client
    per_category = Counter(category_of(c[0]) for c in clients)
    assert set(per_category) == set(map(category_of, TRAIN))
    assert per_category["arithmetic"] > per_category["next-letter"] == 1  # split by size
    for name, n_clients in per_category.items():
        sizes = [len(c) for c in clients if category_of(c[0]) == name]
        assert max(sizes) - min(sizes) <= 1 and len(sizes) == n_clients


def test_dirichlet_skew_follows_alpha() -> None:
    iid = _mean_dominant_share(partition(TRAIN, 7, "iid", seed=0))  # ≈ 0.37, arithmetic's global share
    for seed in range(3):
        skewed = _mean_dominant_share(partition(TRAIN, 7, "dirichlet", alpha=0.05, seed=seed))
        near_iid = _mean_dominant_share(partition(TRAIN, 7, "dirichlet", alpha=1000.0, seed=seed))
        assert skewed > iid + 0.25
        assert near_iid == pytest.approx(iid, abs=0.03)


def test_dirichlet_never_leaves_a_client_empty() -> None:
    few = TRAIN[:60]
    for seed in range(5):
        clients = partition(few, 50, "dirichlet", alpha=0.01, seed=seed)
        assert all(clients) and sum(map(len, clients)) == 60


def test_examples_without_category() -> None:
    examples = [Example(f"q{i}", "", "a", None if i % 2 else "c") for i in range(10)]
    clients = partition(examples, 2, "category")
    assert [{category_of(ex) for ex in c} for c in clients] == [{UNCATEGORIZED}, {"c"}]


def test_impossible_or_invalid_requests() -> None:
    with pytest.raises(DataError, match="only 2 examples"):
        partition(TRAIN[:2], 3, "iid")
    with pytest.raises(DataError, match="unknown partition scheme"):
        partition(TRAIN, 3, "by-length")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="at least 1"):
        partition(TRAIN, 0, "iid")
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(DataError, match="alpha must be positive"):
            partition(TRAIN, 3, "dirichlet", alpha=alpha)
