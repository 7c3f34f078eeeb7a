"""RL agents and baselines (later issue): RLlib configs, callbacks, uniform/random/black-box baselines, policy read-out."""
