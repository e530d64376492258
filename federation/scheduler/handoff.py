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
for the job now: the core decides (a :class:`~federation.core.events.HandOffOffered` event, so the
journal keeps the verdict and ``fed audit verify`` re-derives it); otherwise the submission is stored in
this region's own workloads stream with ``origin`` set and ``Nats-Msg-Id`` = job id, and only
then ``accepted`` is answered. The job is then placed like any submission, on this region's
nodes through this region's ledgers. A request repeated after a lost answer is answered from the
job table or the stream (a submission stored but not consumed yet): the same job is never stored
twice. When storing fails with its outcome unknown, no answer is sent and the job is never refused
afterwards, only stored again (the same ``Nats-Msg-Id``), so a store that landed late cannot
contradict a refusal. Before a refusal the lease is checked, so a deposed leader never refuses.
Requests are answered concurrently: one slow store does not delay the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import structlog

from federation import subjects
from federation.bus import Bus
from federation.core.events import (
    CancelPassed,
    DependencyState,
    Event,
    HandOffAnswered,
    HandOffOffered,
    SendCancel,
    SendHandOff,
)
from federation.errors import FederationError, InvalidRequest, LeaseLost, NoResponders, RemoteProtocolError
from federation.schemas import (
    MAX_MESSAGE_BYTES,
    Cancel,
    HandOff,
    HandOffReply,
    JobRecord,
    Submit,
    decode,
    decode_message,
    encode,
)
from federation.tasks import idle

QUEUE_GROUP = "schedulers"
LOOKUP_EVERY = 2.0  # seconds between two rounds of asking other regions about dependencies
LOOKUP_TIMEOUT = 5.0  # seconds a region has to answer a dependency lookup
HANDOFF_BYTES = 2 * MAX_MESSAGE_BYTES  # a submission of the maximal size plus the envelope


class HandOffs:
    """Sends this region's hand-offs and answers other regions' (started with the leader's loops)."""

    def __init__(
        self,
        bus: Bus,
        region: str,
        *,
        clock: Callable[[], float],
        log: structlog.typing.FilteringBoundLogger,
        check_lease: Callable[[], Awaitable[None]],
        deliver: Callable[[Event], None],
        held: Callable[[str], JobRecord | None],
        judge: Callable[[HandOffOffered], str],
        lookup: Callable[[str], tuple[str, str]] = lambda job: ("", ""),
        count: Callable[[str, str, str], None] = lambda direction, peer, outcome: None,
    ) -> None:
        """``check_lease`` raises once this leader may be deposed; ``deliver`` hands an outcome to
        the scheduling loop; ``held`` reads a job's record here (None: not here); ``judge`` asks
        the core whether an offered job may run here (its refusal, "" to accept); ``lookup`` says
        what state a job or job array is in here, as a dependency (and where it went, when it was
        handed on); ``count`` counts an outcome (direction ``out`` or ``in``, the other region, the
        outcome) for the metrics."""
        self.bus, self.region, self.clock, self.log = bus, region, clock, log
        self.check_lease, self.deliver, self.held, self.judge = check_lease, deliver, held, judge
        self.lookup = lookup
        self.count = count
        self._sending: set[asyncio.Task[None]] = set()
        self.uncertain: set[str] = set()  # jobs whose store timed out: stored or not, unknown

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
        subject = subjects.handoff(command.region, command.job)
        outcome, reason = "unknown", ""
        try:
            # a deposed leader sends nothing: the new one counts on the requests it knows of
            await self.check_lease()
            timeout = max(0.1, command.expires_at - self.clock())
            reply = decode(HandOffReply, await self.bus.request(subject, encode(request), timeout=timeout))
            outcome, reason = reply.outcome, reply.reason or reply.state
        except LeaseLost:
            return
        except NoResponders:
            outcome, reason = "unreachable", "nobody answers (the region is cut off or has no leader)"
        except Exception as exc:  # whatever it was, the request may have arrived: unknown
            reason = str(exc) or type(exc).__name__
        self.log.info("hand-off", job=command.job, to=command.region, outcome=outcome, reason=reason)
        self.count("out", command.region, outcome)
        answer = HandOffAnswered(
            job=command.job,
            region=command.region,
            outcome=outcome,
            at=self.clock(),
            reason=reason,
            query=command.query,
        )
        self.deliver(answer)

    async def _cancel(self, command: SendCancel) -> None:
        cancel = Cancel(id=command.job, reason=command.reason, requested_at=self.clock())
        ok = False
        try:
            await self.bus.store(subjects.cancel(command.region, command.job), encode(cancel), timeout=5.0)
            ok = True
        except FederationError as exc:
            self.log.warning("cancel not passed on yet", job=command.job, to=command.region, error=str(exc))
        self.deliver(CancelPassed(job=command.job, ok=ok, at=self.clock()))

    async def follow_dependencies(self, wanted: Callable[[], list[tuple[str, str]]]) -> None:
        """Every :data:`LOOKUP_EVERY` seconds, ask each region in ``wanted()`` (job, region) what
        state that job is in there (a hand-off ``lookup``: nothing is stored), and hand each answer
        to the loop as a :class:`DependencyState` when it differs from the last one (the journal
        keeps changes, not every round). A region that does not answer is asked again next time;
        its dependents wait."""
        told: dict[str, tuple[str, str, str]] = {}  # job -> (region, state, forwarded to) delivered
        while True:
            asks = wanted()
            asked = {job for job, _ in asks}
            told = {job: answer for job, answer in told.items() if job in asked}
            for job, region in asks:
                request = HandOff(
                    origin=self.region,
                    spec=Submit(id=job, command=["lookup"]),
                    expires_at=self.clock() + LOOKUP_TIMEOUT,
                    lookup=True,
                )
                try:
                    data = await self.bus.request(
                        subjects.handoff(region, job), encode(request), timeout=LOOKUP_TIMEOUT
                    )
                    reply = decode(HandOffReply, data)
                except (FederationError, TimeoutError) as exc:
                    self.log.debug("dependency not looked up", job=job, region=region, error=str(exc))
                    continue
                onward = reply.reason if reply.state == "forwarded" else ""
                if told.get(job) == (region, reply.state, onward):
                    continue
                told[job] = (region, reply.state, onward)
                self.deliver(
                    DependencyState(
                        job=job, region=region, state=reply.state, forwarded_to=onward, at=self.clock()
                    )
                )
            await idle(LOOKUP_EVERY)

    async def stop(self) -> None:
        """Cancel the requests in flight (their jobs are held or retried by the next leader)."""
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    # --- answering -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer hand-offs to this region until cancelled (each request in a task of its own)."""
        subscription = await self.bus.serve(
            subjects.handoff(self.region, "*"), self._answer, queue=QUEUE_GROUP, concurrent=True
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
        except LeaseLost:
            return None
        except FederationError as exc:  # stored or not, unknown: no answer, the requester asks again
            self.log.warning("hand-off not answered", job=message.spec.id, error=str(exc))
            return None
        except Exception as exc:  # a bug: the requester holds the job; the loop goes on
            self.log.error("hand-off failed", job=message.spec.id, error=repr(exc))
            return None
        self.log.info("hand-off answered", job=message.spec.id, origin=message.origin, outcome=reply.outcome)
        self.count("in", message.origin, reply.outcome)
        return encode(reply)

    async def _decide(self, message: HandOff) -> HandOffReply:
        """Accept (store first), or refuse having stored nothing; raise when the outcome is unknown."""
        spec, now = message.spec, self.clock()
        if message.lookup:  # a dependency's state, asked by a region whose job waits for it
            state, onward = self.lookup(spec.id)
            return HandOffReply(outcome="found" if state else "absent", state=state, reason=onward)
        held = self.held(spec.id)
        if held is not None and held.spec.origin == message.origin:
            # a repeated request, or a query: the first one was stored
            state = held.state
            if message.query:
                return HandOffReply(outcome="found", state=state)
            return HandOffReply(outcome="accepted", reason=f"already here ({state})")
        if await self._stored(spec.id, message.origin):  # stored, not consumed yet
            return HandOffReply(outcome="found" if message.query else "accepted", reason="stored here")
        if message.query:
            await self.check_lease()
            return HandOffReply(outcome="absent")
        stored = msgspec.structs.replace(spec, origin=message.origin, regions=[self.region])
        data = encode(stored)
        if spec.id not in self.uncertain:  # a store that may have landed is never refused, only retried
            offered = HandOffOffered(spec=spec, origin=message.origin, expires_at=message.expires_at, at=now)
            why = self.judge(offered)  # the core decides, and the journal keeps it
            if not why and len(data) > MAX_MESSAGE_BYTES:
                why = f"the submission is {len(data)} bytes here; the limit is {MAX_MESSAGE_BYTES}"
            if why:
                await self.check_lease()
                return HandOffReply(outcome="refused", reason=why)
        self.uncertain.add(spec.id)
        try:
            await self.bus.store(subjects.submit(self.region, spec.id), data, msg_id=spec.id, timeout=5.0)
        except InvalidRequest as exc:  # the stream refused it: nothing was stored
            self.uncertain.discard(spec.id)
            await self.check_lease()
            return HandOffReply(outcome="refused", reason=str(exc))
        self.uncertain.discard(spec.id)
        return HandOffReply(outcome="accepted", reason=f"{self.region} has room")

    async def _stored(self, job: str, origin: str) -> bool:
        """Whether this region's workloads stream holds ``origin``'s submission of ``job``."""
        stream, subject = subjects.workloads_stream(self.region), subjects.submit(self.region, job)
        found = await self.bus.last(stream, subject, direct=False)
        if found is None:
            return False
        try:
            message = decode_message(found.data)
        except RemoteProtocolError:
            return False
        return isinstance(message, Submit) and message.origin == origin


__all__ = ["HandOffs"]
