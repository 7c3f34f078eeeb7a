"""Gymnasium environments for pruning, quantization and joint compression (``galen/Prune-v0``, ``galen/Quantize-v0``,
``galen/Joint-v0``), with their observation features, sensitivity analysis and rewards.

Importing this package registers the three ids with Gymnasium in this process (by name: the env module, and with it
torch, loads when an env is made or a class below is first used, so ``envs.record`` and ``envs.config`` stay light for
the recorder and the readers of run directories). RLlib's remote env runners do not see a driver's registration: pass
the class (``envs.JointEnv``) as the env instead.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

ENV_CLASS_NAMES = {"galen/Prune-v0": "PruneEnv", "galen/Quantize-v0": "QuantizeEnv", "galen/Joint-v0": "JointEnv"}
_LAZY = {
    **dict.fromkeys(("ENV_IDS", "CompressionEnv", "JointEnv", "PruneEnv", "QuantizeEnv", "register"), "envs.compression_env"),
    **dict.fromkeys(("EnvConfig", "EnvConfigError"), "envs.config"),
}

__all__ = ["ENV_IDS", "CompressionEnv", "EnvConfig", "EnvConfigError", "JointEnv", "PruneEnv", "QuantizeEnv", "register"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'envs' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


for _id, _name in ENV_CLASS_NAMES.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=f"envs.compression_env:{_name}")
