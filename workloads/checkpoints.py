"""The checkpoint store: trained base models keyed by (model, dataset, recipe, seed), with JSON metadata.

Layout: ``<root>/<model>--<dataset>--<recipe fingerprint>--seed<seed>/{model.pt,meta.json}``.
A checkpoint is written to a temporary directory and renamed into place, so a killed run
leaves either a whole checkpoint or none. Loading checks the content hash recorded in
``meta.json`` and uses ``torch.load(weights_only=True)``: a tampered or truncated file is
refused with an error, never silently retrained over.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workloads.datasets.sources import galen_home
from workloads.training import Recipe

WEIGHTS, META = "model.pt", "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be trusted or does not fit the requested model."""


@dataclass(frozen=True)
class CheckpointKey:
    """What identifies a trained base model."""

    model: str
    dataset: str
    recipe: Recipe
    seed: int

    @property
    def dirname(self) -> str:
        safe_model = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model)
        return f"{safe_model}--{self.dataset}--{self.recipe.fingerprint()}--seed{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "recipe": asdict(self.recipe), "seed": self.seed}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        galen = version("galen-ray")
    except PackageNotFoundError:
        galen = "unknown"
    return {"torch": torch.__version__, "python": platform.python_version(), "galen-ray": galen}


class CheckpointStore:
    """Directory of trained base models (default ``$GALEN_HOME/checkpoints``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else galen_home() / "checkpoints"

    def path(self, key: CheckpointKey) -> Path:
        return self.root / key.dirname

    def exists(self, key: CheckpointKey) -> bool:
        return self.path(key).exists()

    def save(self, key: CheckpointKey, model: nn.Module, metadata: dict[str, Any]) -> Path:
        """Write weights and metadata atomically; returns the checkpoint directory."""
        final = self.path(key)
        if final.exists():
            raise CheckpointError(f"checkpoint {final} already exists; it is never overwritten (delete it first to retrain)")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key.dirname}."))
        try:
            torch.save(model.state_dict(), tmp / WEIGHTS)
            meta = {
                **key.as_dict(),
                **metadata,
                "sha256": sha256_file(tmp / WEIGHTS),
                "versions": versions(),
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
            os.replace(tmp, final)  # atomic: a killed run leaves a whole checkpoint or none
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def load(self, key: CheckpointKey, model: nn.Module) -> dict[str, Any]:
        """Load the weights for ``key`` into ``model``; returns the metadata. Raises CheckpointError on any doubt."""
        meta = load_into(self.path(key), model)
        if {k: meta.get(k) for k in key.as_dict()} != key.as_dict():
            raise CheckpointError(f"checkpoint {self.path(key)} was made for {_describe(meta)}, not for {_describe(key.as_dict())}")
        return meta

    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every checkpoint in the store (unreadable ones are skipped)."""
        result = []
        for meta_file in sorted(self.root.glob(f"*/{META}")):
            try:
                result.append({**json.loads(meta_file.read_text()), "path": str(meta_file.parent)})
            except (OSError, json.JSONDecodeError):
                continue
        return result


def load_into(directory: str | Path, model: nn.Module) -> dict[str, Any]:
    """Verify and load a checkpoint directory into ``model``; returns its metadata."""
    directory = Path(directory)
    weights, meta_file = directory / WEIGHTS, directory / META
    if not weights.is_file() or not meta_file.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: expected {WEIGHTS} and {META}")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {directory}: {META} is not valid JSON ({error})") from error
    actual = sha256_file(weights)
    if actual != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {directory} is corrupted or was modified: sha256 of {WEIGHTS} is {actual[:16]}..., "
            f"{META} records {str(meta.get('sha256'))[:16]}...; delete the directory to retrain it"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for bad archives
        raise CheckpointError(f"checkpoint {directory}: cannot read {WEIGHTS} ({error})") from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {directory} does not fit model {type(model).__name__}: {str(error).splitlines()[0]} ..."
        ) from error
    return meta


def load_weights(path: str | Path, model: nn.Module, name: str = "--weights (workload.weights)") -> dict[str, Any]:
    """Load a user's state-dict file into ``model`` (``torch.load(weights_only=True)``); returns its metadata.

    ``name`` is the field or flag the user wrote (``workload.weights``, ``--weights``): every error names it. A file that
    does not fit gets one line naming the first mismatched tensor and its shapes; a file holding pickled objects is
    refused (nothing in it executed). Accepted wrappings: ``{"state_dict": ...}`` / ``{"model": ...}`` and the
    ``module.`` prefix of ``nn.DataParallel``. The metadata records the file's sha256.
    """
    import pickle

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{name}: {path} holds pickled Python objects besides tensors; such files are never loaded (nothing in it was "
            "executed). Save a plain state dict: torch.save(model.state_dict(), path)"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch raises several types for files it cannot read
        raise CheckpointError(f"{name}: cannot read {path} as a PyTorch state dict ({str(error).splitlines()[0]})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not isinstance(state.get(key), torch.Tensor):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name}: {path} is not a state dict (a mapping of tensor names to tensors); save model.state_dict()")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    problem = weights_mismatch(state, expected)
    if problem:
        raise CheckpointError(f"{name}: {path} does not fit model {type(model).__name__}: {problem}")
    model.load_state_dict(state, strict=True)
    return {"weights": str(path), "sha256": sha256_file(path), "tensors": len(state)}


def weights_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """The first difference between a state dict and the model's, in the model's order (None: they fit)."""
    for key, tensor in expected.items():
        if key not in state:
            counts = f"{len(state)} tensors in the file, {len(expected)} in the model"
            return f"tensor {key!r} (shape {tuple(tensor.shape)}) is missing from the file ({counts})"
        if tuple(state[key].shape) != tuple(tensor.shape):
            return f"tensor {key!r} has shape {tuple(state[key].shape)} in the file but {tuple(tensor.shape)} in the model"
    extra = [key for key in state if key not in expected]
    if extra:
        return f"the file has tensor {extra[0]!r} (shape {tuple(state[extra[0]].shape)}) that the model does not ({len(extra)} such)"
    return None


def _describe(meta: dict[str, Any]) -> str:
    return f"model={meta.get('model')} dataset={meta.get('dataset')} seed={meta.get('seed')} recipe={meta.get('recipe')}"
