"""Atomic JSON files: the one way the platform writes the files a killed process must not leave half-written.

A leaf module (standard library only), so every layer that writes run directories, caches or benchmark data can use
it: ``write_atomic`` writes a temporary file next to the target, fsyncs it and renames it over the target, so a reader
sees the old file or the new one, never a torn one. ``read_jsonl`` reads an append-only log whose last line a kill may
have cut short.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def to_json(value: Any) -> Any:
    """``json.dumps`` default: numpy scalars and arrays as plain numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, default=to_json, **kwargs)


def write_atomic(path: str | Path, text: str) -> None:
    """``text`` to ``path`` via a fsync'd temporary file and a rename (atomic on POSIX); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, value: Any, indent: int | None = 1) -> None:
    write_atomic(path, dumps(value, indent=indent))


def read_json(path: str | Path) -> Any:
    """The file's JSON value, or None when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def read_jsonl(path: str | Path) -> list[Any]:
    """The complete lines of an append-only JSON-lines file (a torn last line is skipped; no file: nothing)."""
    path = Path(path)
    if not path.exists():
        return []
    values = []
    for line in path.read_text().splitlines():
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError:
            break  # only the last line can be torn (one write per line, fsync'd in order)
    return values
