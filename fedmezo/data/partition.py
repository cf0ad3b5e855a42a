"""Split one dataset across federated clients: IID, Dirichlet label skew, or whole categories per client.

Federated results depend on how non-IID the clients are, so experiments need all three:
- `iid`: a seeded shuffle dealt round-robin; client sizes differ by at most one.
- `dirichlet`: per category, client shares drawn from Dirichlet(alpha) (Hsu et al., 2019); small alpha
  gives each client a few dominant categories, large alpha approaches IID.
- `category`: each client sees whole categories only, the most non-IID split.
Every example goes to exactly one client and every client gets at least one; within a client, examples
keep their input order. The same seed gives the same split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

from fedmezo.data.records import DataError, Example

__all__ = ["UNCATEGORIZED", "Scheme", "category_of", "partition"]

Scheme = Literal["iid", "dirichlet", "category"]
UNCATEGORIZED = "(none)"  # the category of examples that have none


def category_of(example: Example) -> str:
    return example.category if example.category is not None else UNCATEGORIZED


def _by_category(examples: Sequence[Example]) -> dict[str, list[int]]:
    """Example indices per category, categories in sorted order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[category_of(ex)].append(i)
    return dict(sorted(groups.items()))


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[list[int]]:
    order = rng.permutation(n).tolist()
    return [order[c::num_clients] for c in range(num_clients)]


def _dirichlet(
    examples: Sequence[Example], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    for indices in _by_category(examples).values():
        shares = rng.dirichlet(np.full(num_clients, alpha))
        order = rng.permutation(indices).tolist()
        cuts = (np.cumsum(shares)[:-1] * len(order)).astype(int).tolist()
        for client, part in zip(clients, np.split(np.array(order, dtype=np.int64), cuts), strict=True):
            client.extend(part.tolist())
    # Small alpha can leave a client empty; give it one example from the largest client (lowest id on
    # ties). That changes the skew by a single example, where redrawing until none is empty may never end.
    for empty in (c for c in clients if not c):
        largest = max(clients, key=len)
        empty.append(largest.pop(int(rng.integers(len(largest)))))
    return clients


def _clients_per_category(sizes: dict[str, int], num_clients: int) -> dict[str, int]:
    """One client per category, then each further client to the category with the most examples per
    client (D'Hondt), so large categories are split more; a category never gets more clients than examples."""
    counts = dict.fromkeys(sizes, 1)
    for _ in range(num_clients - len(sizes)):
        open_ = [c for c in sizes if counts[c] < sizes[c]]
        best = max(open_, key=lambda c: sizes[c] / counts[c])  # max() keeps the first (sorted) on ties
        counts[best] += 1
    return counts


def _category(examples: Sequence[Example], num_clients: int, rng: np.random.Generator) -> list[list[int]]:
    groups = _by_category(examples)
    if num_clients <= len(groups):  # whole categories, dealt round-robin in name order
        clients: list[list[int]] = [[] for _ in range(num_clients)]
        for k, indices in enumerate(groups.values()):
            clients[k % num_clients].extend(indices)
        return clients
    # More clients than categories: split each category into near-equal random parts, one per client.
    counts = _clients_per_category({c: len(ix) for c, ix in groups.items()}, num_clients)
    clients = []
    for name, indices in groups.items():
        order = rng.permutation(indices).tolist()
        clients += [order[k :: counts[name]] for k in range(counts[name])]
    return clients


def partition(
    examples: Sequence[Example],
    num_clients: int,
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[list[Example]]:
    """Split `examples` into `num_clients` non-empty, disjoint lists that together hold every example.

    `alpha` is the Dirichlet concentration (used by `dirichlet` only). Raises DataError when the split
    is impossible (fewer examples than clients) or a parameter is invalid.
    """
    if scheme not in get_args(Scheme):
        raise DataError(f"unknown partition scheme {scheme!r}; expected one of {', '.join(get_args(Scheme))}")
    if num_clients < 1:
        raise DataError(f"num_clients must be at least 1, got {num_clients}")
    if len(examples) < num_clients:
        raise DataError(f"cannot give {num_clients} clients one example each: only {len(examples)} examples")
    if not alpha > 0:
        raise DataError(f"alpha must be positive, got {alpha}")
    rng = np.random.Generator(np.random.Philox(seed))
    if scheme == "iid":
        assignment = _iid(len(examples), num_clients, rng)
    elif scheme == "dirichlet":
        assignment = _dirichlet(examples, num_clients, alpha, rng)
    else:
        assignment = _category(examples, num_clients, rng)
    return [[examples[i] for i in sorted(indices)] for indices in assignment]
