"""The episode record type (envs.record): the one list of an episode's fields, read back from old and new lines."""

from __future__ import annotations

import json

from agents.callbacks import METRICS
from agents.recorder import EpisodeLog, read_episodes
from envs.record import METRIC_FIELDS, EpisodeOutcome, EpisodeRecord


def test_a_record_round_trips_and_an_older_line_reads_its_missing_fields_as_none(tmp_path) -> None:
    outcome = EpisodeOutcome(reward=0.9, accuracy=0.9, cost_ratio=0.4, cost_over_target=0.8, within_budget=True, policy={"keep": {}})
    log = EpisodeLog(tmp_path)
    written = log.record({**outcome.to_dict(), "applied_action": [0.1], "unit": 3}, "sac", {"iteration": 2})
    assert written["episode"] == 0 and written["source"] == "sac" and written["iteration"] == 2
    assert "applied_action" not in written and "unit" not in written  # step bookkeeping is not part of the record
    assert set(EpisodeOutcome.field_names()) <= set(written)
    line = read_episodes(tmp_path)[0]
    record = EpisodeRecord.from_dict(line)
    assert record.outcome == outcome and record.extra == {"iteration": 2} and record.to_dict() == line
    old = {"episode": 3, "source": "random", "time": 1.0, "accuracy": 0.5, "cost_ratio": 0.7, "reward": 0.5}  # before predicted_ratio
    assert EpisodeRecord.from_dict(json.loads(json.dumps(old))).outcome.predicted_ratio is None
    # the RLlib callback logs the record's metric fields, no list of its own
    assert METRICS == METRIC_FIELDS and {"accuracy", "cost_ratio", "latency_ratio", "reward"} <= set(METRIC_FIELDS)


def test_json_files_are_replaced_whole_and_a_torn_last_line_is_skipped(tmp_path) -> None:
    import numpy as np

    from envs.jsonio import read_json, read_jsonl, write_json

    path = tmp_path / "state.json"
    assert read_json(path) is None and read_jsonl(tmp_path / "none.jsonl") == []
    write_json(path, {"a": np.float32(0.5), "b": np.arange(3)})
    write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left
    log = tmp_path / "episodes.jsonl"
    log.write_text('{"episode": 0}\n{"episode": 1}\n{"epis')  # a line cut short by SIGKILL
    assert read_jsonl(log) == [{"episode": 0}, {"episode": 1}]
