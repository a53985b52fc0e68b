"""DataError: bad input data, reported in one line naming the file, the place and what was expected."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Bad input data or data arguments; the message names the file, the row or column, and the expectation."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line

    @classmethod
    def at(cls, path: str | Path | None, where: str, expected: str, found: str | None = None) -> DataError:
        """Builds `"<path>: <where>: expected <expected>[, found <found>]"`."""
        head = f"{path}: " if path is not None else ""
        tail = f", found {found}" if found is not None else ""
        return cls(f"{head}{where}: expected {expected}{tail}")


class DataArgumentError(DataError, ValueError):
    """A RecDataModule argument out of range; the message starts with the argument's name."""
