"""The audit checker on hand-made event sequences: each invariant can fail, and gaps are classified;
and whatever bytes a message holds, its audit event is one line of valid JSON."""

from __future__ import annotations

import base64
import json

import msgspec

from federation.audit.check import Checker
from federation.audit.trail import AuditEvent, Parsed, line, parse
from federation.bus.delivery import Delivery
from federation.schemas import Allocation, Capacity, JobRecord, Ledger, Quarantined, Submit, encode

SPEC = Submit(id="j", command=["true"])


def event(seq: int, kind: str, origin: str, origin_seq: int, **kw: object) -> AuditEvent:
    kw.setdefault("region", "eu")
    return AuditEvent(seq=seq, at=float(seq), kind=kind, origin=origin, origin_seq=origin_seq, **kw)  # type: ignore[arg-type]


class Log:
    """Feeds a checker, numbering audit and origin sequences."""

    def __init__(self, **options: object) -> None:
        self.checker = Checker(**options)  # type: ignore[arg-type]
        self.seq = 0
        self.origin: dict[str, int] = {}

    def ledger(
        self,
        node: str,
        *allocations: Allocation,
        epoch: int = 1,
        cpu: int = 4,
        gpus: tuple[str, ...] = (),
        offered: tuple[str, ...] | None = None,
        region: str = "eu",
        at: float = 0.0,
    ) -> int:
        capacity = Capacity(
            cpu=cpu,
            memory=1 << 30,
            gpu=len(gpus),
            cores=tuple(range(cpu)),
            gpus=gpus if offered is None else offered,
            offered_memory=1 << 30,
        )
        value = Ledger(node=node, allocations=allocations, epoch=epoch, capacity=capacity, updated_at=at)
        return self._feed("ledger", f"KV_fed-ledger-{region}", value, node=node, region=region)

    def record(self, state: str, epoch: int = 1, job: str = "j", region: str = "eu", **spec: object) -> int:
        value = JobRecord(
            id=job,
            region=region,
            spec=msgspec.structs.replace(SPEC, id=job, **spec),
            state=state,
            epoch=epoch,
        )  # type: ignore[arg-type]
        return self._feed("record", f"KV_fed-jobs-{region}", value, job=job, state=state, region=region)

    def submit(self, job: str, subject: str = "") -> int:
        subject = subject or f"fed.eu.wl.submit.{job}"
        return self._feed("submit", "fed-eu-workloads", Submit(id=job, command=["true"]), subject=subject)

    def unreadable(self, subject: str) -> int:
        return self._feed("unreadable", "fed-eu-workloads", None, subject=subject)

    def quarantine(self, subject: str, sequence: int) -> int:
        value = Quarantined(subject=subject, reason="bad", payload="", size=1, at=0.0, sequence=sequence)
        return self._feed("quarantine", "fed-eu-quarantine", value, subject="fed.eu.quarantine.workloads")

    def skip(self, origin: str) -> None:
        self.origin[origin] = self.origin.get(origin, 0) + 1

    def _feed(self, kind: str, origin: str, value: Parsed, **kw: object) -> int:
        self.seq += 1
        self.origin[origin] = self.origin.get(origin, 0) + 1
        self.checker.feed(event(self.seq, kind, origin, self.origin[origin], **kw), value)
        return self.seq


def alloc(
    job: str, cpu: int = 1, core: int = 0, attempt: int = 1, gpus: tuple[str, ...] = (), **kw: object
) -> Allocation:
    return Allocation(job=job, attempt=attempt, cpu=cpu, cores=(core,), gpus=gpus, **kw)  # type: ignore[arg-type]


def invariants(log: Log, **finish: object) -> list[str]:
    return [v.invariant for v in log.checker.finish(**finish).violations]  # type: ignore[arg-type]


def test_a_clean_history_passes() -> None:
    log = Log()
    log.ledger("n1", alloc("j"))
    log.record("placed")
    log.record("running")
    log.record("succeeded")
    log.ledger("n1")
    report = log.checker.finish()
    assert report.ok
    assert report.events == 5


def test_overcommit_and_a_device_given_twice_break_i1() -> None:
    log = Log()
    seq = log.ledger("n1", alloc("a", cpu=3, core=0), alloc("b", cpu=3, core=1))
    violations = log.checker.finish().violations
    assert [(v.invariant, v.events) for v in violations] == [("I1", [seq])]
    log = Log()
    log.ledger("n1", alloc("a", core=0), alloc("b", core=0))
    assert invariants(log) == ["I1"]


def test_one_attempt_on_two_nodes_breaks_i2() -> None:
    log = Log()
    first = log.ledger("n1", alloc("a"))
    second = log.ledger("n2", alloc("a"))
    (violation,) = log.checker.finish().violations
    assert violation.invariant == "I2"
    assert violation.events == [first, second]


def test_a_second_terminal_state_breaks_i4_and_a_backward_move_i5() -> None:
    log = Log()
    log.record("succeeded")
    log.record("failed")
    assert invariants(log) == ["I4"]
    log = Log()
    log.record("running")
    log.record("placed")
    assert invariants(log) == ["I5"]


def test_an_older_epoch_after_a_newer_one_breaks_i6() -> None:
    log = Log()
    log.ledger("n1", epoch=3)
    log.ledger("n1", alloc("a"), epoch=2)
    log.record("pending", epoch=3)
    log.record("placed", epoch=2)
    assert invariants(log) == ["I6", "I6"]


def test_gaps_are_a_lost_prefix_middle_or_postfix() -> None:
    log = Log()
    log.skip("KV_fed-ledger-eu")  # origin sequence 1 never seen
    log.ledger("n1")
    log.skip("KV_fed-ledger-eu")  # 3 missing
    after = log.ledger("n1")
    report = log.checker.finish(origins_last={"KV_fed-ledger-eu": 6})
    gaps = [(g.kind, g.first, g.last) for g in report.gaps]
    assert gaps == [("prefix", 1, 1), ("middle", 3, 3), ("postfix", 5, 6)]
    assert report.gaps[2].after == after
    assert not report.ok


def test_a_device_not_offered_or_memory_beyond_the_offer_breaks_i1() -> None:
    log = Log()
    log.ledger("n1", alloc("a", core=9))  # core 9 is not among the offered 0..3
    assert invariants(log) == ["I1"]
    log = Log()
    log.ledger("n1", Allocation(job="a", attempt=1, cpu=1, cores=(0,), memory=2 << 30))
    assert invariants(log) == ["I1"]


def test_a_busy_gpu_withheld_from_the_offer_is_no_overcommit() -> None:
    """An agent stops offering a GPU its own job keeps busy; adding a CPU job next to it is fine."""
    log = Log()
    log.ledger("n1", alloc("trainer", gpus=("g0",)), gpus=("g0",))
    log.ledger("n1", alloc("trainer", gpus=("g0",)), alloc("cpu-job", core=1), gpus=("g0",), offered=())
    assert invariants(log) == []
    log.ledger(
        "n1",
        alloc("trainer", gpus=("g0",)),
        alloc("cpu-job", core=1),
        alloc("b", core=2, gpus=("g0",)),
        gpus=("g0",),
    )
    assert invariants(log) == ["I1"]  # the same GPU twice


def test_held_gang_members_are_not_running_attempts() -> None:
    """A gang retry may hold a member on another node while the old hold is being released."""
    log = Log()
    log.ledger("n1", alloc("g", held=True))
    log.ledger("n2", alloc("g", held=True))
    log.ledger("n2", alloc("g"))  # activated on n2
    assert invariants(log) == []
    log.ledger("n1", alloc("g"))  # running on two nodes at once
    assert invariants(log) == ["I2"]


def test_an_at_most_once_job_running_in_two_regions_at_once_breaks_i2() -> None:
    log = Log()
    log.record("placed", region="eu")
    log.ledger("n1", alloc("j"), region="eu", at=100.0)
    log.ledger("n1", region="eu", at=105.0)
    log.ledger("m1", alloc("j"), region="us", at=105.5)  # handed off after: same attempt number, fine
    assert invariants(log) == []
    log = Log()
    log.record("placed", region="eu")
    log.ledger("n1", alloc("j"), region="eu", at=100.0)
    log.ledger("m1", alloc("j"), region="us", at=102.0)
    log.ledger("n1", region="eu", at=110.0)
    assert invariants(log) == ["I2"]
    log = Log()  # at least once: a duplicate run elsewhere is the contract
    log.record("placed", region="eu", semantics="at_least_once")
    log.ledger("n1", alloc("j"), region="eu", at=100.0)
    log.ledger("m1", alloc("j"), region="us", at=102.0)
    assert invariants(log) == []


def test_a_handled_submission_without_a_record_breaks_i3_unless_it_was_quarantined() -> None:
    log = Log()
    log.submit("a")
    log.submit("b")
    log.submit("c")
    log.record("placed", job="a")
    log.quarantine("fed.eu.wl.submit.c", sequence=3)
    report = log.checker.finish(processed={"fed-eu-workloads": 2})
    assert [(v.invariant, v.message) for v in report.violations] == [
        ("I3", "b: submitted to eu but never recorded")
    ]
    assert report.refused == 1
    report = Log()
    report.submit("a")
    result = report.checker.finish(processed={"fed-eu-workloads": 0})
    assert result.ok  # not handled yet: not judged
    assert result.unprocessed == 1


def test_an_unreadable_input_is_evidence_when_quarantined_and_a_failure_when_not() -> None:
    log = Log()
    log.unreadable("fed.eu.wl.submit.x")
    log.unreadable("fed.eu.wl.submit.y")
    log.quarantine("fed.eu.wl.submit.x", sequence=1)
    report = log.checker.finish(processed={"fed-eu-workloads": 2})
    assert report.unreadable == [2]
    assert report.refused == 1
    # a quarantine entry excuses its own message only, not another one on the same subject
    log = Log()
    log.unreadable("fed.eu.wl.submit.x")
    log.unreadable("fed.eu.wl.submit.x")
    log.quarantine("fed.eu.wl.submit.x", sequence=2)
    assert log.checker.finish(processed={"fed-eu-workloads": 2}).unreadable == [1]


def test_history_before_the_audit_existed_is_no_gap() -> None:
    log = Log(baseline={"KV_fed-ledger-eu": 5})
    for _ in range(5):
        log.skip("KV_fed-ledger-eu")
    log.ledger("n1")
    report = log.checker.finish(origins_last={"KV_fed-ledger-eu": 6})
    assert report.ok, report.gaps
    assert log.checker.caught_up({"KV_fed-ledger-eu": 6})
    assert not log.checker.caught_up({"KV_fed-ledger-eu": 7})


def test_an_at_most_once_job_still_running_in_two_regions_breaks_i2() -> None:
    log = Log()
    log.record("placed", region="eu")
    log.ledger("n1", alloc("j"), region="eu", at=100.0)
    log.ledger("m1", alloc("j"), region="us", at=102.0)  # neither run has ended
    (violation,) = log.checker.finish().violations
    assert violation.invariant == "I2"
    assert "until the end of the trail" in violation.message


def test_ledgers_from_before_the_audit_and_before_offers_were_recorded_are_not_judged() -> None:
    log = Log(baseline={"KV_fed-ledger-eu": 1})
    log.ledger("n1", alloc("a", core=9))  # first seen at or below the baseline: held already
    log.ledger("n1", alloc("a", core=9), alloc("b", core=1))
    assert invariants(log) == []
    log = Log()
    legacy = Ledger(
        node="n1", allocations=(alloc("a", core=9),), capacity=Capacity(cpu=4, memory=1 << 30, gpu=0)
    )
    log._feed("ledger", "KV_fed-ledger-eu", legacy, node="n1")
    assert invariants(log) == []


def stored_on_submit(data: bytes, seq: int = 1) -> AuditEvent:
    """The audit event of ``data`` published on a submit subject (as sourced into the audit)."""
    headers = {"Nats-Stream-Source": f"fed-eu-workloads {seq} fed.eu.wl.submit.> > >"}
    event, _ = parse(Delivery("fed.eu.wl.submit.x", data, headers, seq, 1, timestamp=1.0))
    return event


def test_a_message_that_is_not_utf8_json_is_carried_in_base64_with_the_reason() -> None:
    for data, why in (
        (b"\x80\x81\xfe\xff", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b'{"a": 1} trailing', "not JSON"),
        (b'["\\ud800"]', "not JSON"),  # a lone surrogate: many JSON readers refuse it
        (b"", "empty"),
    ):
        event = stored_on_submit(data)
        decoded = json.loads(line(event))
        assert event.kind == "unreadable"
        assert decoded["value"] is None
        assert base64.b64decode(decoded["value_base64"]) == data
        assert decoded["value_invalid"].startswith(why), decoded


def test_a_readable_submission_hiding_bad_utf8_in_an_unknown_field_is_carried_in_base64() -> None:
    # msgspec skips unknown fields without checking their UTF-8: the submission is valid
    data = encode(Submit(id="x", command=["true"]))[:-1] + b',"note":"\xff"}'
    event = stored_on_submit(data)
    assert (event.kind, event.job) == ("submit", "x")
    decoded = json.loads(line(event))
    assert decoded["value"] is None
    assert base64.b64decode(decoded["value_base64"]) == data
    assert decoded["value_invalid"].startswith("not UTF-8")


def test_json_is_embedded_as_written_and_each_event_stays_on_one_line() -> None:
    written = Submit(id="x", command=["echo", "a\u2028b\x85c\nd"])
    pretty = b"{\r\n" + encode(written)[1:].replace(b",", b",\n  ") + b"\n"
    for data in (encode(written), pretty):
        text = line(stored_on_submit(data)).decode()
        assert text.splitlines() == [text]  # no line break of any kind, strings included
        decoded = json.loads(text)
        assert decoded["value"] == json.loads(data)
        assert decoded["value_base64"] == decoded["value_invalid"] == ""
        assert decoded["detail"] == "echo a\u2028b\x85c\nd"
