"""The one typed configuration of the compression environments, validated with messages that name the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from envs.objectives import OBJECTIVES as OBJECTIVE_REGISTRY
from envs.rewards import REWARDS as REWARD_FUNCTIONS
from workloads.datasets.preprocess import Preprocessing, PreprocessingError

KINDS = ("prune", "quantize", "joint", "two-stage")  # two-stage: a search of a prune env, then a quantize env (experiments.stages)
OBJECTIVES = tuple(OBJECTIVE_REGISTRY)  # envs.objectives.OBJECTIVES: one entry adds an objective
REWARDS = tuple(REWARD_FUNCTIONS)  # envs.rewards.REWARDS: one entry adds a reward
LATENCY_SOURCES = ("measure", "predict")
WALL_MODES = ("paced", "relative", "clamp")
PRECISION_ALIGN = ("layer", "block", "stage")
PREPROCESSING_FIELDS = ("input_size", "pad", "mean", "std", "normalize", "transform")


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the field and the allowed values.

    ``field`` / ``value`` / ``allowed`` are kept so that an outer config (a search's YAML) can re-word it.
    """

    def __init__(self, where: str, name: str, value: Any, allowed: str, unknown: bool = False) -> None:
        self.where, self.field, self.value, self.allowed, self.unknown = where, name, value, allowed, unknown
        if unknown:
            super().__init__(f"{where}: unknown field {name!r}; allowed fields: {allowed}")
        else:
            super().__init__(f"{where}: field '{name}' is {value!r}; allowed: {allowed}")

    def reworded(self, where: str, prefix: str) -> ConfigError:
        return type(self)(where, prefix + self.field, self.value, self.allowed, self.unknown)


class EnvConfigError(ConfigError):
    """A value of the env config that is not allowed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) == 1 and not kwargs:  # a free-form message (checkpoint/model mismatches)
            self.where, self.field, self.value, self.allowed, self.unknown = "env config", "", None, "", False
            ValueError.__init__(self, args[0])
        else:
            super().__init__(*args, **kwargs)


@dataclass(frozen=True)
class EnvConfig:
    """Everything an environment needs; every field has a default, so ``EnvConfig()`` is the embedded demo."""

    kind: str = "joint"  # prune | quantize | joint (set by the registered env id) | two-stage (a search, experiments.stages)
    model: str = "resnet20"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    checkpoint: str | None = None  # a checkpoint directory; None: the store's entry for (model, dataset, base_epochs, seed)
    weights: str | None = None  # the user's trained weights: a state-dict file (torch.save(model.state_dict())), not the store
    # the inputs the user's model expects (with weights only; None / true: the dataset's own; see workloads.datasets.preprocess)
    input_size: int | None = None  # side of the square images the model sees
    pad: int | None = None  # zero border in pixels inside input_size (Fashion-MNIST's own: 2, 28x28 -> 32x32)
    mean: tuple[float, ...] | None = None  # per channel (or one for all), in [0, 1] units
    std: tuple[float, ...] | None = None
    normalize: bool = True  # false: pixels in [0, 1]
    transform: str | None = None  # package.module:callable on each [0, 1] batch (B, C, H, W), instead of mean/std
    base_epochs: int = 5  # recipe epochs of the store entry used when checkpoint is None
    train_base: bool = False  # train and store the base model when the store lacks it (else: an error)
    target: str = "local-cpu"
    objective: str = "latency"  # the cost C: latency | macs | bops | bytes
    target_ratio: float = 0.25  # T = target_ratio x C(uncompressed)
    reward: str = "accuracy"  # accuracy within budget (envs.rewards); galen: Galen's acc - 5|C/T - 1|
    budget_guard: bool = True  # the action wall and the repair pass (envs.wall): every episode feasible by construction
    fill: bool = True  # with the wall: after the repair, widen groups while the predicted cost stays within the limit
    repair_rounds: int = 2  # latency: times the repair pass may go on when the target measures the repaired policy over budget
    precision_align: str = "layer"  # layer: each its own precision; block | stage: a block's / stage's first layer decides
    # paced: action 0.5 keeps the widest uniform level the rest can still afford, lower and higher actions go below and
    # above it among the options the wall allows; relative: the action indexes the allowed options; clamp: AMC's clamp
    wall_mode: str = "paced"
    latency_source: str = "measure"  # measure on the target (cache first) or predict with the per-layer table
    val_size: int = 2000  # validation images scored per episode (the first N of the validation split)
    finetune_steps: int = 0  # distillation steps (batch 64) with simulated quantization per episode (0: BN re-estimation only)
    bn_batches: int = 32  # batches of 64 training images for batch-norm re-estimation after pruning
    min_keep: float = 0.1  # keep ratio of action 0 (action 1 keeps everything)
    round_to: int = 8  # kept channels are multiples of this
    sensitivity_images: int = 256
    calibration_images: int = 256
    # torch / ONNX Runtime threads of an episode's build and scoring (the learner waits meanwhile); 0: every core.
    # Several searches sharing a machine (a sweep or study with concurrent trials): 1.
    threads: int = 0
    seed: int = 0
    # the decisions this kind of env does not make, taken from a policy (quantize: its keep ratios; prune: its
    # precisions): a JSON file holding a policy or an episode record (a run's best_policy.json), or the policy's JSON
    # text. The two-stage search passes stage 1's best policy to stage 2 this way.
    base_policy: str | None = None
    # N2N-style block removal: residual blocks with an identity shortcut may be dropped whole (keep ratio 0 for the
    # group inside each; compression.blocks), so the artifact loses their operators too (prune and joint envs).
    # "needed": a block may be dropped only where channel pruning cannot meet the budget any more (the remaining units
    # at their narrowest keep would not fit); true: wherever the wall allows it.
    block_drop: bool | str = False

    @property
    def measured_objective(self) -> bool:
        """Is the objective timed on the target (latency), rather than computed from the compressed model?"""
        return OBJECTIVE_REGISTRY[self.objective].measured

    def __post_init__(self) -> None:
        choices = {
            "kind": KINDS,
            "objective": OBJECTIVES,
            "reward": REWARDS,
            "latency_source": LATENCY_SOURCES,
            "wall_mode": WALL_MODES,
            "precision_align": PRECISION_ALIGN,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise EnvConfigError("env config", name, value, ", ".join(allowed))
        ranges = {
            "target_ratio": (0 < self.target_ratio <= 1, "a number in (0, 1]"),
            "min_keep": (0 < self.min_keep <= 1, "a number in (0, 1]"),
            "val_size": (self.val_size >= 1, "an integer >= 1"),
            "finetune_steps": (self.finetune_steps >= 0, "an integer >= 0"),
            "bn_batches": (self.bn_batches >= 0, "an integer >= 0"),
            "repair_rounds": (self.repair_rounds >= 0, "an integer >= 0"),
            "base_epochs": (self.base_epochs >= 1, "an integer >= 1"),
            "round_to": (self.round_to >= 1, "an integer >= 1"),
            "sensitivity_images": (self.sensitivity_images >= 1, "an integer >= 1"),
            "calibration_images": (self.calibration_images >= 1, "an integer >= 1"),
            "threads": (self.threads >= 0, "an integer >= 0 (0: every core)"),
        }
        for name, (ok, allowed) in ranges.items():
            if not ok:
                raise EnvConfigError("env config", name, getattr(self, name), allowed)
        if self.weights is not None and self.checkpoint is not None:
            raise EnvConfigError("env config", "weights", self.weights, "a state-dict file, or the checkpoint field, not both")
        if not isinstance(self.block_drop, bool) and self.block_drop != "needed":
            raise EnvConfigError("env config", "block_drop", self.block_drop, "true, false or 'needed'")
        if self.base_policy is not None:
            load_base_policy(self.base_policy)  # raises naming the field
        for name in ("weights", "checkpoint"):
            if getattr(self, name) is not None and (not isinstance(getattr(self, name), str) or not getattr(self, name)):
                raise EnvConfigError("env config", name, getattr(self, name), "a path (a non-empty string) or null")
        for name in ("mean", "std"):  # YAML lists (or one number) -> tuples, so that the config stays hashable
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                object.__setattr__(self, name, (float(value),))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        try:
            pre = self.preprocessing
        except PreprocessingError as error:
            raise EnvConfigError("env config", error.field, error.value, error.allowed) from None
        if not pre.is_default and self.weights is None:
            changed = [f for f in PREPROCESSING_FIELDS if getattr(self, f) != getattr(Preprocessing(), f)]
            raise EnvConfigError(
                "env config",
                changed[0],
                getattr(self, changed[0]),
                "the dataset's own (null) unless the model is your own (the weights field): the stored base models "
                "were trained on each dataset's own inputs",
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EnvConfig:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EnvConfigError("env config", unknown[0], data[unknown[0]], ", ".join(sorted(known)), unknown=True)
        return cls(**data)

    @property
    def preprocessing(self) -> Preprocessing:
        """The inputs the model expects (raises PreprocessingError for values that do not go together)."""
        return Preprocessing(**{f: getattr(self, f) for f in PREPROCESSING_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("mean", "std"):  # lists, for YAML
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    def context_key(self) -> tuple:
        """What the shared, expensive part of an env depends on (not the kind, reward or budget)."""
        fields = (
            "model",
            "dataset",
            "data_dir",
            "checkpoint",
            "weights",
            *PREPROCESSING_FIELDS,
            "base_epochs",
            "target",
            "val_size",
            "seed",
            "round_to",  # the predictor's layer specs and the sensitivity depend on round_to and min_keep
            "min_keep",
            "block_drop",  # the predictor's calibration models (without some blocks when on)
            "sensitivity_images",
            "calibration_images",
            "objective",
        )
        return tuple(bool(self.block_drop) if f == "block_drop" else getattr(self, f) for f in fields)


def load_base_policy(value: str | None) -> Any:
    """The ``base_policy`` field's policy (a ``CompressionPolicy``; the empty policy for None)."""
    import json
    from pathlib import Path

    from compression.policy import CompressionPolicy

    if value is None:
        return CompressionPolicy()
    if not isinstance(value, str) or not value.strip():
        raise EnvConfigError(
            "env config", "base_policy", value, "a policy JSON file (e.g. a run's best_policy.json), a policy's JSON text, or null"
        )
    try:
        data = json.loads(value) if value.lstrip().startswith("{") else json.loads(Path(value).read_text())
        return CompressionPolicy.from_dict(data.get("policy", data) if isinstance(data, dict) else data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        shown = value if len(value) < 80 else value[:77] + "..."
        raise EnvConfigError(
            "env config",
            "base_policy",
            shown,
            f"a policy JSON file (e.g. a run's best_policy.json), a policy's JSON text, or null ({error})",
        ) from None
