"""Gymnasium environments for pruning, quantization and joint compression (``galen/Prune-v0``, ``galen/Quantize-v0``,
``galen/Joint-v0``), with their observation features, sensitivity analysis and rewards.

Importing this package registers the three ids with Gymnasium in this process. RLlib's remote env
runners do not see a driver's registration: pass the class (``envs.JointEnv``) as the env instead.
"""

from envs.compression_env import ENV_IDS, CompressionEnv, JointEnv, PruneEnv, QuantizeEnv, register
from envs.config import EnvConfig, EnvConfigError

register()

__all__ = ["ENV_IDS", "CompressionEnv", "EnvConfig", "EnvConfigError", "JointEnv", "PruneEnv", "QuantizeEnv", "register"]
