"""Hand-offs between regions, the daemon's side (the decisions are in :mod:`federation.core.spill`).

Theory of operation
-------------------
**Sending.** The core emits :class:`SendHandOff` only once the job's record says ``asked``. The
request goes to ``fed.<remote>.handoff.<job>`` through the hub, in a task of its own (a slow
region never stalls the scheduling loop), and its outcome comes back to the loop as a
:class:`HandOffAnswered` event: the remote's answer, ``unreachable`` when nobody listened (a cut
link fails fast: the request reached no one), or ``unknown`` when no answer came in time (the
request may have arrived; the core then holds an at-most-once job).

**Answering.** The leader answers requests for its region (a queue group, so each request gets
one answer). A request is refused when it is malformed, past its deadline, or no node has room
for the job now (:func:`~federation.core.spill.admit`); otherwise the submission is stored in
this region's own workloads stream with ``origin`` set and ``Nats-Msg-Id`` = job id, and only
then ``accepted`` is answered. The job is then placed like any submission, on this region's
nodes through this region's ledgers. A request repeated after a lost answer is answered from the
job table (or deduplicated by the stream): the same job is never stored twice. When storing
fails with its outcome unknown, no answer is sent: the requester holds the job and asks again.
Before a refusal the lease is checked, so a deposed leader never answers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from federation import subjects
from federation.core.events import HandOffAnswered, SendCancel, SendHandOff
from federation.core.spill import admit
from federation.errors import FederationError, NoResponders, RemoteProtocolError
from federation.schemas import (
    MAX_MESSAGE_BYTES,
    Cancel,
    HandOff,
    HandOffReply,
    decode_message,
    decode_reply,
    encode,
)

if TYPE_CHECKING:
    from federation.scheduler import Scheduler

QUEUE_GROUP = "schedulers"
HANDOFF_BYTES = 2 * MAX_MESSAGE_BYTES  # a submission of the maximal size plus the envelope


class HandOffs:
    """Sends this region's hand-offs and answers other regions' (started with the leader's loops)."""

    def __init__(self, scheduler: Scheduler) -> None:
        assert scheduler.bus is not None
        self.scheduler = scheduler  # its core is read afresh each time: a reset replaces it
        self.bus, self.region = scheduler.bus, scheduler.region
        self.log, self.clock = scheduler.log, scheduler.clock
        self._sending: set[asyncio.Task[None]] = set()

    # --- sending -------------------------------------------------------------------------------

    def send(self, command: SendHandOff | SendCancel) -> None:
        """Start the request in the background; its outcome comes back as an event."""
        work = self._ask(command) if isinstance(command, SendHandOff) else self._cancel(command)
        task = asyncio.create_task(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _ask(self, command: SendHandOff) -> None:
        request = HandOff(
            origin=self.region, spec=command.spec, expires_at=command.expires_at, query=command.query
        )
        timeout = max(0.1, command.expires_at - self.clock())
        subject = subjects.handoff(command.region, command.job)
        outcome, reason = "", ""
        try:
            reply = decode_reply(await self.bus.request(subject, encode(request), timeout=timeout))
            outcome, reason = reply.outcome, reply.reason or reply.state
        except NoResponders:
            outcome, reason = "unreachable", "nobody answers (the region is cut off or has no leader)"
        except RemoteProtocolError as exc:
            outcome, reason = "unknown", f"unreadable answer: {exc}"
        except FederationError as exc:
            outcome, reason = "unknown", str(exc)
        self.log.info("hand-off", job=command.job, to=command.region, outcome=outcome, reason=reason)
        answer = HandOffAnswered(
            job=command.job,
            region=command.region,
            outcome=outcome,
            at=self.clock(),
            reason=reason,
            query=command.query,
        )
        self.scheduler.queue.put_nowait((answer, None))

    async def _cancel(self, command: SendCancel) -> None:
        cancel = Cancel(id=command.job, reason=command.reason, requested_at=self.clock())
        try:
            await self.bus.store(subjects.cancel(command.region, command.job), encode(cancel), timeout=5.0)
        except FederationError as exc:
            self.log.warning(
                "cancel not passed on; cancel it in its region",
                job=command.job,
                to=command.region,
                error=str(exc),
            )

    async def stop(self) -> None:
        """Cancel the requests in flight (their jobs are held or retried by the next leader)."""
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    # --- answering -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer hand-offs to this region until cancelled."""
        subscription = await self.bus.serve(
            subjects.handoff(self.region, "*"), self._answer, queue=QUEUE_GROUP
        )
        try:
            await asyncio.Event().wait()
        finally:
            await subscription.unsubscribe()

    async def _answer(self, subject: str, data: bytes) -> bytes | None:
        try:
            message = decode_message(data, limit=HANDOFF_BYTES)
            if not isinstance(message, HandOff):
                raise RemoteProtocolError(f"expected a hand-off, got {type(message).__name__}")
            if message.spec.id != subjects.last_token(subject):
                raise RemoteProtocolError("job id in payload does not match subject token")
            if message.origin == self.region:
                raise RemoteProtocolError("a region cannot hand a job to itself")
        except RemoteProtocolError as exc:
            return encode(HandOffReply(outcome="refused", reason=str(exc)))
        try:
            reply = await self._decide(message)
        except FederationError as exc:  # stored or not, unknown: no answer, the requester asks again
            self.log.warning("hand-off not answered", job=message.spec.id, error=str(exc))
            return None
        self.log.info("hand-off answered", job=message.spec.id, origin=message.origin, outcome=reply.outcome)
        return encode(reply)

    async def _decide(self, message: HandOff) -> HandOffReply:
        spec, core, now = message.spec, self.scheduler.core, self.clock()
        held = core.jobs.get(spec.id)
        mine = held is not None and held.record.spec.origin == message.origin
        if message.query:
            if mine and held is not None:
                return HandOffReply(outcome="found", state=held.record.state)
            await self.scheduler.check_lease()
            return HandOffReply(outcome="absent")
        if mine and held is not None:  # a repeated request: the first one was stored
            return HandOffReply(outcome="accepted", reason=f"already here ({held.record.state})")
        why = "the request expired before it arrived" if now > message.expires_at else admit(core, spec, now)
        if why:
            # stored by an earlier request but not consumed yet (this leader just took over)?
            if await self.bus.last(
                subjects.workloads_stream(self.region), subjects.submit(self.region, spec.id)
            ):
                return HandOffReply(outcome="accepted", reason="already stored here")
            await self.scheduler.check_lease()
            return HandOffReply(outcome="refused", reason=why)
        stored = msgspec.structs.replace(spec, origin=message.origin, regions=[self.region])
        await self.bus.store(
            subjects.submit(self.region, spec.id), encode(stored), msg_id=spec.id, timeout=5.0
        )
        return HandOffReply(outcome="accepted", reason=f"{self.region} has room")


__all__ = ["HandOffs"]
