"""Where a dataset's files come from: an explicit directory, a system install, the download cache, the internet.

Each place is tried in order; every failure is kept, so that when nothing works the error
names every place looked at, why it was rejected, and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from workloads.datasets.formats import DatasetFormatError

T = TypeVar("T")


class DatasetNotFoundError(FileNotFoundError):
    """No place held a readable copy of the dataset; the message lists each place and why."""


@dataclass(frozen=True)
class Download:
    """Official files of a dataset: ``(file name, md5)`` pairs under ``base_urls``, optionally a tar archive."""

    base_urls: tuple[str, ...]
    files: tuple[tuple[str, str], ...]
    extract_tar: bool = False


@dataclass
class Attempt(Generic[T]):
    """The outcome of looking in places, in order."""

    tried: list[tuple[str, str]] = field(default_factory=list)

    def reject(self, place: str, reason: str) -> None:
        self.tried.append((place, reason))

    def report(self) -> str:
        return "\n".join(f"  - {place}: {reason}" for place, reason in self.tried)


def galen_home() -> Path:
    """Root of the platform's caches: ``$GALEN_HOME``, else ``~/.cache/galen``."""
    return Path(os.environ.get("GALEN_HOME", Path.home() / ".cache" / "galen")).expanduser()


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def try_directory(directory: Path, read: Callable[[Path], T], attempt: Attempt, label: str) -> T | None:
    """Read the dataset from ``directory``, or record why not."""
    place = f"{label} {directory}"
    if not directory.is_dir():
        attempt.reject(place, "no such directory")
        return None
    try:
        return read(directory)
    except FileNotFoundError as error:
        attempt.reject(place, f"missing file {Path(error.filename or str(error)).name}")
    except DatasetFormatError as error:
        attempt.reject(place, f"corrupted: {error}")
    return None


def download(spec: Download, destination: Path, timeout_s: float = 30.0) -> None:
    """Fetch every official file into ``destination`` and verify its md5; extract archives.

    Files are written to a temporary name and renamed when their checksum matches, so an
    interrupted download never leaves a half file that looks complete.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for name, expected_md5 in spec.files:
        target = destination / name
        if not (target.exists() and md5sum(target) == expected_md5):
            _fetch_first(spec.base_urls, name, target, expected_md5, timeout_s)
        if spec.extract_tar:
            with tarfile.open(target, "r:gz") as archive:
                archive.extractall(destination, filter="data")


def _fetch_first(base_urls: tuple[str, ...], name: str, target: Path, expected_md5: str, timeout_s: float) -> None:
    errors = []
    for base in base_urls:
        url = f"{base.rstrip('/')}/{name}"
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
                shutil.copyfileobj(response, out)
            actual = md5sum(Path(tmp))
            if actual != expected_md5:
                errors.append(f"{url}: md5 {actual} != official {expected_md5}")
                continue
            os.replace(tmp, target)
            return
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            errors.append(f"{url}: {error}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise OSError("; ".join(errors))
