"""Feasibility by construction: the action wall that clamps every step, and the repair pass after the last.

AMC (He et al., 2018, ``amc/env/channel_pruning_env.py``) bounds each action so that the layers still
to come, compressed as far as they can be, can meet the target; HAQ (Wang et al., 2019) repairs a
finished policy down to its latency budget with its lookup table. Here both run on one cost model
(``cost(policy)``: the calibrated per-layer latency predictor, or MACs/BOPs/bytes computed from the
structure), so a policy's cost is known in microseconds before anything is built.

A step chooses among a unit's *options* (a kept channel count per pruning group, a precision per
layer, or both). The wall allows the options for which

- the budget stays reachable: the cost with this option and every later unit at its cheapest
  completion is within the limit (an upper bound on the compression that remains: AMC's wall).
  The cheapest completion is the cheapest of the *corners* (every later unit at the smallest or the
  largest keep ratio, with one precision), not simply the most compressed: on an Intel Xeon with AMX
  here, ResNet-20 at 10% keep and int8 measured 58% of the uncompressed latency, full width int8
  54%, and half width int8 65% (int8 kernels on narrow layers are slow). For each precision the
  rest at that precision at five keep positions (``COMPLETION_LEVELS``) is tried too, since the
  cheapest int8 network may sit between the corners;
- nothing is compressed more than the budget needs: the cost with this option and every later unit
  uncompressed is not below the largest such cost that is within the limit (a lower bound).

The requested option is kept when allowed, otherwise the allowed option closest to it in action
space is taken. If no option can reach the budget (a budget below the model's floor), the most
compressed one is. The repair pass then lowers, while the cost is over the limit, the decision
whose next option buys the most cost per unit of sensitivity lost; the fill pass, its mirror, widens
while the cost stays within the limit the group whose next wider keep recovers the most sensitivity
per unit of cost added, so that no episode leaves budget unused.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from compression.policy import CompressionPolicy, Precision


@dataclass(frozen=True)
class Option:
    """One choice for a unit: a keep ratio (None: the unit does not prune) and a precision (None: does not quantize)."""

    keep: float | None
    precision: Precision | None


def by_compression(precisions: Iterable[Precision | None]) -> list[Precision | None]:
    """Distinct precisions, most compressed first (None, a unit that decides none, before all)."""
    return sorted(set(precisions), key=lambda p: -1 if p is None else p.weight_bits)


CostFn = Callable[[CompressionPolicy], float]
LossFn = Callable[[str, Option], float]


def merged(policy: CompressionPolicy, unit_keep: dict[str, float], unit_precision: dict[str, Precision]) -> CompressionPolicy:
    return CompressionPolicy({**policy.keep, **unit_keep}, {**policy.precision, **unit_precision})


class Wall:
    """The action wall and the repair pass of one env (units in decision order, their options, the cost model)."""

    def __init__(
        self,
        units: Sequence[str],
        options: dict[str, list[Option]],
        keep_unit: dict[str, str | None],
        precision_unit: dict[str, str | None],
        cost: CostFn,
    ) -> None:
        self.units = list(units)
        self.options = options  # per unit, from most to least compressed
        self.keep_unit = keep_unit  # unit -> the group it decides (None: it decides no keep ratio)
        self.precision_unit = precision_unit  # unit -> the layer it decides (None: no precision)
        self.cost = cost

    def _with(self, policy: CompressionPolicy, unit: str, option: Option) -> CompressionPolicy:
        keep = {self.keep_unit[unit]: option.keep} if option.keep is not None and self.keep_unit[unit] else {}
        precision = {self.precision_unit[unit]: option.precision} if option.precision is not None and self.precision_unit[unit] else {}
        return merged(policy, keep, precision)

    def corner(self, unit: str, index: int) -> Option:
        """Corner ``index`` of a unit: (smallest | largest keep) x each precision, in that order."""
        return self.completion(unit, float(index % 2), index // 2)

    @property
    def corners(self) -> int:
        return 2 * max(len({o.precision for o in self.options[u]}) for u in self.units)

    def _rest(self, policy: CompressionPolicy, after: int, option_of: Callable[[str], Option]) -> CompressionPolicy:
        for unit in self.units[after:]:
            policy = self._with(policy, unit, option_of(unit))
        return policy

    def rest_at(self, policy: CompressionPolicy, after: int, corner: int = 0) -> CompressionPolicy:
        """``policy`` with every unit from index ``after`` on at corner ``corner`` (0: the most compressed)."""
        return self._rest(policy, after, lambda unit: self.corner(unit, corner))

    # Keep levels of the completions the wall tries (positions in each unit's keep options, smallest to largest):
    # the cheapest int8 network is not at a corner on CPUs whose int8 kernels are slow on narrow layers.
    COMPLETION_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)

    def precisions_of(self, unit: str) -> list[Precision | None]:
        """The unit's precisions, most compressed first (None: it decides none)."""
        return by_compression(o.precision for o in self.options[unit])

    def completion(self, unit: str, level: float, precision: int) -> Option:
        """A unit at keep position ``level`` (0: its smallest keep, 1: its largest) and its ``precision``-th precision."""
        keeps = sorted({o.keep for o in self.options[unit]}, key=lambda k: -1.0 if k is None else k)
        precisions = self.precisions_of(unit)
        return Option(keeps[round(level * (len(keeps) - 1))], precisions[precision % len(precisions)])

    def rest_with(self, policy: CompressionPolicy, after: int, level: float, precision: int) -> CompressionPolicy:
        """``policy`` with every unit from index ``after`` on at ``completion(unit, level, precision)``."""
        return self._rest(policy, after, lambda unit: self.completion(unit, level, precision))

    def rest_at_most(self, policy: CompressionPolicy, after: int) -> CompressionPolicy:
        """``policy`` with every unit from index ``after`` on at its cheapest corner (by the cost model)."""
        return min((self.rest_at(policy, after, c) for c in range(self.corners)), key=self.cost)

    def keep_at(self, unit: str, ratio: float) -> float | None:
        """The unit's largest keep ratio not above ``ratio`` (its smallest if all are; None if it decides no keep)."""
        keeps = sorted({o.keep for o in self.options[unit] if o.keep is not None})
        if not keeps:
            return None
        below = [k for k in keeps if k <= ratio + 1e-9]
        return below[-1] if below else keeps[0]

    def pace(self, decided: CompressionPolicy, index: int, limit: float, precision: int) -> float | None:
        """The widest uniform keep ratio r at which unit ``index`` and every later unit (each at ``keep_at(unit, r)`` and
        its ``precision``-th precision) still fit ``limit`` with the ``decided`` earlier units; None when none does.

        ``wall_mode: paced`` puts action 0.5 there: an agent that plays 0.5 everywhere plays the widest uniform policy the
        budget allows, and lower or higher actions move budget between layers. In ``relative`` mode an early wide choice
        starved the last stage (ResNet-20 at 50%: its residual width forced to 16 of 64 channels in most episodes, 27-40%
        accuracy, where the uniform 48 channels scored 78%).
        """
        later = self.units[index:]
        ratios = sorted({o.keep for u in later for o in self.options[u] if o.keep is not None})
        fits = [r for r in ratios if self.cost(self._rest(decided, index, lambda u, r=r: self._uniform(u, r, precision))) <= limit]
        return fits[-1] if fits else None

    def fits_without_drops(self, decided: CompressionPolicy, index: int, limit: float) -> bool:
        """Whether unit ``index`` and every later unit at its narrowest keep that drops no block (all at their
        ``q``-th precision, for any ``q``) still fit ``limit`` with the ``decided`` earlier units: channel pruning alone
        can still meet the budget (``block_drop: needed``)."""

        def narrowest(unit: str, precision: int) -> Option:
            keeps = sorted({o.keep for o in self.options[unit] if o.keep})  # neither None (no keep decided) nor 0 (a drop)
            precisions = self.precisions_of(unit)
            return Option(keeps[0] if keeps else None, precisions[min(precision, len(precisions) - 1)])

        levels = max((len(self.precisions_of(u)) for u in self.units[index:]), default=1)
        return any(self.cost(self._rest(decided, index, lambda u, q=q: narrowest(u, q))) <= limit for q in range(levels))

    def _uniform(self, unit: str, ratio: float, precision: int) -> Option:
        precisions = self.precisions_of(unit)
        return Option(self.keep_at(unit, ratio), precisions[min(precision, len(precisions) - 1)])

    def bounds(self, decided: CompressionPolicy, index: int, limit: float) -> list[Option]:
        """The options the wall allows at unit ``index`` given the ``decided`` earlier units."""
        unit = self.units[index]
        options = self.options[unit]
        # the cheapest corner for the rest, chosen once per step (candidates differ in this unit only)
        corner = min(range(self.corners), key=lambda c: self.cost(self.rest_at(decided, index, c)))
        cheapest_rest = self.rest_at(decided, index + 1, corner)
        # and, per precision, the rest at that precision at each of COMPLETION_LEVELS: an option is reachable when any
        # of them completes it within the limit. With the corners alone, an int8 layer was excluded as soon as the
        # cheapest corner (10%-keep float) plus its conversion went over, though int8 at 75% keep everywhere fitted:
        # every episode became an int8 start and a narrow float end at chance accuracy (ResNet-20, 50%, AMX Xeon).
        precisions = self.precisions_of(unit)
        same = {
            q: [self.rest_with(decided, index + 1, level, precisions.index(q)) for level in self.COMPLETION_LEVELS]
            for q in precisions
            if len(precisions) > 1
        }

        def reachable(option: Option) -> float:
            rests = [cheapest_rest, *same.get(option.precision, [])]
            return min(self.cost(self._with(rest, unit, option)) for rest in rests)

        high = [reachable(o) for o in options]  # the rest as cheap as it can be
        feasible = [i for i, c in enumerate(high) if c <= limit]
        if not feasible:
            return [options[min(range(len(options)), key=high.__getitem__)]]
        low = {i: self.cost(self._with(decided, unit, options[i])) for i in feasible}  # later units uncompressed
        enough = [c for c in low.values() if c <= limit]
        floor = max(enough) if enough else -math.inf
        return [options[i] for i in feasible if low[i] >= floor - 1e-12]

    def repair(self, policy: CompressionPolicy, limit: float, loss: LossFn) -> tuple[CompressionPolicy, int]:
        """Lower decisions until ``cost(policy) <= limit``; returns the policy and how many decisions were lowered.

        A move is one channel step less or the next lower precision of one unit, the one with the most cost saved per
        unit of sensitivity lost. When no such step saves anything (on CPUs where narrow int8 layers are slow, an int8
        network only gets cheaper by going to narrow float), any cheaper option of one unit is a move; when none is
        either (one float layer among int8 ones adds conversions), the units from one index on go to their cheapest
        corner together, which always gets down to the cost model's floor.
        """
        moves = 0
        current = self.cost(policy)
        while current > limit:
            best = self._best_move(policy, current, loss, lambda unit, option: self._lower(unit, option))
            if best is None:
                best = self._best_move(policy, current, loss, lambda unit, option: self.options[unit])
            if best is None:
                best = self._best_suffix(policy, current, loss)
            if best is None:
                break
            policy, current, moves = best[0], best[1], moves + 1
        return policy, moves

    def fill(self, policy: CompressionPolicy, limit: float, loss: LossFn) -> tuple[CompressionPolicy, int]:
        """Widen decisions while ``cost(policy)`` stays within ``limit``; returns the policy and how many were widened.

        The mirror of ``repair``: a move is one channel step more for one unit (its precision unchanged: a float layer
        among int8 ones adds conversions the per-layer predictor under-counts), the one that recovers the most
        sensitivity per unit of cost added; a move that costs nothing is taken first. Measured on ResNet-20 at 40%
        (AMD EPYC, SAC, 80 episodes): two seeds of three ended with the last stage's residual group at 0.28-0.30 keep
        and 31-33% of the latency, 7-9 points of budget unused, at 36% accuracy.
        """
        moves = 0
        current = self.cost(policy)
        while True:
            best, best_score = None, -math.inf
            for unit in self.units:
                option = self._current(policy, unit)
                wider = self._wider(unit, option)
                if wider is None:
                    continue
                candidate = self._with(policy, unit, wider)
                cost = self.cost(candidate)
                if cost > limit:
                    continue
                recovered = max(loss(unit, option) - loss(unit, wider), 0.0)
                score = (recovered + 1e-9) / (max(cost - current, 0.0) + 1e-9)
                if score > best_score:
                    best, best_score = (candidate, cost), score
            if best is None:
                return policy, moves
            (policy, current), moves = best, moves + 1

    def unify_precision(self, policy: CompressionPolicy) -> tuple[CompressionPolicy, int]:
        """``policy`` with every unit at the most common precision of its units (widths unchanged) and how many units
        changed: a float layer among int8 ones costs two conversions the per-layer predictor under-counts."""
        current = {u: self._current(policy, u).precision for u in self.units if self.precision_unit[u]}
        counts = Counter(p for p in current.values() if p is not None)
        if len(counts) < 2:
            return policy, 0
        common = max(counts, key=lambda p: (counts[p], -p.weight_bits))
        moves = 0
        for unit, p in current.items():
            if p is not None and p != common and common in self.precisions_of(unit):
                policy = self._with(policy, unit, Option(None, common))
                moves += 1
        return policy, moves

    def _best_move(
        self, policy: CompressionPolicy, current: float, loss: LossFn, candidates: Callable[[str, Option], list[Option]]
    ) -> tuple[CompressionPolicy, float] | None:
        best, best_score = None, -math.inf
        for unit in self.units:
            option = self._current(policy, unit)
            for lower in candidates(unit, option):
                if lower == option:
                    continue
                candidate = self._with(policy, unit, lower)
                cost = self.cost(candidate)
                gain = current - cost
                if gain <= 0:
                    continue
                score = gain / (max(loss(unit, lower) - loss(unit, option), 0.0) + 1e-6)
                if score > best_score:
                    best, best_score = (candidate, cost), score
        return best

    def _best_suffix(self, policy: CompressionPolicy, current: float, loss: LossFn) -> tuple[CompressionPolicy, float] | None:
        best, best_score = None, -math.inf
        for index in range(len(self.units)):
            candidate = self.rest_at_most(policy, index)
            cost = self.cost(candidate)
            gain = current - cost
            if gain <= 0:
                continue
            lost = sum(loss(unit, self._current(candidate, unit)) - loss(unit, self._current(policy, unit)) for unit in self.units[index:])
            score = gain / (max(lost, 0.0) + 1e-6)
            if score > best_score:
                best, best_score = (candidate, cost), score
        return best

    def _current(self, policy: CompressionPolicy, unit: str) -> Option:
        group, layer = self.keep_unit[unit], self.precision_unit[unit]
        return Option(policy.keep_ratio(group) if group else None, policy.precision_of(layer) if layer else None)

    def _wider(self, unit: str, option: Option) -> Option | None:
        """The next wider keep of a unit at its precision (None: it decides no keep, or keeps everything)."""
        if option.keep is None:
            return None
        keeps = sorted({o.keep for o in self.options[unit] if o.keep is not None and o.precision == option.precision})
        larger = [k for k in keeps if k > option.keep + 1e-9]
        return Option(larger[0], option.precision) if larger else None

    def _lower(self, unit: str, option: Option) -> list[Option]:
        """The next more compressed option in each dimension (one channel step less, or the next lower precision)."""
        options = self.options[unit]
        keeps = sorted({o.keep for o in options if o.keep is not None})
        precisions = sorted({o.precision for o in options if o.precision is not None}, key=lambda p: p.weight_bits)
        lower = []
        if option.keep is not None:
            smaller = [k for k in keeps if k < option.keep - 1e-9]
            if smaller:
                lower.append(Option(smaller[-1], option.precision))
        if option.precision is not None:
            below = [p for p in precisions if p.weight_bits < option.precision.weight_bits]
            if below:
                lower.append(Option(option.keep, below[-1]))
        return lower
