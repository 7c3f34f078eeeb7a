"""Shared fixtures. Every test run gets its own GALEN_HOME so no cache or checkpoint leaks between runs.

Ray never runs inside the pytest process. A driver started there after another one had come and gone failed in CI
only (never here): "actor cancelled before it started running" for Tune trials and RLlib env runners, `OwnerDiedError`
for the objects the pytest driver owned; a test only passed again when it ran first. A test that calls ``ray.init``
(or runs an entry point that does) is marked ``own_process``: the marked tests of a module run together in a fresh
interpreter (a child pytest on the same GALEN_HOME) and report here as they did there. ``ray.init`` in the pytest
process itself raises, naming the marker, so a new test cannot bring the failure back.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import yaml

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_MEASUREMENT = {"warmup": 10, "rounds": 11, "max_remeasures": 1, "pause_s": 0.2}


CHILD = "GALEN_TEST_CHILD"  # set in a child pytest (own_process tests): it uses its parent's GALEN_HOME and targets
CHILD_SLACK_S = 900  # a child pytest's wall limit per test it runs (pytest-timeout stops one test at 600 s in it)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "own_process: the test starts Ray; it runs in a fresh interpreter (see conftest.py)")
    if os.environ.get(CHILD):
        return
    try:
        import ray
    except ImportError:
        return

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "ray.init inside the pytest process: mark the test @pytest.mark.own_process (it then runs in a fresh interpreter; "
            "a second Ray driver in one process failed in CI, see tests/conftest.py)"
        )

    ray.init = refuse


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(CHILD):
        return
    marked = [item for item in items if item.get_closest_marker("own_process")]
    per_module = collections.Counter(item.path for item in marked)
    for item in marked:  # the first one waits for all of its module's
        item.add_marker(pytest.mark.timeout(CHILD_SLACK_S * per_module[item.path]))


_CHILD_RESULTS: dict[str, tuple[str, float, str]] = {}


def _run_child(item: pytest.Item) -> None:
    """Run ``item`` and the other own_process tests of its module (not yet run) in one child pytest; store each outcome."""
    group = [
        i for i in item.session.items if i.path == item.path and i.get_closest_marker("own_process") and i.nodeid not in _CHILD_RESULTS
    ]
    base = Path(tempfile.mkdtemp(prefix=f"child-{item.path.stem}-", dir=item.config._tmp_path_factory.getbasetemp()))
    junit = base / "junit.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        *(i.nodeid for i in group),
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=-ra --strict-markers",
    ]
    command += [f"--basetemp={base / 'tmp'}", f"--junitxml={junit}"]
    try:
        out = subprocess.run(
            command,
            cwd=item.config.rootpath,
            env={**os.environ, CHILD: "1"},
            capture_output=True,
            text=True,
            timeout=CHILD_SLACK_S * len(group),
        )
        log = f"child pytest (exit {out.returncode}): {' '.join(command[3:])}\n{out.stdout[-6000:]}\n{out.stderr[-4000:]}"
    except subprocess.TimeoutExpired as e:
        log = f"child pytest ran past {e.timeout} s: {' '.join(command[3:])}\n{(e.stdout or b'')[-12000:]!r}"
    cases = {}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            cases[case.get("name")] = case
    for i in group:
        case = cases.get(i.name)
        if case is None:
            _CHILD_RESULTS[i.nodeid] = ("failed", 0.0, f"the child pytest did not report {i.nodeid}\n{log}")
            continue
        bad = [e for e in case if e.tag in ("failure", "error")]
        skipped = case.find("skipped")
        text = "\n".join((e.get("message") or "") + "\n" + (e.text or "") for e in bad)
        outcome = "failed" if bad else "skipped" if skipped is not None else "passed"
        if outcome == "skipped":
            text = skipped.get("message") or "skipped"
        _CHILD_RESULTS[i.nodeid] = (outcome, float(case.get("time") or 0.0), text + ("\n" + log if bad else ""))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if os.environ.get(CHILD) or item.get_closest_marker("own_process") is None:
        return None
    if item.nodeid not in _CHILD_RESULTS:
        _run_child(item)
    outcome, duration, text = _CHILD_RESULTS[item.nodeid]
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    keywords = {k: 1 for k in item.keywords}
    for when in ("setup", "call", "teardown"):
        this, longrepr, seconds = "passed", None, 0.0
        if when == "call":
            this, seconds = outcome, duration
            longrepr = (str(item.path), item.location[1], text) if outcome == "skipped" else text if outcome == "failed" else None
        if when == "setup" and outcome == "skipped":
            continue
        if when == "teardown":  # what the normal protocol's teardown does: the fixtures the next test does not share
            try:
                item.session._setupstate.teardown_exact(nextitem)
            except Exception as error:  # a module or session fixture's teardown failed: reported as a teardown error
                this, longrepr = "failed", f"teardown before {nextitem.nodeid if nextitem else 'the end'}: {error!r}"
        report = pytest.TestReport(item.nodeid, item.location, keywords, this, longrepr, when, [], duration=seconds)
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get(CHILD) and os.environ.get("GALEN_HOME"):  # a child pytest: its parent's home, targets and cache
        torch.set_num_threads(2)
        yield Path(os.environ["GALEN_HOME"])
        return
    home = tmp_path_factory.mktemp("galen_home")
    old = os.environ.get("GALEN_HOME")
    os.environ["GALEN_HOME"] = str(home)
    # local-cpu with a shorter protocol (real timings, 11 interleaved rounds instead of 21, one re-measure instead of
    # two, 0.2 s instead of 2 s between confirmation rounds: a 5-episode search slept 9 of its 50 s): the suite measures
    # hundreds of artifacts and ran 30 min on the CI's noisy machine; benchmarks keep the real one
    targets = tmp_path_factory.mktemp("targets")
    builtin = yaml.safe_load((Path(__file__).resolve().parents[1] / "hardware" / "targets" / "local-cpu.yaml").read_text())
    builtin["measurement"].update(TEST_MEASUREMENT)
    (targets / "local-cpu.yaml").write_text(yaml.safe_dump(builtin))
    os.environ["GALEN_TARGETS"] = str(targets)
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(2)
    yield home
    os.environ.pop("GALEN_TARGETS", None)
    if old is None:
        os.environ.pop("GALEN_HOME", None)
    else:
        os.environ["GALEN_HOME"] = old


@pytest.fixture(scope="session")
def fmnist():
    """Fashion-MNIST from the real system install (make setup installs Debian's dataset-fashion-mnist)."""
    from workloads.datasets import load_dataset

    assert FMNIST_SYSTEM_DIR.is_dir(), "Fashion-MNIST system install missing: apt-get install dataset-fashion-mnist (make setup does)"
    return load_dataset("fashion-mnist", val_size=5000, seed=0, allow_download=False)


@pytest.fixture(scope="session")
def trained_resnet20(fmnist):
    """ResNet-20 trained for one epoch on 25,000 Fashion-MNIST images (55 s on 2 cores, 82.8% test accuracy; the full
    55,000 took 150 s of the suite's time), stored in the test GALEN_HOME."""
    from workloads.base import obtain_base_model
    from workloads.training import Recipe

    return obtain_base_model("resnet20", "fashion-mnist", Recipe(epochs=1, train_limit=25_000), 0, data=fmnist, progress=False)
