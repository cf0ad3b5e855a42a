"""The public surface of fedmezo.data: `__all__` complete, sorted, and importable."""

from __future__ import annotations

import fedmezo.data


def test_all_is_sorted_and_importable() -> None:
    names = fedmezo.data.__all__

    # ruff's RUF022 order (isort-style): SCREAMING_CASE, then CamelCase, then the rest, each alphabetical.
    def key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=key)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(fedmezo.data, name), name


def test_all_lists_every_public_name() -> None:
    public = {
        n for n, v in vars(fedmezo.data).items() if not n.startswith("_") and not isinstance(v, type(fedmezo))
    }
    assert public == set(fedmezo.data.__all__)
