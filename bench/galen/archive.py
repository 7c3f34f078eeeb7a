"""What of the benchmark is committed, so that a fresh checkout continues it instead of starting over.

``runs/`` (RLlib checkpoints, logs, a few hundred MB) is not committed; a fresh clone would redo
every search, on a base model retrained from scratch. So these go under ``data/``, in git:

- ``data/base/<checkpoint dir>/``: the base model exactly as the searches used it (``model.pt``
  and ``meta.json`` with its sha256, about 3.5 MB for ResNet-56). Copied into the checkpoint store
  when the store lacks it; the store checks the hash and loads with ``weights_only=True``.
- ``data/archive/<method>--<budget>--seed<n>.json.gz``: one finished run: its ``state.json``,
  ``config.yaml`` and every ``episodes.jsonl`` record (per-layer policy included), written once
  when the run finishes (gzip without a timestamp: the same run gives the same bytes). A run
  directory that is missing or unfinished is restored from it, marked finished, and skipped.
- ``data/final.json``: the final phase's measurements (peak throughput, re-measured latencies,
  fine-tunes), so that a re-write re-measures nothing already measured.

A run stopped mid-search is not archived: it resumes from its checkpoints in ``runs/`` when they
are there, and starts over when they are not.
"""

from __future__ import annotations

import gzip
import io
import json
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from agents.recorder import read_episodes
from bench.galen.plan import Run
from envs.jsonio import dumps, write_atomic
from experiments import rundir
from experiments.rundir import RunDir

FORMAT = 1


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def archive_path(out: Path, run: Run) -> Path:
    return out / "data" / "archive" / f"{run.label.replace('/', '--')}.json.gz"


def run_state(run_dir: Path) -> dict[str, Any]:
    return RunDir(run_dir).state()


@contextmanager
def gz_text_writer(path: Path) -> Iterator[io.TextIOWrapper]:
    """A text handle onto ``path``, gzipped, replaced atomically on success; no name or time in the header: same text, same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8") as handle,
    ):
        yield handle
    tmp.replace(path)


def write_gz_json(path: Path, value: Any) -> None:
    with gz_text_writer(path) as handle:
        handle.write(dumps(value))


def read_gz_json(path: Path) -> Any:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def save_run(out: Path, run: Run) -> Path | None:
    """Archive a finished run (once; an existing archive is kept). None when the run has not finished."""
    run_dir = run.run_dir(out)
    state = run_state(run_dir)
    if state.get("status") != "finished":
        return None
    path = archive_path(out, run)
    if path.exists():
        return path
    config_file = run_dir / rundir.CONFIG
    config = yaml.safe_load(config_file.read_text()) if config_file.exists() else None
    # runs/ does not outlive a checkout, so a run is searched on one machine, this one: its latencies are this CPU's
    if not state.get("cpu"):
        state = {**state, "cpu": cpu_name()}
        write_atomic(run_dir / rundir.STATE, json.dumps(state, indent=1))
    write_gz_json(path, {"format": FORMAT, "label": run.label, "state": state, "config": config, "episodes": read_episodes(run_dir)})
    return path


def restore_run(out: Path, run: Run) -> bool:
    """Rebuild an unfinished or missing run directory from its archive; True when it did."""
    path = archive_path(out, run)
    run_dir = run.run_dir(out)
    if not path.exists() or run_state(run_dir).get("status") == "finished":
        return False
    archived = read_gz_json(path)
    if archived.get("label") != run.label:
        raise ValueError(f"{path} holds run {archived.get('label')!r}, not {run.label!r}; the file was renamed or edited")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / rundir.EPISODES, "".join(json.dumps(r) + "\n" for r in archived["episodes"]))
    if archived.get("config") is not None:
        write_atomic(run_dir / rundir.CONFIG, yaml.safe_dump(archived["config"], sort_keys=False))
    state = {**archived["state"], "status": "finished", "restored_from": str(path)}
    write_atomic(run_dir / rundir.STATE, json.dumps(state, indent=1))
    return True


def committed_base(out: Path, model: str, recipe: Any, **options: Any) -> tuple[Any, bool]:
    """A benchmark's base model (training seed 0): from the checkpoint store, else from the committed copy in
    ``out/data/base/`` (a fresh machine then uses the model the committed runs used), else trained; then committed.
    Returns it and whether it was restored. A store holding a different model under the same name (trained on another
    machine) is named on stderr, not used silently: the committed runs' numbers are for the committed one."""
    import sys

    from workloads.base import obtain_base_model
    from workloads.checkpoints import CheckpointKey, CheckpointStore

    store = CheckpointStore()
    restored = restore_base(out, store.path(CheckpointKey(model, "fashion-mnist", recipe, 0)))
    base = obtain_base_model(model, "fashion-mnist", recipe, 0, store=store, **options)
    committed = out / "data" / "base" / Path(base.path).name / "meta.json"
    if committed.is_file() and json.loads(committed.read_text()).get("sha256") != base.meta.get("sha256"):
        print(
            f"warning: the stored base model {base.path} is not the one in {committed.parent} (another sha256); the "
            "committed runs used that one: remove the stored one to use it",
            file=sys.stderr,
        )
    save_base(out, Path(base.path))
    return base, restored


def restore_runs(out: Path, runs: list[Run]) -> list[str]:
    """Restore every planned run that has an archive and no finished run directory; their labels."""
    return [run.label for run in runs if restore_run(out, run)]


def _copy_tree_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tmp.replace(target)


def save_base(out: Path, store_dir: Path) -> Path:
    """Copy the base model's checkpoint directory into ``data/base/`` (once)."""
    target = out / "data" / "base" / store_dir.name
    if not target.exists():
        _copy_tree_atomic(store_dir, target)
    return target


def restore_base(out: Path, store_dir: Path) -> bool:
    """Put the committed base model into the checkpoint store when the store lacks it; True when it did."""
    source = out / "data" / "base" / store_dir.name
    if store_dir.exists() or not source.exists():
        return False
    _copy_tree_atomic(source, store_dir)
    return True
