"""The audit checker on hand-made event sequences: each invariant can fail, and gaps are classified."""

from __future__ import annotations

from federation.audit import AuditEvent, Checker, Parsed
from federation.schemas import Allocation, Capacity, JobRecord, Ledger, Submit

SPEC = Submit(id="j", command=["true"])


def event(seq: int, kind: str, origin: str, origin_seq: int, **kw: object) -> AuditEvent:
    return AuditEvent(
        seq=seq, at=float(seq), region="eu", kind=kind, origin=origin, origin_seq=origin_seq, **kw
    )  # type: ignore[arg-type]


class Log:
    """Feeds a checker, numbering audit and origin sequences."""

    def __init__(self) -> None:
        self.checker = Checker()
        self.seq = 0
        self.origin: dict[str, int] = {}

    def ledger(self, node: str, *allocations: Allocation, epoch: int = 1, cpu: int = 4) -> int:
        value = Ledger(
            node=node, allocations=allocations, epoch=epoch, capacity=Capacity(cpu=cpu, memory=1 << 30, gpu=0)
        )
        return self._feed("ledger", "KV_fed-ledger-eu", value, node=node)

    def record(self, state: str, epoch: int = 1) -> int:
        value = JobRecord(id="j", region="eu", spec=SPEC, state=state, epoch=epoch)  # type: ignore[arg-type]
        return self._feed("record", "KV_fed-jobs-eu", value, job="j", state=state)

    def skip(self, origin: str) -> None:
        self.origin[origin] = self.origin.get(origin, 0) + 1

    def _feed(self, kind: str, origin: str, value: Parsed, **kw: object) -> int:
        self.seq += 1
        self.origin[origin] = self.origin.get(origin, 0) + 1
        self.checker.feed(event(self.seq, kind, origin, self.origin[origin], **kw), value)
        return self.seq


def alloc(job: str, cpu: int = 1, core: int = 0, attempt: int = 1) -> Allocation:
    return Allocation(job=job, attempt=attempt, cpu=cpu, cores=(core,))


def invariants(log: Log) -> list[str]:
    return [v.invariant for v in log.checker.finish().violations]


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
