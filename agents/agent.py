"""The agent daemon: one per node. Heartbeats, offers, and runs what its ledger says.

Theory of operation
-------------------
* **Heartbeat** every ``heartbeat_interval`` to ``fed.<r>.hb.<node>`` with a per-message TTL of
  three beats; when the agent dies the server's delete marker tells the scheduler.
* **Offer** every ``sharing.check_interval``: the host is sampled and the sharing policy turned into
  an offer (:mod:`agents.probes`), stored latest-per-node with a TTL of ``offer_expiry``.
* **Reconcile, level-triggered.** The agent follows its own ledger key through subjects a server
  permission can name (its key's republish and a direct get of it). On every value it starts
  each allocation that is not running and not yet finished, and stops (SIGTERM, then SIGKILL) each
  running attempt that is no longer allocated (cancel). Before starting, local admission checks
  that the claimed devices are ones this node offers.
* **At most once across agent restarts.** Before an attempt starts it is appended (and synced,
  group-committed off the event loop: :mod:`agents.journal`) to a journal in the agent's state
  directory, and (without a cgroup to find it by) again with its process-group id once it runs;
  its directory is made in the same batch of the worker thread (:mod:`agents.offloop`), its
  cgroup on the loop (kernfs calls). An allocation found in the journal after a restart was
  started by a previous life of the agent: what is left of it is killed (its cgroup's processes;
  without one, its process group, if it still exists and carries that job's ``FED_JOB_ID``, so a
  reused pid is never hit; its output pipe died with the old agent), and the attempt is reported
  ``lost``, never re-run here; the job's ``on_node_lost`` decides whether a new attempt runs. The
  journal is compacted to the jobs still in the ledger.
* **Reports** (``started``, ``exited`` with the code, ``failed`` with the reason, ``lost``) are
  stored on the status stream, retried until acknowledged, after the attempt's output. An attempt
  that ends within ``START_REPORT_WAIT`` of its start sends one report, ``exited`` with
  ``started_at``, instead of two (the scheduler records it running, then ended).
* **Heartbeats keep their cadence** on a bad link (each waits at most most of an interval), and
  every follower is recreated after a reconnect (:meth:`federation.bus.Bus.follow`), so a node
  whose link heals reads its ledger again and stops the attempts that were replaced meanwhile.
* **Metrics** (``--metrics HOST:PORT``, :mod:`agents.metrics`): start and journal-commit
  latencies, running attempts, attempts by outcome and the workloads' measured usage, each set on
  the event loop where it happens; the metrics server's thread only reads the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import pwd
import shutil
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import msgspec
import psutil
import structlog

from agents import cgroups, data, landlock, runner, spawning, workdirs
from agents.journal import AttemptJournal
from agents.metrics import AgentMetrics
from agents.offloop import OffLoop
from agents.probes import HostProbe, build_offer, declared_devices
from agents.workdirs import WorkDirs
from federation import failpoints, subjects, tracing
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.config import AgentConfig
from federation.errors import ConfigError, FederationError, RemoteProtocolError
from federation.metrics import serving
from federation.resources import format_memory
from federation.schemas import (
    Allocation,
    Heartbeat,
    JobEvent,
    JobEventKind,
    Lease,
    Ledger,
    ObjectRef,
    Offer,
    Usage,
    decode,
    encode,
)
from federation.tasks import idle

log = structlog.get_logger()
LEDGER_CHECK = 2.0  # seconds without a republished change before the agent reads its ledger again
CADENCE_READS = 10  # the region's cadence is read again every this many heartbeats
CADENCE_CHECK = 10.0  # ... and at most this often (seconds)
START_REPORT_WAIT = 0.02  # seconds a start report waits for the exit, to be carried by its report


class Agent:
    """One node's agent (see the module docstring).

    ``clock`` is the wall time the agent stamps what it stores and sends (heartbeats, offers,
    reports); ``monotonic`` is what it measures durations on (the heartbeat cadence, bounded waits,
    an attempt's wall time). Both are injectable, as the scheduler's clock is.
    """

    def __init__(
        self,
        config: AgentConfig,
        probe: HostProbe | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: str = "",
    ) -> None:
        """``metrics``: the ``HOST:PORT`` to serve Prometheus metrics on (port 0: a free one; "" off)."""
        self.config = config
        self.metrics = AgentMetrics(running=lambda: len(self.running))
        self.metrics_address = metrics
        self.metrics_url = ""  # where they are served, once running
        self.clock = clock
        self.monotonic = monotonic
        self.region = config.region
        self.node = config.node
        self.probe = probe or HostProbe()
        # absolute: the process's working directory moves while a workload starts (agents.spawning)
        self.state_dir = Path(config.state_dir or f".fed-agent-{config.node}").absolute()
        self.work_root = Path(config.work_dir).absolute() if config.work_dir else self.state_dir / "work"
        self.disk = OffLoop()  # file work off the event loop, batched (the journal's included)
        self.workdirs = WorkDirs(self.work_root, self.disk)  # the attempts' directories, reused
        self.journal = AttemptJournal(self.state_dir / "attempts.journal", self.disk)
        self.running: dict[str, runner.Run] = {}
        # the region's cadence (seconds between heartbeats, between refreshes of an unchanged
        # offer): this agent's own until the lease says otherwise (_follow_cadence)
        self.beat = config.heartbeat_interval
        self.refresh = config.sharing.check_interval
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.finished: set[tuple[str, int]] = set()
        self.previous_life: dict[tuple[str, int], int] = {}
        self.devices: tuple[set[int], set[str]] = (set(), set())
        self.desired: dict[str, int] = {}
        self._allocations: tuple[Allocation, ...] = ()  # the latest ledger's
        self._background: set[asyncio.Task[None]] = set()
        self._run_ended = asyncio.Event()
        self._bus: Bus | None = None
        self.log = log.bind(region=config.region, node=config.node)
        self._stop = asyncio.Event()
        self._stopping: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None
        self.sandbox = runner.Sandbox()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop` or a signal; on the way out stop every running attempt."""
        os.umask(0o077)  # the agent's files (journal, logs, credentials) are its own; so are the jobs'
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.sandbox = self._sandbox()
        if self.sandbox.uid is not None:  # the workloads' directories are theirs
            gid = self.sandbox.gid if self.sandbox.gid is not None else -1
            self.workdirs.owner = (self.sandbox.uid, gid)
        await self._isolate()
        cores, gpus, _ = declared_devices(self.config, self.probe.sample(set()))
        self.devices = (set(cores), set(gpus))
        if sealed := spawning.seal_inherited():
            self.log.info("descriptors the agent was started with are kept from workloads", count=len(sealed))
        self.previous_life = self.journal.read()
        self._reap_previous_life()
        self._clear_previous_directories()
        async with serving(self.metrics.registry, self.metrics_address, self.log) as url:
            self.metrics_url = url
            await self._serve()

    async def _serve(self) -> None:
        self._bus = await Bus.connect(self.config.nats_url, f"fed-agent-{self.node}")
        loops = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._offers()),
            asyncio.create_task(self._follow_ledger()),
            asyncio.create_task(self._follow_cadence()),
        ]
        for task in loops:
            task.add_done_callback(self._loop_ended)
        self.log.info("agent started", work_root=str(self.work_root))
        try:
            await self._stop.wait()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown_runs()
            await self.disk.call(self.workdirs.close)  # (after the give-backs asked for so far)
            await self.journal.close()
            if self.sandbox.cgroups is not None:
                self.sandbox.cgroups.close()
            await self.bus.close()
            self.log.info("agent stopped")
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        """Ask the agent to stop."""
        self._stop.set()

    @property
    def bus(self) -> Bus:
        """The agent's connection: made by :meth:`run`, which alone runs what uses it."""
        if self._bus is None:
            raise RuntimeError("the agent has no connection yet: it is made by Agent.run")
        return self._bus

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """A main loop must never end while the agent runs: stop loudly, with a non-zero exit."""
        if task.cancelled() or self._stop.is_set():
            return
        self.failure = task.exception() or RuntimeError("an agent loop ended")
        self.log.error("agent loop died; stopping", error=repr(self.failure))
        self._stop.set()

    async def _shutdown_runs(self) -> None:
        for run in list(self.running.values()):
            await run.stop(self.config.kill_grace)
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=self.config.kill_grace + 5)

    # --- heartbeats and offers ------------------------------------------------------------------------

    async def _follow_cadence(self) -> None:
        """Read the region's cadence from its lease (:mod:`federation.core.cadence`) at start and
        every ``CADENCE_READS`` heartbeats (at least every ``CADENCE_CHECK`` seconds): the
        heartbeat interval and the offer refresh follow it, never faster than this agent's own
        ``heartbeat_interval`` and ``check_interval``. Without a readable lease the last one holds."""
        bucket = subjects.lease_bucket(self.region)
        while True:
            try:
                async with asyncio.timeout(2.0):
                    value, _ = await self.bus.kv_get(bucket, subjects.LEADER_KEY)
                lease = decode(Lease, value) if value else None
            except (FederationError, TimeoutError) as exc:
                self.log.debug("region cadence not read", error=str(exc))
                lease = None
            if lease is not None and lease.heartbeat > 0:
                beat = max(self.config.heartbeat_interval, lease.heartbeat)
                refresh = max(self.config.sharing.check_interval, lease.offer_refresh)
                if (beat, refresh) != (self.beat, self.refresh):
                    self.log.info("region cadence", heartbeat=beat, offer_refresh=refresh, nodes=lease.nodes)
                    self.beat, self.refresh = beat, refresh
            await idle(max(CADENCE_CHECK, CADENCE_READS * self.beat))

    async def _heartbeats(self) -> None:
        bus = self.bus
        seq, due = 0, self.monotonic()
        while True:
            # a fixed cadence: a beat lost on a bad link waits at most most of one interval, so the
            # next beat still goes out on time (a link healing within the TTL must not look like death)
            interval = self.beat  # the region's cadence, read from its lease
            ttl = max(1, math.ceil(3 * interval))
            seq += 1
            beat = Heartbeat(node=self.node, seq=seq, sent_at=self.clock(), interval=interval)
            try:
                await bus.store(
                    subjects.heartbeat(self.region, self.node),
                    encode(beat),
                    ttl=ttl,
                    timeout=max(0.2, 0.8 * interval),
                )
            except Exception as exc:  # the loop must outlive any single failure
                self.log.warning("heartbeat not stored", error=str(exc))
            due = max(due + interval, self.monotonic())
            await idle(due - self.monotonic())

    async def _offers(self) -> None:
        """Sample the host every ``check_interval`` and offer at once when what the node shares
        changed (:func:`shared`), else only when the region's refresh interval has passed; an
        offer lives at least three refresh intervals."""
        bus = self.bus
        policy = self.config.sharing
        sent: bytes | None = None
        sent_at = -math.inf
        while True:
            pids = {run.pid for run in self.running.values()}
            try:
                now = self.clock()
                offer = build_offer(self.config, self.probe.sample(pids), now)
                lasting = max(policy.offer_expiry, 3 * self.refresh)
                offer = msgspec.structs.replace(offer, expires_at=now + lasting)
                changed = shared(offer)
                if changed != sent or self.monotonic() - sent_at >= self.refresh:
                    await bus.store(
                        subjects.offer(self.region, self.node),
                        encode(offer),
                        ttl=max(1, math.ceil(lasting)),
                        timeout=2.0,
                    )
                    sent, sent_at = changed, self.monotonic()
            except Exception as exc:  # the loop must outlive any single failure
                self.log.warning("offer not stored", error=str(exc))
            await idle(policy.check_interval)

    # --- reconcile ---------------------------------------------------------------------------------

    async def _follow_ledger(self) -> None:
        """Watch this node's ledger through subjects a permission can name (so an agent can be
        confined to its own node): the bucket's republish of every write to ``fed.<r>.ledger.<node>``
        (core NATS), and a direct get of the key at start, after a reconnect, and after
        ``LEDGER_CHECK`` seconds without a change (a republished write can be missed). Each value is
        the node's whole ledger, so the latest one is all that matters; older ones are skipped."""
        bus = self.bus
        bucket = subjects.ledger_bucket(self.region)
        arrived: list[Delivery] = []
        changed = asyncio.Event()

        async def on_change(delivery: Delivery) -> None:
            arrived.append(delivery)
            changed.set()

        subscription = await bus.subscribe(subjects.ledger_changes(self.region, self.node), on_change)
        seen, generation = -1, -1
        try:
            while True:
                changed.clear()
                news, arrived[:] = list(arrived), []
                if news and generation == bus.generation:
                    latest = max(news, key=lambda d: int(d.headers.get("Nats-Sequence", 0)))
                    revision = int(latest.headers.get("Nats-Sequence", 0))
                    value = None if latest.removed else latest.data
                else:
                    generation = bus.generation
                    try:
                        value, revision = await bus.kv_get(bucket, self.node)
                    except FederationError as exc:
                        self.log.warning("ledger not read; retrying", error=str(exc))
                        await idle(1.0)
                        continue
                if revision > seen:
                    seen = revision
                    await self._apply_ledger(value)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LEDGER_CHECK):
                        await changed.wait()
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _apply_ledger(self, value: bytes | None) -> None:
        allocations: tuple[Allocation, ...] = ()
        if value is not None:
            try:
                allocations = decode(Ledger, value).allocations
            except RemoteProtocolError as exc:
                self.log.error("unreadable ledger; keeping current runs", error=str(exc))
                return
        await self.reconcile(allocations)

    async def reconcile(self, allocations: tuple[Allocation, ...]) -> None:
        """Start what is allocated and not running; stop what runs and is no longer allocated."""
        # a held gang member waits until its whole gang is claimed: it is neither started nor stopped
        desired = {slot(a): a for a in allocations if not a.held}
        self.desired = {key: a.attempt for key, a in desired.items()}
        self._allocations = allocations
        for job, run in list(self.running.items()):
            allocation = desired.get(job)
            if (allocation is None or allocation.attempt != run.spec.attempt) and not run.stopping:
                self.log.info("stopping attempt: no longer allocated", job=job, attempt=run.spec.attempt)
                stopping = asyncio.create_task(run.stop(self.config.kill_grace))
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopping.discard)
        self.finished = {(job, attempt) for job, attempt in self.finished if job in desired}
        self.journal.compact(desired)
        for job, allocation in desired.items():
            key = (job, allocation.attempt)
            if job in self.tasks or key in self.finished:
                continue
            if key in self.previous_life:
                self.finished.add(key)
                self.tasks[job] = asyncio.create_task(
                    self._report_only(allocation, "the agent restarted while this attempt ran; not re-run")
                )
                continue
            self.tasks[job] = asyncio.create_task(self._attempt(allocation))

    def _admit(self, allocation: Allocation) -> str:
        """Local admission: the claimed devices must be this node's own."""
        cores, gpus = self.devices
        if allocation.pinned and not set(allocation.cores) <= cores:
            return f"claimed cores {list(allocation.cores)} are not cores of {self.node}"
        if not set(allocation.gpus) <= gpus:
            return f"claimed gpus {list(allocation.gpus)} are not gpus of {self.node}"
        return ""

    def _busy_devices(self, allocation: Allocation) -> bool:
        """Whether a still-running attempt (say, one being stopped) holds a claimed device."""
        for job, run in self.running.items():
            if job == slot(allocation):
                continue
            if set(run.spec.gpus) & set(allocation.gpus):
                return True
            if run.spec.pinned and allocation.pinned and set(run.spec.cores) & set(allocation.cores):
                return True
        return False

    async def _wait_for_devices(self, allocation: Allocation) -> bool:
        """Wait (bounded) until no running attempt holds the claimed devices."""
        deadline = self.monotonic() + self.config.kill_grace + 5.0
        while self._busy_devices(allocation):
            left = deadline - self.monotonic()
            if left <= 0:
                return False
            self._run_ended.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # not wait_for: it can swallow a cancellation on 3.11
                    await self._run_ended.wait()
        return True

    def _still_wanted(self, allocation: Allocation) -> bool:
        return self.desired.get(slot(allocation)) == allocation.attempt

    async def _report_only(self, allocation: Allocation, reason: str) -> None:
        self.metrics.finished["lost"].inc()
        try:
            await self._report(allocation, "lost", reason=reason)
        finally:
            self.tasks.pop(slot(allocation), None)
            self._catch_up(slot(allocation))

    def _catch_up(self, job: str) -> None:
        """The task of one of ``job``'s attempts ended: start the attempt its ledger asked for
        meanwhile, if any (a newer attempt of a job waits for the older one's task, and the ledger
        may not change again to bring it back)."""
        wanted = self.desired.get(job)
        if wanted is None or (job, wanted) in self.finished or job in self.tasks:
            return
        task = asyncio.create_task(self.reconcile(self._allocations))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _attempt(self, allocation: Allocation) -> None:
        """One attempt of ``allocation``, from its local admission to its exit report. Whatever
        happens, the agent's bookkeeping of it is closed at the end, and an attempt its ledger asked
        for meanwhile is started."""
        job, attempt = slot(allocation), allocation.attempt
        key = (job, attempt)
        bound = self.log.bind(job=allocation.job, attempt=attempt, member=allocation.member)
        seen, metrics = self.monotonic(), self.metrics
        try:
            with self._run_span(allocation):
                if not await self._admitted(allocation, bound):
                    metrics.finished["refused"].inc()
                    return
                if not self._still_wanted(allocation):
                    metrics.finished["not_started"].inc()
                    return  # released (cancelled) before it started: nothing ran, nothing to report

                spec = self._run_spec(allocation)
                staged = None
                if allocation.inputs and (staged := await self._stage(allocation, spec, bound)) is None:
                    metrics.finished["refused"].inc()
                    return
                run = await self._start_attempt(job, allocation, spec, bound, staged)
                if run is None:
                    metrics.finished["not_started"].inc()
                    return
                began, started_at = self.monotonic(), self.clock()
                metrics.start_latency.observe(began - seen)
                if not self._still_wanted(allocation):  # released while it was being started
                    await run.stop(self.config.kill_grace)
                short = await self._report_start(allocation, run, started_at)

                code, timed_out = await self._wait(run, allocation.timeout)
                wall = self.monotonic() - began
                reason = _exit_reason(allocation, run, code, timed_out)
                usage = _usage(run, wall)
                stored = await self._outputs(allocation, run) if allocation.outputs else []
                metrics.used(usage)
                metrics.finished[_outcome(run, code, timed_out)].inc()
                await self._report(
                    allocation,
                    "exited",
                    exit_code=code,
                    reason=reason,
                    usage=usage,
                    started_at=started_at if short else 0.0,
                    stored=stored,
                )
                bound.info("attempt exited", exit_code=code, stopped=run.stopping)
        except Exception as exc:  # a bug or a broken disk: say so rather than leave the job placed
            bound.error("attempt failed inside the agent", error=repr(exc))
            metrics.finished["agent_error"].inc()
            with contextlib.suppress(Exception):
                await self._report(allocation, "failed", reason=f"agent error: {exc!r}")
        finally:
            self.running.pop(job, None)
            self.finished.add(key)
            self.tasks.pop(job, None)
            self._run_ended.set()
            self._catch_up(job)

    def _run_span(self, allocation: Allocation) -> contextlib.AbstractContextManager[object]:
        """The attempt's own tracing span, only where spans go somewhere (the allocation carries
        the trace on, and the run's command gets it through its spec)."""
        if not tracing.recording():
            return contextlib.nullcontext()
        return tracing.span("fed.run", parent=allocation.traceparent, job=allocation.job, node=self.node)

    async def _admitted(self, allocation: Allocation, bound: structlog.typing.FilteringBoundLogger) -> bool:
        """Local admission (:meth:`_admit`), then a bounded wait until no attempt being stopped
        holds a claimed device. A refused allocation is reported ``refused``, saying why."""
        refusal = self._admit(allocation)
        if not refusal and not await self._wait_for_devices(allocation):
            refusal = "claimed devices are still held by an attempt that will not stop"
        if refusal:
            await self._report(allocation, "refused", reason=f"local admission: {refusal}")
            bound.warning("allocation refused", reason=refusal)
            return False
        return True

    def _run_spec(self, allocation: Allocation) -> runner.RunSpec:
        """What the runner starts for ``allocation``; made inside the attempt's span, whose
        ``traceparent`` the run's environment carries on."""
        return runner.RunSpec(
            job=allocation.job,
            attempt=allocation.attempt,
            command=allocation.command,
            env=_gang_env(allocation),
            cores=allocation.cores,
            gpus=allocation.gpus,
            pinned=allocation.pinned,
            traceparent=tracing.current_traceparent() or allocation.traceparent,
            keep_workdir=bool(allocation.outputs),
        )

    async def _stage(
        self, allocation: Allocation, spec: runner.RunSpec, bound: structlog.typing.FilteringBoundLogger
    ) -> Path | None:
        """The attempt's directory with the job's inputs in it (:mod:`agents.data`); one that
        cannot be staged is reported ``refused`` with the cause (the job goes back to the queue per
        its retry policy), and nothing runs: None then."""
        workdir = await self.disk.call(self.workdirs.take)
        try:
            await data.stage(self.bus, self.disk, self.region, allocation, workdir)
        except data.StagingError as exc:
            self.workdirs.give_back(workdir, contained=True)
            await self._report(allocation, "refused", reason=str(exc))
            bound.warning("inputs not staged", reason=str(exc))
            return None
        except BaseException:
            self.workdirs.give_back(workdir, contained=True)
            raise
        return workdir

    async def _outputs(self, allocation: Allocation, run: runner.Run) -> list[ObjectRef]:
        """Store the attempt's output files (not when it was stopped), then remove its directory;
        what could not be stored is said in the job's output."""
        try:
            if run.stopping:
                return []
            stored, notes = await data.store_outputs(
                self.bus, self.disk, self.region, self.node, allocation, run.workdir
            )
            if notes:
                text = "".join(f"[fed: {note}]\n" for note in notes).encode()
                await self._store_retrying(subjects.job_log(self.region, self.node, allocation.job), text)
            return stored
        finally:
            self.workdirs.give_back(run.workdir, contained=run.emptied)

    async def _start_attempt(
        self,
        job: str,
        allocation: Allocation,
        spec: runner.RunSpec,
        bound: structlog.typing.FilteringBoundLogger,
        staged: Path | None = None,
    ) -> runner.Run | None:
        """Launch the attempt (:meth:`_launch`), its output stored on the job's log subject, and
        count it running (journalled with its process group where no cgroup will find it). One that
        cannot start is reported ``failed`` with exit code 127, why also in its output: None then."""
        log_subject = subjects.job_log(self.region, self.node, allocation.job)

        async def sink(chunk: bytes) -> None:
            await self._store_retrying(log_subject, chunk)

        run = await self._launch(job, spec, sink, self._confined(allocation), staged)
        if isinstance(run, runner.LaunchError):
            await sink(f"[fed: {run}]\n".encode())
            await self._report(allocation, "failed", reason=str(run), exit_code=127)
            bound.info("attempt could not start", reason=str(run))
            return None
        self.running[job] = run
        if not run.contained:  # with a cgroup, a restarted agent finds its processes there
            self.journal.running(job, spec.attempt, run.pid)
        return run

    async def _report_start(self, allocation: Allocation, run: runner.Run, started_at: float) -> bool:
        """Report that the attempt started, unless it is over within ``START_REPORT_WAIT``: its
        exit report then carries its start (one durable report instead of two; a gang member
        reports both). Returns whether it was that short."""
        short = allocation.members == 1 and await run.exited_within(START_REPORT_WAIT)
        if not short:
            await self._report(allocation, "started", at=started_at)
        return short

    async def _launch(
        self,
        job: str,
        spec: runner.RunSpec,
        sink: runner.OutputSink,
        sandbox: runner.Sandbox,
        staged: Path | None = None,
    ) -> runner.Run | runner.LaunchError:
        """Make the attempt's directory (or take the one its inputs were staged in) and journal it
        (durably), both in the next batch of the worker thread, then its cgroup, then start its
        process: never before its line is on disk."""
        made = self.disk.call(partial(runner.make_workdir, self.workdirs, sandbox, staged))
        asked = self.monotonic()
        try:
            await self.journal.starting(job, spec.attempt)
            self.metrics.journal_latency.observe(self.monotonic() - asked)
        except BaseException:
            made.add_done_callback(_give_back_taken(self.workdirs))
            raise
        failpoints.crash("agent-after-journal")
        try:
            workdir = await made
        except OSError as exc:
            return runner.LaunchError(f"cannot make the attempt's directory: {exc}")
        try:
            prepared = runner.prepare(spec, workdir, sandbox, self.workdirs)
            bound = self.config.max_output_bytes
            return await runner.launch(spec, prepared, sink, bound, sandbox, self.workdirs)
        except runner.LaunchError as exc:
            return exc

    async def _wait(self, run: runner.Run, timeout: float) -> tuple[int, bool]:
        """The attempt's exit code, and whether its wall-clock limit stopped it."""
        if not timeout:
            return await run.wait(), False
        waiting = asyncio.ensure_future(run.wait())  # one wait, whether the limit is reached or not
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiting), False
        except TimeoutError:
            await run.stop(self.config.kill_grace)
            return await waiting, True

    def _sandbox(self) -> runner.Sandbox:
        """Who workloads run as (``run_as``), checked at start: a wrong user stops the agent."""
        tools, taskset = runner.sandbox_tools(), shutil.which("taskset")
        confine = self.config.confine_writes
        if confine and landlock.abi() < 1:
            raise ConfigError("confine_writes needs Landlock (Linux 5.13+, with landlock among the LSMs)")
        if not self.config.run_as:
            return runner.Sandbox(tools=tools, taskset=taskset, confine_writes=confine)
        try:
            user = pwd.getpwnam(self.config.run_as)
        except KeyError:
            raise ConfigError(f"run_as: no user {self.config.run_as!r} on this host") from None
        if user.pw_uid == 0:
            raise ConfigError("run_as must name an unprivileged user, not root")
        if os.geteuid() != 0:
            raise ConfigError(
                f"run_as={self.config.run_as!r} needs the agent to start as root to switch users"
            )
        # workloads reach their own directories (0700, theirs) but cannot list or read the agent's
        self.state_dir.chmod(0o711)
        self.work_root.mkdir(parents=True, exist_ok=True)
        self.work_root.chmod(0o711)
        self.log.info("workloads run as", user=self.config.run_as, uid=user.pw_uid)
        return runner.Sandbox(
            uid=user.pw_uid, gid=user.pw_gid, tools=tools, taskset=taskset, confine_writes=confine
        )

    async def _isolate(self) -> None:
        """Find the cgroup hierarchy attempts run in (``isolation``), kill and remove what a previous
        life of the agent left there, and label the node's offers with the isolation in force."""
        mode = "none"
        if self.config.isolation != "none":
            hierarchy = cgroups.detect(cgroups.agent_name(self.node, self.state_dir))
            if hierarchy is None and self.config.isolation == "cgroups":
                raise ConfigError(
                    "isolation = cgroups, but no cgroup hierarchy here is writable by the agent"
                )
            if hierarchy is None:
                self.log.warning(
                    "no writable cgroup hierarchy: attempts are contained by their process group only "
                    "(a process that calls setsid can outlive its attempt; memory is not limited per job)"
                )
            else:
                for left in hierarchy.leftovers():
                    group = hierarchy.existing(left)
                    if group is not None:
                        await group.remove()
                        self.log.warning("removed an attempt cgroup left by a previous agent", cgroup=left)
                self.sandbox = dataclasses.replace(self.sandbox, cgroups=hierarchy)
                mode = hierarchy.mode
                self.log.info("attempts run in cgroups", isolation=mode, where=str(hierarchy))
        self.config = msgspec.structs.replace(self.config, labels={**self.config.labels, "isolation": mode})

    def _confined(self, allocation: Allocation) -> runner.Sandbox:
        """The sandbox of one attempt: its address space is at least the memory it asked for, and
        its cgroup (where there is one) holds it to that memory and to the process limit."""
        limits = self.config.limits
        space = max(limits.address_space, allocation.memory) if limits.address_space else 0
        return dataclasses.replace(
            self.sandbox,
            limits=runner.rlimits(
                space, limits.cpu_time, limits.processes, limits.file_size, limits.open_files
            ),
            memory=allocation.memory,
            processes=limits.processes,
            cpus=allocation.cpu,
        )

    async def _report(
        self,
        allocation: Allocation,
        kind: JobEventKind,
        *,
        exit_code: int | None = None,
        reason: str = "",
        usage: Usage | None = None,
        at: float = 0.0,
        started_at: float = 0.0,
        stored: list[ObjectRef] | None = None,
    ) -> None:
        event = JobEvent(
            node=self.node,
            job=allocation.job,
            attempt=allocation.attempt,
            epoch=allocation.epoch,
            kind=kind,
            exit_code=exit_code,
            reason=reason[:4000],
            at=at or self.clock(),
            member=allocation.member,
            usage=usage,
            started_at=started_at,
            stored=stored or [],
        )
        await self._store_retrying(subjects.job_event(self.region, self.node, allocation.job), encode(event))

    async def _store_retrying(self, subject: str, data: bytes) -> None:
        """Store on a stream, retrying until acknowledged: a report must not be lost."""
        bus = self.bus
        delay = 0.2
        while True:
            try:
                await bus.store(subject, data, timeout=5.0)
                return
            except Exception as exc:  # retried until stored: a report must not be lost
                self.log.warning("store failed; retrying", subject=subject, error=str(exc))
                await idle(delay)
                delay = min(delay * 2, 5.0)

    # --- journal -----------------------------------------------------------------------------------

    def _clear_previous_directories(self) -> None:
        """Remove what a previous life of the agent left in its work root (its attempts do not run
        on: they are reported lost and their processes killed), staged inputs included, on the
        worker thread. Only in the agent's own work root: a configured ``work_dir`` may be shared."""
        if self.config.work_dir or not self.work_root.is_dir():
            return
        left = list(self.work_root.iterdir())
        for path in left:
            self.disk.later(partial(workdirs.remove_directory, path))
        if left:
            self.log.warning("removing attempt directories a previous life left", count=len(left))

    def _reap_previous_life(self) -> None:
        """Kill process groups left by a previous life of this agent (verified by their FED_JOB_ID)."""
        wanted = {pid: key for key, pid in self.previous_life.items() if pid}
        if not wanted:
            return
        for pgid in _groups_running(wanted):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            self.log.warning(
                "killed a process group left by a previous agent", job=wanted[pgid][0], pgid=pgid
            )


def _exit_reason(allocation: Allocation, run: runner.Run, code: int, timed_out: bool) -> str:
    """Why the attempt ended, where the agent knows more than its exit code: its wall-clock limit,
    its memory limit, a resource limit's signal, or its allocation released (empty otherwise)."""
    if timed_out:
        return f"stopped: its wall-clock limit of {allocation.timeout:g} s was reached"
    if run.usage is not None and run.usage.oom_killed:
        return f"out of memory: limit {format_memory(allocation.memory)}"
    if code < 0 and -code in runner.LIMIT_SIGNALS:
        return f"killed by {signal.Signals(-code).name}: {runner.LIMIT_SIGNALS[-code]} was reached"
    return "stopped: allocation released" if run.stopping else ""


def _outcome(run: runner.Run, code: int, timed_out: bool) -> str:
    """How an attempt that ran ended, as a label of ``fed_agent_attempts_finished_total``."""
    if timed_out:
        return "timed_out"
    if run.stopping:
        return "stopped"
    return "succeeded" if code == 0 else "failed"


def _usage(run: runner.Run, wall: float) -> Usage:
    """What the attempt used: from its cgroup, else its process tree's rusage, else its wall time."""
    gpu_seconds = len(run.spec.gpus) * wall
    measured, source = run.usage, run.measured_by
    if measured is None or source not in ("cgroup", "rusage"):
        return Usage(wall_seconds=round(wall, 3), gpu_seconds=round(gpu_seconds, 3))
    return Usage(
        cpu_seconds=round(measured.cpu_seconds, 3),
        peak_memory_bytes=measured.peak_memory_bytes,
        wall_seconds=round(wall, 3),
        gpu_seconds=round(gpu_seconds, 3),
        measured_by="cgroup" if source == "cgroup" else "rusage",
    )


def _give_back_taken(dirs: WorkDirs) -> Callable[[asyncio.Future[Path]], None]:
    """A callback giving back a directory taken for an attempt that will not start."""

    def give_back(taken: asyncio.Future[Path]) -> None:
        if not taken.cancelled() and taken.exception() is None:
            dirs.give_back(taken.result(), contained=True)

    return give_back


def _gang_env(allocation: Allocation) -> dict[str, str]:
    """The job's environment, and a gang member's place in its gang."""
    env = dict(allocation.env)
    if allocation.members > 1:
        env.update(FED_GANG_MEMBER=str(allocation.member), FED_GANG_SIZE=str(allocation.members))
    return env


def shared(offer: Offer) -> bytes:
    """What an offer says the node shares, without when it was made and the host's readings: a
    new offer goes out at once when this changes (the readings follow with the slow refresh)."""
    return encode(
        msgspec.structs.replace(
            offer, sent_at=0.0, expires_at=0.0, note="", cpu_percent=0.0, memory_percent=0.0, gpu_percent=0.0
        )
    )


def slot(allocation: Allocation) -> str:
    """What the agent keys an attempt by: the job id, or ``job#member`` for a gang member."""
    return allocation.job if allocation.members == 1 else f"{allocation.job}#{allocation.member}"


def _groups_running(wanted: dict[int, tuple[str, int]]) -> set[int]:
    """Which of the process groups ``wanted`` (pgid -> job, attempt) still run that job's attempt.

    The environment check guards against a reused pid: only a group whose member carries the
    job's ``FED_JOB_ID`` and ``FED_ATTEMPT`` is reported. One pass over the process table.
    """
    found: set[int] = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            pgid = os.getpgid(proc.pid)
            if pgid not in wanted or pgid in found:
                continue
            env = proc.environ()
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        key, attempt = wanted[pgid]
        job, _, member = key.partition("#")
        same_attempt = env.get("FED_JOB_ID") == job and env.get("FED_ATTEMPT") == str(attempt)
        if same_attempt and (not member or env.get("FED_GANG_MEMBER") == member):
            found.add(pgid)
    return found


async def serve(config: AgentConfig, metrics: str = "") -> None:
    """Run an agent until SIGINT/SIGTERM (the ``fed agent`` entry point); with ``metrics``
    (``HOST:PORT``) Prometheus metrics are served there."""
    agent = Agent(config, metrics=metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()
