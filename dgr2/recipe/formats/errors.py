"""The error a data folder's reader raises: one line that names the file, line and field at fault."""

from __future__ import annotations

from pathlib import Path

from dgr2.errors import UserError

DOC = "docs/data.md"  # where every format is described; each message points there


class DataError(UserError):
    """The data folder is missing files or holds malformed ones (the message says which and where)."""


def at(path: Path | str, line: int | None = None, field: str | None = None) -> str:
    """``file line N, field F``: where a message points, as precise as the caller knows."""
    where = Path(path).name
    if line is not None:
        where += f" line {line}"
    if field is not None:
        where += f", field {field}"
    return where
