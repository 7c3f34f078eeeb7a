"""Baselines on the same env and budget as the RL agents: uniform policies, random search, and TPE.

- ``uniform``: one keep ratio and one precision everywhere, swept over a grid (keep ratios from
  ``min_keep`` to 1 for every precision option), the classic hand-tuned baseline. Played without the
  action wall (the policies exactly as a person would set them), each distinct policy once.
- the safety net (:func:`safety_net`): after any search, the best uniform policies the budget
  allows by the env's cost model (the widest keep for each precision) are played too, recorded with
  source ``uniform-safety``, so a search never returns something worse than the uniform policy it
  could have played; reports count them apart from the method's own episodes.
- ``random``: every action uniformly random; episode i uses the generator seeded (seed, i), so a
  resumed run continues the same sequence.
- ``tpe``: black-box search over the policy vector (only the action dimensions the env uses) with
  Ray Tune's Optuna searcher (TPE sampler). A resumed run hands the recorded (actions, reward)
  pairs back to the searcher, so nothing already evaluated is lost or repeated.
- ``nsga2``: evolutionary multi-objective search (Optuna's NSGA-II, as GeneCAI and HAT evolve per-layer
  genotypes) over the same vector, with two objectives (accuracy up, the measured cost ratio down)
  and the budget as a constraint; its episodes' Pareto front is the result, the report draws it.
- ``gp-bo``: Gaussian-process Bayesian optimisation (Optuna's GPSampler) in Condensa's low-dimensional
  setting: one keep action and one precision action per stage (ResNet names ``layers.<stage>.*``;
  other models: four contiguous segments), so that a few dozen samples suffice.

``nsga2`` and ``gp-bo`` run through Optuna's ask/tell; a resumed run adds its recorded episodes to the
study as finished trials first. ``random`` with ``agent.screen`` N > 1 screens N candidates per episode with the
online accuracy predictor (``agents.accuracy``) and plays the one it ranks first.

Every baseline is a :class:`Searcher` (``ask``/``tell``), registered by name in ``agents.config.METHODS``;
:func:`run_baseline` plays any of them.

Each episode is one policy vector played through the env (one action per decision); the env's
final ``info`` is recorded with the actions that produced it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from agents.recorder import EpisodeLog


def play(env: Any, actions: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """One episode with a fixed (units, k) action matrix; returns the final info."""
    env.reset(seed=seed)
    for row in actions:
        _, _, terminated, truncated, info = env.step(row)
        if terminated or truncated:
            return info
    raise RuntimeError(f"the env did not end after {len(actions)} actions")


def _option_action(index: int, count: int) -> float:
    """The action in [0, 1] that selects option ``index`` of ``count`` (the middle of its bin)."""
    return (index + 0.5) / count


def uniform_actions(env: Any, keep: float, precision: int) -> np.ndarray:
    """The (units, k) action matrix of one keep action and precision option index everywhere."""
    count = len(env.ctx.weight_options)
    row = {"prune": [keep], "quantize": [_option_action(precision, count)], "joint": [keep, _option_action(precision, count)]}[env.kind]
    return np.tile(np.array(row, np.float32), (len(env.units), 1))


def uniform_grid(env: Any, episodes: int, steps: int = 0) -> list[np.ndarray]:
    """Distinct uniform policies: for each precision option, ``steps`` keep ratios from min_keep to 1 (all layers alike)."""
    precisions = len(env.ctx.weight_options) if env.kind != "prune" else 1
    if env.kind == "quantize":
        keeps = [1.0]
    else:
        steps = steps or max(1, math.ceil(episodes / precisions))
        keeps = list(np.linspace(0.0, 1.0, steps)) if steps > 1 else [1.0]
    grid, seen = [], set()
    for p in range(precisions):
        for keep in keeps:
            actions = uniform_actions(env, keep, p)
            key = env.decode_policy(actions).to_json()
            if key not in seen:  # channel rounding maps neighbouring keep ratios onto the same policy
                seen.add(key)
                grid.append(actions)
    return grid


def safety_net(env: Any, steps: int = 21, tolerance: float = 0.03) -> list[np.ndarray]:
    """For each precision option, the widest uniform policy within budget on the target (measured, cache first).

    Measured, not predicted: the driver's predictor has not seen the search's episodes (the env runners re-fit
    theirs), and before that it was off by up to 40% on narrow uniform policies (ResNet-20, AMX Xeon: 10% keep
    fp32 predicted 59%, measured 41%). For other objectives the analytic cost decides.
    """
    precisions = len(env.ctx.weight_options) if env.kind != "prune" else 1
    keeps = [1.0] if env.kind == "quantize" else list(np.linspace(1.0, 0.0, steps))
    limit = env.config.target_ratio / (1.0 + tolerance)
    chosen = []
    for p in range(precisions):
        seen = set()
        for keep in keeps:
            actions = uniform_actions(env, keep, p)
            policy = env.decode_policy(actions)
            if policy.to_json() in seen:
                continue
            seen.add(policy.to_json())
            if env.cost_ratio(policy) <= limit:
                chosen.append(actions)
                break
    return chosen


def play_safety_net(env: Any, record: Any) -> int:
    """Play :func:`safety_net` without the wall; ``record(info, source, extra)`` stores each; returns how many."""
    played = 0
    with env.unguarded():
        for actions in safety_net(env):
            record(play(env, actions), "uniform-safety", {"actions": actions.tolist()})
            played += 1
    return played


def _random_actions(env: Any, seed: int, episode: int, candidate: int | None = None) -> np.ndarray:
    rng = np.random.default_rng([seed, episode] if candidate is None else [seed, episode, candidate])
    return rng.uniform(0.0, 1.0, (len(env.units), env.action_space.shape[0])).astype(np.float32)


class Searcher:
    """A baseline as ask/tell: ``ask()`` gives the next episode's (token, action matrix), or None when the method has
    nothing left to play; ``tell(token, info)`` hands back the episode's final info. A resumed run passes the run's
    recorded episodes as ``history``: each method continues where it stopped."""

    guarded = True  # played through the env's action wall (uniform: as a person would set it, without)

    def __init__(self, env: Any, seed: int = 0, history: list[dict[str, Any]] | tuple = (), episodes: int = 0, uniform_steps: int = 0):
        self.env, self.seed, self.episodes, self.done = env, seed, episodes, len(history)

    def ask(self) -> tuple[Any, np.ndarray] | None:
        raise NotImplementedError

    def tell(self, token: Any, info: dict[str, Any]) -> None:
        pass

    def annotate(self, token: Any) -> dict[str, Any]:
        """What the episode's record keeps besides its actions (e.g. the accuracy a screening predicted)."""
        return {}


class UniformGrid(Searcher):
    """Each distinct policy of :func:`uniform_grid` once, in order."""

    guarded = False

    def __init__(self, env: Any, seed: int = 0, history: list[dict[str, Any]] | tuple = (), episodes: int = 0, uniform_steps: int = 0):
        super().__init__(env, seed, history, episodes)
        self.grid = uniform_grid(env, episodes, uniform_steps)

    def ask(self) -> tuple[Any, np.ndarray] | None:
        if self.done >= len(self.grid):
            return None
        self.done += 1
        return self.done - 1, self.grid[self.done - 1]


class RandomSearch(Searcher):
    """Uniform random actions; episode i draws from the generator seeded (seed, i).

    With ``screen`` > 1 (``agent.screen``), APQ-style: once the run has :attr:`AccuracyPredictor.MIN_EPISODES` episodes,
    each episode draws ``screen`` candidates (generators seeded (seed, i, j)), plans each through the wall
    (``env.planned_policy``: no build, no timing), and plays the one the accuracy predictor, refitted on every episode
    so far, ranks first; the record keeps its ``predicted_accuracy``.
    """

    def __init__(
        self,
        env: Any,
        seed: int = 0,
        history: list[dict[str, Any]] | tuple = (),
        episodes: int = 0,
        uniform_steps: int = 0,
        screen: int = 0,
    ):
        super().__init__(env, seed, history, episodes)
        self.screen = screen
        if screen > 1:
            from agents.accuracy import AccuracyPredictor

            self.records = [r for r in history if r.get("source") != "uniform-safety"]
            self.predictor = AccuracyPredictor.for_env(env).fit(self.records)

    def ask(self) -> tuple[Any, np.ndarray] | None:
        i = self.done
        self.done += 1
        if self.screen <= 1 or not self.predictor.ready:
            return (i, None), _random_actions(self.env, self.seed, i)
        candidates = [_random_actions(self.env, self.seed, i, j) for j in range(self.screen)]
        predicted = self.predictor.predict([self.env.planned_policy(a) for a in candidates])
        best = int(np.argmax(predicted))
        return (i, float(predicted[best])), candidates[best]

    def annotate(self, token: Any) -> dict[str, Any]:
        return {} if token[1] is None else {"predicted_accuracy": token[1]}

    def tell(self, token: Any, info: dict[str, Any]) -> None:
        if self.screen > 1:
            self.records.append(info)
            self.predictor.fit(self.records)


class TPESearch(Searcher):
    """Optuna's TPE through Ray Tune's searcher interface, over the env's used action dimensions."""

    def __init__(self, env: Any, seed: int = 0, history: list[dict[str, Any]] | tuple = (), episodes: int = 0, uniform_steps: int = 0):
        super().__init__(env, seed, history, episodes)
        import optuna
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.mask = env.action_mask()
        self.shape = self.mask.shape
        self.names = [f"u{i:03d}_d{d}" for i, d in zip(*np.nonzero(self.mask), strict=True)]
        space = {name: tune.uniform(0.0, 1.0) for name in self.names}
        points = [self._to_point(np.asarray(r["actions"], np.float32)) for r in history if "actions" in r]
        rewards = [r["reward"] for r in history if "actions" in r]
        self.searcher = OptunaSearch(
            space=space,
            metric="reward",
            mode="max",
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=10),
            points_to_evaluate=points or None,
            evaluated_rewards=rewards or None,
        )
        self._trial = 0

    def _to_point(self, actions: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.names, actions[self.mask], strict=True)}

    def ask(self) -> tuple[str, np.ndarray]:
        trial_id = f"t{self._trial}"
        self._trial += 1
        point = self.searcher.suggest(trial_id)
        actions = np.ones(self.shape, np.float32)  # unused dimensions: 1 (ignored by the env)
        actions[self.mask] = [point[name] for name in self.names]
        return trial_id, actions

    def tell(self, trial_id: str, info: dict[str, Any]) -> None:
        self.searcher.on_trial_complete(trial_id, {"reward": info["reward"]})


def stage_groups(env: Any) -> list[list[int]]:
    """Unit indices per stage: ``layers.<stage>.*`` names group by stage (the stem and the classifier each their own);
    models named otherwise: four contiguous segments."""
    groups: dict[str, list[int]] = {}
    for i, unit in enumerate(env.units):
        parts = unit.split(".")
        groups.setdefault(".".join(parts[:2]) if parts[0] == "layers" and len(parts) > 2 else unit, []).append(i)
    if len(groups) <= 8:
        return list(groups.values())
    n = len(env.units)
    bounds = [round(j * n / 4) for j in range(5)]
    return [list(range(bounds[j], bounds[j + 1])) for j in range(4) if bounds[j] < bounds[j + 1]]


class OptunaAskTell(Searcher):
    """Optuna's NSGA-II or GP sampler over the env's used action dimensions (``gp-bo``: one per stage), ask/tell."""

    method = ""

    def __init__(self, env: Any, seed: int = 0, history: list[dict[str, Any]] | tuple = (), episodes: int = 0, uniform_steps: int = 0):
        import optuna

        super().__init__(env, seed, history, episodes)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        method, self.target = self.method, env.config.target_ratio
        self.mask = env.action_mask()
        k = self.mask.shape[1]
        # each parameter: its name and the (unit, dim) cells of the action matrix it sets
        if method == "gp-bo":
            self.params = []
            for g, units in enumerate(stage_groups(env)):
                for d, label in ((0, "keep"), (k - 1, "precision")):
                    cells = [(i, d) for i in units if self.mask[i, d]]
                    if cells:
                        self.params.append((f"s{g}_{label}", cells))
        else:
            self.params = [(f"u{i:03d}_d{d}", [(i, d)]) for i, d in zip(*np.nonzero(self.mask), strict=True)]
        if method == "nsga2":
            population = min(50, max(8, episodes // 8))  # several generations within the run's episodes
            # the budget as a constraint (Optuna 5's core API: a trial's constraints, feasible at <= 0)
            sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
            directions = ["maximize", "minimize"]
        elif method == "gp-bo":
            sampler, directions = optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(10, max(2, episodes // 5))), ["maximize"]
        else:
            raise ValueError(f"agent config: field 'algo' is {method!r}; Optuna ask/tell methods: nsga2, gp-bo")
        self.study = optuna.create_study(directions=directions, sampler=sampler)
        self.distributions = {name: optuna.distributions.FloatDistribution(0.0, 1.0) for name, _ in self.params}
        for record in history:  # a resumed run: what was evaluated comes back as finished trials
            if "actions" in record:
                actions = np.asarray(record["actions"], np.float32)
                params = {name: float(actions[cells[0]]) for name, cells in self.params}
                trial = optuna.trial.create_trial(
                    params=params,
                    distributions=self.distributions,
                    values=self._values(record),
                    user_attrs=self._attrs(record),
                    constraints=self._attrs(record) if self.method == "nsga2" else None,
                )
                self.study.add_trial(trial)

    def _values(self, info: dict[str, Any]) -> list[float]:
        return [float(info["reward"]), float(info["cost_ratio"])] if self.method == "nsga2" else [float(info["reward"])]

    def _attrs(self, info: dict[str, Any]) -> dict[str, float]:
        return {"over_budget": float(info["cost_ratio"]) / self.target - 1.0}

    def ask(self) -> tuple[Any, np.ndarray]:
        trial = self.study.ask(self.distributions)
        actions = np.ones(self.mask.shape, np.float32)  # unused dimensions: 1 (ignored by the env)
        for name, cells in self.params:
            for cell in cells:
                actions[cell] = trial.params[name]
        return trial, actions

    def tell(self, trial: Any, info: dict[str, Any]) -> None:
        for key, value in self._attrs(info).items():
            trial.set_user_attr(key, value)
            if self.method == "nsga2":
                trial.set_constraint(key, value)
        self.study.tell(trial, self._values(info))


class NSGA2Search(OptunaAskTell):
    method = "nsga2"


class GPBOSearch(OptunaAskTell):
    method = "gp-bo"


def run_baseline(
    method: str, env: Any, log_: EpisodeLog, episodes: int, seed: int, uniform_steps: int = 0, on_episode: Any = None, screen: int = 0
) -> int:
    """Play the baseline's remaining episodes (``episodes`` in all, counting those already in ``log_``); returns how many ran.
    ``screen``: candidates per episode screened by the accuracy predictor (methods that support it: random)."""
    from agents.config import METHODS

    if method not in METHODS or METHODS[method].rl:
        raise ValueError(f"agent config: field 'algo' is {method!r}; baselines: {', '.join(m for m in METHODS if not METHODS[m].rl)}")
    options = {"screen": screen} if screen else {}
    search = METHODS[method].load()(env, seed=seed, history=log_.records, episodes=episodes, uniform_steps=uniform_steps, **options)
    ran = 0
    for _ in range(log_.count(), episodes):
        proposal = search.ask()
        if proposal is None:
            break
        token, actions = proposal
        if search.guarded:
            info = play(env, actions, seed)
        else:
            with env.unguarded():
                info = play(env, actions, seed)
        record = log_.record(info, method, {"actions": actions.tolist(), **search.annotate(token)})
        search.tell(token, info)
        ran += 1
        if on_episode:
            on_episode(record)
    return ran
