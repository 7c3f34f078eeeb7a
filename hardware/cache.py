"""The persistent latency cache: SQLite in WAL mode, keyed by (target, runtime + version, artifact fingerprint).

One process owns it in a Ray cluster (``hardware.actors.LatencyCacheActor`` on the head node);
this class is that owner's storage, and the cache of a client running without Ray. WAL mode
lets readers proceed while one writer commits, ``busy_timeout`` makes a second writer wait
instead of failing, and each put is one transaction, so concurrent writers (tested with two
processes) never leave a partial row. Results survive a restart of the driver.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def galen_home() -> Path:
    """``$GALEN_HOME``, else ``~/.cache/galen`` (as for datasets and checkpoints; a device node has no ``workloads``)."""
    return Path(os.environ.get("GALEN_HOME", Path.home() / ".cache" / "galen")).expanduser()


def default_cache_path() -> Path:
    return galen_home() / "latency-cache.sqlite"


@dataclass(frozen=True)
class CacheKey:
    target: str
    runtime: str  # "onnxruntime==1.31.1": a new runtime version is a new measurement
    fingerprint: str  # sha256 of the artifact bytes


class LatencyCache:
    """Measurements by key, with hit and miss counts for this process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS latency (target TEXT NOT NULL, runtime TEXT NOT NULL, fingerprint TEXT NOT NULL, "
            "result TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (target, runtime, fingerprint))"
        )
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT result FROM latency WHERE target=? AND runtime=? AND fingerprint=?", (key.target, key.runtime, key.fingerprint)
            ).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return json.loads(row[0])

    def put(self, key: CacheKey, result: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?)",
                (key.target, key.runtime, key.fingerprint, json.dumps(result, sort_keys=True), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM latency").fetchone()[0]

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self)}

    def close(self) -> None:
        with self._lock:
            self._db.close()
