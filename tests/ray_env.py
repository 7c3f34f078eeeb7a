"""A temp dir of Ray's own for a test cluster, so no test touches /tmp/ray or another test's cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def ray_temp_dir(prefix: str) -> Iterator[str]:
    """Yields a short temp dir (Ray's socket paths have a length limit) set as ``RAY_TMPDIR`` (where Ray writes its
    "current cluster" pointer) with ``RAY_AUTH_MODE=disabled``; restores both and removes the dir afterwards."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
    os.environ.update(RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled")
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    try:
        yield tmp
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)
