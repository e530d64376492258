"""The campaign's independent checker finds each kind of defect it exists for (pure: no I/O)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from federation.campaign.checker import Declared, check, parse_trail, settled
from federation.campaign.history import History, Operation, Run

DECLARED = {"eu-n1": Declared(cpu=4, memory=8, gpu=1)}


def _record(seq: int, job: str, state: str, attempt: int, region: str = "eu") -> dict[str, Any]:
    value = {"id": job, "state": state, "attempt": attempt}
    return {"region": region, "seq": seq, "subject": f"$KV.fed-jobs-{region}.{job}", "value": value}


def _ledger(seq: int, *allocations: dict[str, Any], node: str = "eu-n1") -> dict[str, Any]:
    value = {"node": node, "allocations": list(allocations)}
    return {"region": "eu", "seq": seq, "subject": f"$KV.fed-ledger-eu.{node}", "value": value}


def _submitted(job: str, *, outcome: str = "succeeded", at_most_once: bool = True) -> Operation:
    return Operation("submit", job, "eu", 1.0, ack="ok", outcome=outcome, at_most_once=at_most_once)


def _life(job: str, end: str = "succeeded", start: int = 1) -> list[dict[str, Any]]:
    return [
        _record(start, job, "pending", 0),
        _record(start + 1, job, "placed", 1),
        _record(start + 2, job, "running", 1),
        _record(start + 3, job, end, 1),
    ]


def test_a_clean_run_passes() -> None:
    verdict = check([_submitted("a")], {"a": [Run("a", 1, "eu-n1")]}, _life("a"), DECLARED)
    assert verdict.ok, verdict.violations
    assert (verdict.acknowledged, verdict.finished, verdict.records) == (1, 1, 4)


def test_an_acknowledged_job_without_a_record_is_lost() -> None:
    verdict = check([_submitted("a"), _submitted("b")], {"a": [Run("a", 1, "eu-n1")]}, _life("a"), DECLARED)
    assert verdict.lost == 1
    assert any(v.startswith("lost: b") for v in verdict.violations)


def test_an_unacknowledged_submission_is_not_judged() -> None:
    unknown = Operation("submit", "b", "eu", 1.0, ack="unknown")
    assert check([_submitted("a"), unknown], {"a": [Run("a", 1, "eu-n1")]}, _life("a"), DECLARED).ok


def test_a_job_still_pending_after_the_settle_fails_the_run_without_a_violation() -> None:
    verdict = check([_submitted("a", outcome="")], {}, [_record(1, "a", "pending", 0)], DECLARED)
    assert verdict.unfinished == 1
    assert not verdict.violations
    assert not verdict.ok


def test_an_at_most_once_job_with_two_run_markers_ran_twice() -> None:
    runs = {"a": [Run("a", 1, "eu-n1"), Run("a", 2, "eu-n2")]}
    verdict = check([_submitted("a")], runs, _life("a"), DECLARED)
    assert verdict.ran_twice == 1
    assert check([_submitted("a", at_most_once=False)], runs, _life("a"), DECLARED).ok


def test_a_success_without_a_run_marker_is_reported() -> None:
    assert not check([_submitted("a")], {}, _life("a"), DECLARED).ok


def test_a_ledger_over_the_declared_capacity_or_with_a_core_twice_is_reported() -> None:
    assert "which no one declared" in check([], {}, [_ledger(1, node="stranger")], DECLARED).violations[0]
    fits = _ledger(1, {"cpu": 2, "memory": 4, "cores": [0, 1]}, {"cpu": 2, "memory": 4, "cores": [2, 3]})
    over = _ledger(1, {"cpu": 3, "memory": 4, "cores": [0, 1, 2]}, {"cpu": 2, "memory": 4, "cores": [3, 4]})
    twice = _ledger(2, {"cpu": 1, "cores": [0], "gpus": ["0"]}, {"cpu": 1, "cores": [0], "gpus": ["0"]})
    assert not check([], {}, [fits], DECLARED).violations
    found = check([], {}, [over, twice], DECLARED).violations
    assert any("holds cpu 5 of a declared 4" in v for v in found), found
    assert any("holds a core twice" in v for v in found), found
    assert any("holds a GPU twice" in v for v in found), found


def test_states_that_move_backwards_within_an_attempt_are_reported() -> None:
    # the shape of issue 16's defect 3: running #1 -> pending #1 -> placed #2
    trail = [*_life("a", end="running")[:3], _record(4, "a", "pending", 1), _record(5, "a", "placed", 2)]
    found = check([_submitted("a", outcome="")], {}, trail, DECLARED).violations
    assert any(v.startswith("backwards: a") for v in found), found
    fixed = [*_life("a", end="running")[:3], _record(4, "a", "pending", 2), _record(5, "a", "placed", 2)]
    assert not check([_submitted("a", outcome="")], {}, fixed, DECLARED).violations


def test_a_terminal_state_that_changes_is_reported() -> None:
    trail = [*_life("a"), _record(5, "a", "failed", 1)]
    found = check(
        [_submitted("a", outcome="failed")], {"a": [Run("a", 1, "eu-n1")]}, trail, DECLARED
    ).violations
    assert any(v.startswith("terminal: a in eu") for v in found), found


def test_an_at_most_once_job_ending_in_two_regions_is_reported() -> None:
    trail = [
        *_life("a"),
        *(_record(e["seq"], "a", e["value"]["state"], e["value"]["attempt"], "us") for e in _life("a")),
    ]
    found = check([_submitted("a")], {"a": [Run("a", 1, "eu-n1")]}, trail, DECLARED).violations
    assert any("ended in 2 regions" in v for v in found), found


def test_the_outcome_the_client_read_must_be_where_the_trail_ends() -> None:
    found = check([_submitted("a", outcome="failed")], {"a": [Run("a", 1, "n")]}, _life("a"), DECLARED)
    assert any("client read a failed" in v for v in found.violations)


def test_an_export_line_that_is_not_json_is_itself_a_finding() -> None:
    assert parse_trail(['{"seq": 1}', "", b'{"seq": 2}']) == [{"seq": 1}, {"seq": 2}]
    with pytest.raises(json.JSONDecodeError):
        parse_trail(['{"seq": 1}', "\x80 not json"])


def test_run_markers_name_the_node_from_the_work_directory(tmp_path: Path) -> None:
    history = History(tmp_path / "runs")
    (tmp_path / "runs" / "a").write_text("a 1 /s/agents/eu-n2/work/a.1.xyz\na 2 /s/agents/eu-n1/work/a.2.q\n")
    assert history.markers() == {"a": [Run("a", 1, "eu-n2"), Run("a", 2, "eu-n1")]}
    assert history.command()[:2] == ["sh", "-c"]


def test_a_double_run_counts_even_when_the_submission_was_never_acknowledged() -> None:
    unknown = Operation("submit", "a", "eu", 1.0, ack="unknown")
    verdict = check([unknown], {"a": [Run("a", 1, "n1"), Run("a", 1, "n2")]}, [], DECLARED)
    assert verdict.ran_twice == 1


def test_the_checker_reads_stored_values_not_the_exports_interpretation() -> None:
    # the export's own fields say nothing wrong; the stored record says the job went backwards
    lying = [dict(e, kind="record", state="running", attempt=1) for e in _life("a", end="running")[:3]]
    back = dict(_record(4, "a", "pending", 1), kind="record", state="running", attempt=1)
    found = check([_submitted("a", outcome="")], {}, [*lying, back], DECLARED).violations
    assert any(v.startswith("backwards: a") for v in found), found


def test_unreadable_records_and_gaps_in_an_audit_stream_are_findings() -> None:
    garbled = {
        "region": "eu",
        "seq": 1,
        "subject": "$KV.fed-jobs-eu.a",
        "value": None,
        "value_invalid": "not JSON",
    }
    deleted = {
        "region": "eu",
        "seq": 2,
        "subject": "$KV.fed-jobs-eu.b",
        "value": None,
        "value_invalid": "empty",
    }
    found = check([], {}, [garbled, deleted, _record(5, "c", "pending", 0)], DECLARED).violations
    assert found == [
        "gap: eu's audit stream has no sequences 3-4",
        "unreadable: $KV.fed-jobs-eu.a at eu audit seq 1: not JSON",
    ]


def test_an_unknown_state_is_a_finding() -> None:
    found = check(
        [], {}, [_record(1, "a", "pending", 0), _record(2, "a", "exploded", 1)], DECLARED
    ).violations
    assert any("unknown state 'exploded'" in v for v in found), found


def test_settled_names_jobs_whose_outcome_the_trail_does_not_show_yet() -> None:
    assert settled([_submitted("a")], _life("a")) == []
    assert settled([_submitted("a")], _life("a", end="running")[:3]) == ["a"]
