"""Search methods: the RLlib agents (SAC with the broadcast reward, its replay and exploration schedule; PPO), the
black-box baselines (uniform grid, random, TPE, NSGA-II, GP-BO, the uniform safety net), the episode recorder and
callbacks, and the actor read-out of a checkpoint."""
