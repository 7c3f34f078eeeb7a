"""Latency predictor: a per-layer lookup table measured on the target, plus whole-model calibration.

As in HAQ/APQ, each distinct layer (shape x precision) is built as a one-layer ONNX artifact
(``hardware.layers``) and timed once on the target through the ``LatencyClient``, interleaved with a
fixed reference layer (``TABLE_REFERENCE``): the entry is the median ratio times the reference's own
time (timed once), so the machine's drift between entries cancels; the table is the latency cache
itself, so it persists and is shared like every other measurement. A model's raw
estimate is the sum of its layers' entries, split into the fp32 and the int8 parts. The sum misses
what lies between layers (residual additions, pooling, quantize/dequantize at precision changes,
session overhead) and counts the per-call overhead once per layer, so a few whole models measured on
the target calibrate it: ``latency ~ a * fp32_sum + b * int8_sum + d * switch``, where ``switch``
counts the activations converted where consecutive layers change precision, fitted to minimise
relative error. ``predict`` then needs no artifact at all: the layer specs come from
``compression.plan.layer_specs(structure, policy)`` in microseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hardware.client import LatencyClient
from hardware.layers import LayerShape, layer_artifact

Specs = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class Calibration:
    """``ms = fp32_scale * fp32_sum + int8_scale * int8_sum + switch_scale * switch_kelems + offset_ms``, and its fit."""

    fp32_scale: float = 1.0
    int8_scale: float = 1.0
    switch_scale: float = 0.0  # ms per thousand activation values converted at a precision change
    samples: int = 0
    fit_mape: float | None = None  # mean absolute percentage error on the calibration models themselves
    offset_ms: float = 0.0  # per model, either sign: the table counts each one-layer artifact's call overhead once per layer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(self, features: Sequence[float]) -> float:
        fp32, int8, switch = features
        return self.fp32_scale * fp32 + self.int8_scale * int8 + self.switch_scale * switch + self.offset_ms


def _nonnegative_fit(design: np.ndarray, target: np.ndarray, free: int | None = None) -> np.ndarray:
    """Least squares with coefficients >= 0 (but column ``free``): drop the most negative one and refit until none is."""
    active = list(range(design.shape[1]))
    while True:
        coef = np.zeros(design.shape[1])
        coef[active], *_ = np.linalg.lstsq(design[:, active], target, rcond=None)
        bounded = [i for i in active if i != free]
        if not bounded or min(coef[bounded]) >= 0 or len(active) == 1:
            return np.array([c if i == free else max(c, 0.0) for i, c in enumerate(coef)])
        active.remove(min(bounded, key=lambda i: coef[i]))


def mape(predicted: Iterable[float], measured: Iterable[float]) -> float:
    """Mean absolute percentage error, in percent."""
    p, m = np.asarray(list(predicted), float), np.asarray(list(measured), float)
    return float(np.mean(np.abs(p - m) / m) * 100)


class LatencyPredictor:
    """Predicts a model's latency on ``client``'s target from its layer specs."""

    OFFSET_SAMPLES = 12  # calibration models needed before the per-model offset is fitted too (8 made it unstable)
    # Every table entry is timed interleaved with this layer and stored as ratio x its time. Timed alone, the entries
    # drifted with the shared machine: one disturbed timing put the 48-channel int8 3x3 conv of ResNet-20's last stage
    # at 0.0279 ms between 0.0140 (32 channels) and 0.0194 (64), the predictor at 0.565 for a network that measured
    # 0.453, and the action wall never allowed 48 channels there, the width of the best uniform policy (AMX Xeon;
    # repeated, the interleaved ratios were 0.46 / 0.50 / 0.58 while the same layers' own medians spread 1.5x).
    TABLE_REFERENCE = LayerShape("conv", 32, 32, (3, 3), (1, 1), 1, (8, 8), (8, 8), False)

    def __init__(
        self, client: LatencyClient | Callable[[], LatencyClient], calibration: Calibration | None = None, progress: bool | None = None
    ) -> None:
        self._client = client  # or what gives the present one (``EnvContext.client``: made anew in another Ray connection)
        self.calibration = calibration or Calibration()
        self.progress = progress  # None: bars only on a terminal
        self._table: dict[LayerShape, float] = {}
        self._reference: tuple[bytes, float] | None = None

    @property
    def client(self) -> LatencyClient:
        """What new table entries are timed through (asked for only then: a prediction from the table needs none)."""
        return self._client() if callable(self._client) else self._client

    def _table_reference(self) -> tuple[bytes, float]:
        """The table's reference layer artifact and its median time (ms, timed once, then from the cache)."""
        if self._reference is None:
            data = layer_artifact(self.TABLE_REFERENCE)
            self._reference = (data, self.client.measure(data).candidate.median_ms)
        return self._reference

    @property
    def table(self) -> dict[LayerShape, float]:
        """The lookup table entries used so far (layer -> median ms)."""
        return dict(self._table)

    def layer_ms(self, spec: dict[str, Any] | LayerShape) -> float:
        """Latency of one layer on the target (ms): its median ratio to ``TABLE_REFERENCE``, timed interleaved with it,
        times the reference's time (timed once, then from the table or the latency cache)."""
        shape = spec if isinstance(spec, LayerShape) else LayerShape.from_spec(spec)
        if shape not in self._table:
            reference, reference_ms = self._table_reference()
            self._table[shape] = self.client.measure(layer_artifact(shape), reference).ratio * reference_ms
        return self._table[shape]

    def fill(self, models: Iterable[Specs]) -> int:
        """Time every layer of ``models`` missing from the table (with a progress bar); returns how many were new."""
        missing = {LayerShape.from_spec(s) for specs in models for s in specs} - set(self._table)
        for shape in tqdm(
            sorted(missing, key=lambda s: s.key),
            desc="latency table",
            unit="layer",
            disable=None if self.progress is None else not self.progress,
        ):
            self.layer_ms(shape)
        return len(missing)

    def features(self, specs: Specs) -> tuple[float, float, float]:
        """Raw table estimate of a model: its fp32 layers' sum (ms), its int8 layers' sum (ms), and the thousands of
        activation values at precision changes (consecutive layers in execution order that differ: a quantize or
        dequantize the one-layer entries do not see)."""
        fp32 = int8 = switch = 0.0
        previous = None
        for spec in specs:
            shape = LayerShape.from_spec(spec)
            if shape.int8:
                int8 += self.layer_ms(shape)
            else:
                fp32 += self.layer_ms(shape)
            if previous is not None and previous != shape.int8:
                switch += shape.in_channels * shape.input_hw[0] * shape.input_hw[1] / 1e3
            previous = shape.int8
        return fp32, int8, switch

    def calibrate(self, samples: Sequence[tuple[Specs, float]], anchor: int | Sequence[int] | None = None) -> Calibration:
        """Fit the calibration to whole models measured on the target: (layer specs, measured median ms) pairs.

        With three or more models the three coefficients are fitted (least squares on relative error, all
        kept >= 0); with ``OFFSET_SAMPLES`` (12) or more, a per-model offset of either sign as well; with fewer than
        three, a single scale of the table's sum is. The offset is what the table's sum cannot express: every
        one-layer artifact carries the call overhead the whole model pays once, so the sum over-counts it most
        for narrow models (ResNet-20 at 10% keep, fp32: predicted 59% without it, 49% with it, measured 40-50%;
        AMX Xeon, 14 calibration models plus 51 search episodes: episodes' MAPE 9.7% -> 6.6%, leave-one-out on
        the calibration models 7.8% -> 6.0%). ``anchor``: index (or indices) of samples weighted 10x so that the
        fit passes through them and never drops them: the reference model (the uncompressed one), so that
        ``predict_ratio`` is not biased by the error at the reference (ResNet-20: ratio MAPE 10.3% -> 8.8%), and
        the cheapest extremes, where an action wall decides what is feasible.
        """
        if not samples:
            raise ValueError("calibration needs at least one measured model")
        features = np.array([self.features(specs) for specs, _ in samples])
        measured = np.array([ms for _, ms in samples], float)
        offset = 0.0
        if len(samples) >= 3:
            weights = np.ones(len(samples))
            anchors = [] if anchor is None else [anchor] if isinstance(anchor, int) else list(anchor)
            weights[anchors] = 10.0
            with_offset = len(samples) >= self.OFFSET_SAMPLES
            design = np.column_stack([features, np.ones(len(samples))]) if with_offset else features
            free = 3 if with_offset else None
            coef = _nonnegative_fit(design / measured[:, None] * weights[:, None], weights, free)
            # One robust refit: a timing disturbed by another process (seen here: a ratio 0.66 where repeats gave
            # 0.54) would bend the fit for every policy; samples off by more than max(10%, 3x the median error) go.
            error = np.abs(design @ coef / measured - 1.0)
            keep = error <= max(0.10, 3.0 * float(np.median(error)))
            keep[anchors] = True
            if keep.sum() >= design.shape[1] and not keep.all():
                kept = weights * keep
                coef = _nonnegative_fit(design / measured[:, None] * kept[:, None], kept, free)
            a, b, d = coef[:3]
            offset = float(coef[3]) if with_offset else 0.0
        else:
            a = b = float(np.mean(measured / features[:, :2].sum(axis=1)))
            d = 0.0
        fitted = Calibration(float(a), float(b), float(d), len(samples), offset_ms=offset)
        error = mape([fitted.apply(f) for f in features], measured)
        self.calibration = dataclasses.replace(fitted, fit_mape=error)
        return self.calibration

    def predict(self, specs: Specs) -> float:
        """Predicted median latency (ms) of the model with these layer specs."""
        return self.calibration.apply(self.features(specs))

    def predict_ratio(self, specs: Specs, reference: Specs) -> float:
        """Predicted latency relative to ``reference`` (the uncompressed model's specs)."""
        return self.predict(specs) / self.predict(reference)
