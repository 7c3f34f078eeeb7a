"""Connecting an entry point to Ray, quietly.

Inside ``ray job submit`` (``RAY_ADDRESS`` set) the driver joins the cluster and must not pass ``num_cpus``;
otherwise it starts a local Ray of its own with one CPU per core (never the last cluster started on this machine).
RLlib's and Ray's deprecation and info messages are not for users: Ray's loggers go to ERROR and worker output is
not forwarded (errors still surface as exceptions in the driver).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

QUIET_LOGGERS = ("ray", "ray.rllib", "ray.tune", "ray.train", "ray.data")


def quiet_ray() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def connect(num_cpus: int | None = None, verbose: bool = False, **kwargs: Any) -> bool:
    """``ray.init`` as the entry points need it; returns True when this call started (and so must shut down) Ray."""
    import ray

    if ray.is_initialized():
        return False
    if not verbose:
        quiet_ray()
    options: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose, **kwargs}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**options)  # a cluster (ray job submit): its resources, not ours
    else:
        # "local": a new Ray of our own; without it ray.init joins the cluster /tmp/ray/ray_current_cluster names, and a
        # killed cluster leaves that file behind ("When connecting to an existing cluster, num_cpus ... must not be
        # provided": every later search failed at its start here)
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **options)
    if not verbose:
        quiet_ray()  # ray.init configures its loggers again
    return True


def connect_for(target_name: str, **kwargs: Any) -> bool:
    """``connect`` to the cluster (``RAY_ADDRESS``) when ``target_name`` is timed on Ray nodes (``local: false``): its
    latency client needs the cluster before the env is prepared (the predictor's calibration is timed there). Without
    ``RAY_ADDRESS`` nothing is started: a local Ray has no device node, and the client says how to join one, at once.
    Returns True when this call started Ray."""
    from hardware.targets import get_target

    return False if get_target(target_name).local or not os.environ.get("RAY_ADDRESS") else connect(**kwargs)
