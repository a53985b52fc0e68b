"""Shared helpers of the data-layer tests: tiny logs written to tmp_path and a RecDataModule factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from datamodules import RecDataModule

REPO = Path(__file__).parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def make_rows(users: int = 6, items: int = 12, per_user: int = 6) -> list[tuple[str, str, int, float]]:
    """(user, item, ts, rating) rows: user u rates items u+1 .. u+per_user (mod items) at increasing times."""
    rows = []
    for u in range(users):
        for j in range(per_user):
            rows.append((f"u{u}", f"i{(u + j) % items + 1}", 1000 + 10 * u + j, float(1 + (u + j) % 5)))
    return rows


def write_file(path: Path, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    """Writes `text` with the given line ends (the file exactly as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


@pytest.fixture
def tiny_rows() -> Callable[..., list[tuple[str, str, int, float]]]:
    """`tiny_rows(users, items, per_user)` -> (user, item, ts, rating) rows."""
    return make_rows


@pytest.fixture
def write_text() -> Callable[..., Path]:
    """`write_text(path, text, encoding="utf-8", newline="\\n")` -> path."""
    return write_file


@pytest.fixture
def make_dm(tmp_path: Path) -> Callable[..., RecDataModule]:
    """A RecDataModule factory with a per-test cache and small defaults for tiny logs."""

    def make(**kwargs: object) -> RecDataModule:
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        kwargs.setdefault("eval_ks", [1, 2])
        kwargs.setdefault("min_user_interactions", 1)
        return RecDataModule(**kwargs)

    return make
