"""A new leader's recovery: the region's ledgers and job records, then the fencing sweep.

Theory of operation
-------------------
A leader starts from the store, not from memory: :func:`load` reads every ledger and job record
(an unreadable record is quarantined as evidence and replaced by the next write of its job: one
corrupt key must not keep the region from scheduling). A new leader then runs the **fencing
sweep** (:func:`fence`), pipelined: every ledger is rewritten with its epoch, and so is every
unfinished job record; every node known from its heartbeat or offer gets an (empty) ledger if it
has none. Afterwards no compare-and-set an earlier leader prepared can land anywhere it matters,
and an earlier leader that meets one of these writes finds a newer epoch and steps down. The epoch
rises above every epoch stored (:func:`raised_epoch`: a lease bucket recreated from scratch
restarts its revisions). A leader that rebuilds its view without a new term (after a failed
batch) only checks that nothing newer than it was stored (:func:`check_epoch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import msgspec
import structlog

from federation import subjects
from federation.bus import Bus
from federation.errors import LeaseLost, RemoteProtocolError
from federation.schemas import JobRecord, Ledger, decode, encode

Ledgers = dict[str, tuple[Ledger, int]]  # node -> (ledger, revision)
WINDOW = 1024  # fencing writes in flight at once
_I = TypeVar("_I")
_T = TypeVar("_T")


async def load(
    bus: Bus,
    region: str,
    revisions: dict[str, int],
    unreadable: Callable[[str, bytes, int, Exception], Awaitable[None]],
) -> tuple[Ledgers, dict[str, JobRecord]]:
    """Every ledger and job record stored now; each record's revision goes into ``revisions``,
    and a record that does not decode to ``unreadable(key, value, revision, error)``."""
    ledgers = {
        key: (decode(Ledger, value), rev)
        for key, (value, rev) in (await bus.kv_load(subjects.ledger_bucket(region))).items()
    }
    records: dict[str, JobRecord] = {}
    for key, (value, rev) in (await bus.kv_load(subjects.jobs_bucket(region))).items():
        revisions[key] = rev
        try:
            records[key] = decode(JobRecord, value)
        except RemoteProtocolError as exc:
            await unreadable(key, value, rev, exc)
    return ledgers, records


def raised_epoch(
    epoch: int, ledgers: Ledgers, records: dict[str, JobRecord], log: structlog.typing.FilteringBoundLogger
) -> int:
    """The lease's epoch, raised above every epoch stored when the store is ahead of it."""
    newest = max(
        [ledger.epoch for ledger, _ in ledgers.values()] + [r.epoch for r in records.values()], default=0
    )
    if newest >= epoch:
        log.warning("stored epochs are ahead of the lease; raising ours", stored=newest)
        return newest + 1
    return epoch


async def fence(
    bus: Bus,
    region: str,
    epoch: int,
    ledgers: Ledgers,
    records: dict[str, JobRecord],
    revisions: dict[str, int],
    log: structlog.typing.FilteringBoundLogger,
) -> tuple[Ledgers, dict[str, JobRecord]]:
    """The fencing sweep, pipelined: stamp ``epoch`` on every ledger (and on an empty one for each
    known node without one) and on every unfinished record; the stamped state is returned."""
    ledger_bucket, jobs_bucket = subjects.ledger_bucket(region), subjects.jobs_bucket(region)
    for node in await known_nodes(bus, region):
        ledgers.setdefault(node, (Ledger(node=node), 0))

    async def stamp(item: tuple[str, tuple[Ledger, int]]) -> tuple[str, tuple[Ledger, int]]:
        node, (ledger, revision) = item
        fenced = msgspec.structs.replace(ledger, epoch=epoch)
        return node, (fenced, await bus.cas(ledger_bucket, node, encode(fenced), revision))

    async def restamp(record: JobRecord) -> JobRecord:
        fenced = msgspec.structs.replace(record, epoch=epoch)
        revisions[record.id] = await bus.cas(jobs_bucket, record.id, encode(fenced), revisions[record.id])
        return fenced

    # a window of writes at a time: with 100,000 pending jobs all in flight at once, the new
    # leader was left at 933 MiB resident, against 352 MiB this way (bench/scale.py --part queue)
    stamped = dict(await _windowed(stamp, list(ledgers.items())))
    open_records = [r for r in records.values() if not r.terminal]
    for record in await _windowed(restamp, open_records):
        records[record.id] = record
    log.info("fenced with the new epoch", epoch=epoch, ledgers=len(stamped), records=len(open_records))
    return stamped, records


async def _windowed(call: Callable[[_I], Awaitable[_T]], items: list[_I]) -> list[_T]:
    """``call`` on every item, :data:`WINDOW` at a time; the results in order."""
    out: list[_T] = []
    for start in range(0, len(items), WINDOW):
        out.extend(await asyncio.gather(*(call(item) for item in items[start : start + WINDOW])))
    return out


async def known_nodes(bus: Bus, region: str) -> set[str]:
    """Nodes with a heartbeat or an offer stored now."""
    names: set[str] = set()
    for stream, subject in (
        (subjects.heartbeats_stream(region), subjects.heartbeat(region, "*")),
        (subjects.offers_stream(region), subjects.offer(region, "*")),
    ):
        async for item in bus.follow(stream, subject, last_per_subject=True, until_caught_up=True):
            names.add(subjects.last_token(item.subject))
    return names


def check_epoch(region: str, epoch: int, epochs: Iterable[int], what: str) -> None:
    """Step down (:class:`LeaseLost`) when the store holds a write of a newer leader than ``epoch``."""
    newest = max(epochs, default=0)
    if newest > epoch:
        raise LeaseLost(region, f"{what} carries epoch {newest}, newer than ours ({epoch})")


__all__ = ["Ledgers", "check_epoch", "fence", "known_nodes", "load", "raised_epoch"]
