"""bench.search's per-run metrics (issue 24's methods table): the best so far after 10 and 30 episodes, the screening's tau."""

from __future__ import annotations

from bench.search.run import aggregate, run_metrics


def _record(episode: int, accuracy: float, within: bool, predicted: float | None = None) -> dict:
    record = {
        "episode": episode,
        "source": "random",
        "accuracy": accuracy,
        "within_budget": within,
        "cost_over_target": 0.9 if within else 1.2,
        "latency_ratio": 0.4,
        "predicted_ratio": 0.4,
        "policy": {},
    }
    if predicted is not None:
        record["predicted_accuracy"] = predicted
    return record


def test_run_metrics_report_the_best_within_budget_after_10_and_30_episodes_and_the_screening_tau() -> None:
    # accuracy rises with the episode; every third episode is over budget (and the most accurate so far: must not count)
    records = [_record(i, 0.5 + 0.01 * i + (0.3 if i % 3 == 2 else 0.0), within=i % 3 != 2) for i in range(40)]
    for r in records[10:]:
        r["predicted_accuracy"] = r["accuracy"] - 0.05  # a screening that ranks perfectly
    records.append({**_record(40, 0.99, True), "source": "uniform"})  # another source's episode: not this method's
    metrics = run_metrics("random", records)
    assert metrics["best_at_10"] == 0.5 + 0.01 * 9  # episode 9 (within budget), not episode 8 (over budget, 0.88)
    assert metrics["best_at_30"] == 0.5 + 0.01 * 28  # episode 29 is over budget, 28 is the last within it before 30
    assert metrics["best"]["episode"] == 39
    assert metrics["screening"]["episodes"] == 30
    assert metrics["screening"]["kendall_tau"] == 1.0

    unscreened = run_metrics("random", [_record(i, 0.5, True) for i in range(5)])
    assert unscreened["screening"] is None
    assert unscreened["best_at_10"] == unscreened["best_at_30"] == 0.5  # fewer episodes than 10: the best of those played

    seeds = []
    for seed, m in enumerate((metrics, unscreened)):
        m = dict(m)
        m.pop("best")
        seeds.append({"seed": seed, "wall_seconds_per_episode": 10.0, **m})
    cell = {"seeds": seeds}
    aggregate(cell)
    assert cell["best_at_10"] == [metrics["best_at_10"], 0.5]
    assert cell["screening_kendall_tau"] == [1.0]  # the unscreened seed has none
