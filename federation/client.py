"""The Python API: submit, watch, cancel, read logs and status.

::

    async with Client.connect() as fed:
        job = await fed.submit(["python", "train.py"], gpu=1, priority="high")
        record = await job.wait()
        print(record.state, record.exit_code)

The client finds the federation through the connection file in the state directory (``fed up``
writes it) and talks to each region's own server. A submission is validated here first (bad
input never leaves the process) and then stored on the region's workloads stream with the job id
as ``Nats-Msg-Id``: the returned :class:`Job` exists durably once ``submit`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, cast

import msgspec
import structlog

from federation import subjects, tracing
from federation.audit.check import Checker, Report, read
from federation.audit.trail import AuditEvent, baseline, events, matches, origins_last, processed
from federation.audit.usage import DEFAULT_BY, Accountant, Dimension, UsageReport, dimensions
from federation.audit.verify import Verification, verify
from federation.bus import FAILOVER, Bus
from federation.config import (
    Connection,
    connection_credentials,
    connection_tls,
    default_state_dir,
    load_connection,
)
from federation.core.capacity import Free
from federation.errors import (
    FederationError,
    FederationUnavailable,
    InvalidRequest,
    MalformedMessage,
    NotFound,
    NotPermitted,
    RemoteProtocolError,
)
from federation.identity import Credentials
from federation.resources import format_memory
from federation.schemas import (
    MAX_ARRAY_INDEX,
    MAX_MESSAGE_BYTES,
    PRIORITY_RANK,
    Allocation,
    Cancel,
    Decision,
    Dependency,
    DependencyWhen,
    JobRecord,
    Lease,
    Ledger,
    Offer,
    Priority,
    Quarantined,
    Semantics,
    Submit,
    Summary,
    TenantQuery,
    TenantReply,
    decode,
    decode_message,
    decode_summaries,
    decode_tenant_reply,
    encode,
    validate,
)

HUB_KEY = ":hub"  # the hub's connection among the region connections (no region has a colon)
TENANT_POLL = 0.25  # seconds between a tenant's questions while it waits for a job
ARRAY_POLL = 1.0  # seconds between reads of an array's elements while waiting for them all
ARRAY_WINDOW = 256  # an array's elements stored at once (each waits for its acknowledgement)
MAX_ARRAY_JOBS = 100_000  # elements of one job array
WORKFLOW_KEYS = frozenset(
    {"command", "after", "array", "limit", "id", "region", "cpu", "memory", "gpu", "priority", "nodes"}
    | {"tenant", "env", "require", "scoring", "max_attempts", "gang", "custom", "on_node_lost", "regions"}
    | {"semantics", "timeout"}
)  # what a workflow's job may say: submit()'s keyword arguments, plus an array's


def workflow_order(jobs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The names of a workflow's jobs in an order that puts every job after the jobs of the
    workflow it names in ``after`` (by name); :class:`InvalidRequest` naming a cycle."""
    for name in jobs:
        subjects.check_token(name, "job name")
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            raise InvalidRequest(f"the jobs depend on each other in a cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for item in jobs[name].get("after", ()):
            target = str(item).partition(":")[0]
            if target in jobs:
                visit(target, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in jobs:
        visit(name, [])
    return order


def new_job_id() -> str:
    """A fresh job id: time-ordered hex milliseconds plus 40 random bits."""
    return f"j{int(time.time() * 1000):x}{secrets.token_hex(5)}"


log = structlog.get_logger()


class NodeStatus(msgspec.Struct, kw_only=True):
    """One node in ``fed status --json``."""

    node: str
    live: bool
    offer: Offer | None
    allocations: list[Allocation]
    free_cpu: int = 0
    free_memory: int = 0
    free_gpu: int = 0
    # "ok" while it beats, "lost" once the heartbeat's TTL marker is the node's last word, "none" when
    # the stream holds neither (never beat, or its marker aged out: a node removed for good)
    heartbeat: str = "ok"

    @property
    def state(self) -> str:
        """What ``fed status`` shows: ``live`` (beating, with a current offer), ``LOST`` (its
        heartbeat expired), ``EXPIRED`` (beating, but its offer expired: it shares nothing now),
        ``NO OFFER`` (beating, never offered), ``SILENT`` (no heartbeat at all: gone)."""
        if self.heartbeat == "lost":
            return "LOST"
        if self.heartbeat == "none":
            return "SILENT"
        if self.live:
            return "live"
        return "EXPIRED" if self.offer is not None else "NO OFFER"


class RegionStatus(msgspec.Struct, kw_only=True):
    """One region in ``fed status --json``."""

    region: str
    url: str
    reachable: bool
    error: str = ""
    nodes: list[NodeStatus] = []
    jobs: dict[str, int] = {}
    queue: list[str] = []
    leader: Lease | None = None
    summary: Summary | None = None
    views: dict[str, Summary] = {}  # the other regions' summaries as this region sees them
    tenant: str = ""  # a tenant's view: only its own jobs (no nodes, leader or views: not its business)
    # daemon -> its Prometheus /metrics URL, as the fed up running from the state directory recorded
    # them (its schedulers, its nodes' agents, and "fed-up", the supervisor); filled by fed status
    metrics: dict[str, str] = {}
    console: str = ""  # the web console's page of this region (its URL from the connection file)


class Explanation(msgspec.Struct, kw_only=True):
    """What ``fed explain`` shows: the record, its last decision, and the live queue position."""

    record: JobRecord
    decision: Decision | None
    queue_position: int = 0
    via: JobRecord | None = None  # the home region's record of a job forwarded elsewhere

    def lines(self) -> list[str]:
        """What ``fed explain`` prints (and the web console shows): the request, where the job went
        and why, and the decision's filters, choice and runners-up."""
        record, decision, via = self.record, self.decision, self.via
        spec = record.spec
        out = [
            f"job       {record.id} ({record.state}, priority {spec.priority}, tenant {spec.tenant})",
            f"request   {request_text(spec)}",
        ]
        if spec.origin:
            out.append(f"region    {record.region}, handed over by {spec.origin}")
        if via is not None:
            out.append(f"home      {via.region}: {via.reason}")
            out.append(f"region    {record.region} (forwarded; its record follows)")
        if (via or record).handoffs:
            tried = ", ".join(f"{r}={state}" for r, state in sorted((via or record).handoffs.items()))
            out.append(f"hand-offs {tried}")
        if record.duplicates:
            out.append(f"duplicate also ran in {', '.join(record.duplicates)} (at-least-once)")
        out.append(f"why       {record.reason or '-'}")
        if self.queue_position:
            out.append(f"queue     position {self.queue_position} among pending jobs of {record.region}")
        if decision is None:
            return out
        when = time.strftime("%H:%M:%S", time.localtime(decision.at))
        then = f", queue position then {decision.queue_position}" if decision.queue_position else ""
        out.append(f"decision  {decision.kind} at {when}, {decision.considered} nodes considered{then}")
        for reason, count in sorted(decision.filtered.items(), key=lambda kv: -kv[1]):
            out.append(f"  filtered  {count:>4} node{'s' if count != 1 else ' '}: {reason}")
        if decision.chosen is not None:
            note = f"  ({decision.note})" if decision.note else ""
            out.append(f"  chosen    {decision.chosen.node:<16} {_score(decision.chosen.score)}{note}")
        for runner in decision.runners_up:
            out.append(f"  runner-up {runner.node:<16} {_score(runner.score)}")
        if decision.victims:
            out.append(f"  preempted {', '.join(decision.victims)}")
        return out


def request_text(spec: Submit) -> str:
    """A submission's request as ``fed job`` and ``fed explain`` show it: ``cpu=1 memory=0B gpu=0``
    plus whatever else the job asked for."""
    text = f"cpu={spec.cpu} memory={format_memory(spec.memory)} gpu={spec.gpu}"
    text += f" gang={spec.gang}" if spec.gang > 1 else ""
    text += f" require={spec.require}" if spec.require else ""
    text += f" prefer={','.join(spec.nodes)}" if spec.nodes else ""
    text += "".join(f" {name}={amount:g}" for name, amount in sorted(spec.custom.items()))
    text += f" on_node_lost={spec.on_node_lost}" if spec.on_node_lost else ""
    text += f" regions={','.join(spec.regions)}" if spec.regions else ""
    text += " retry-anywhere" if spec.semantics == "at_least_once" else ""
    return text


def _score(score: tuple[int, ...]) -> str:
    gpus, cores, memory = (*score, 0, 0, 0)[:3]
    return f"leaves gpu={gpus} cpu={cores} memory={format_memory(max(0, memory))}"


class Job:
    """A submitted job: its id, home region and the subject it was submitted on, and ways to
    follow it."""

    def __init__(self, client: Client, job_id: str, region: str, subject: str = "") -> None:
        self.client = client
        self.id = job_id
        self.region = region
        self.subject = subject or subjects.submit(region, job_id)

    def __repr__(self) -> str:
        return f"Job({self.id!r}, region={self.region!r})"

    async def record(self) -> JobRecord:
        """The current job record (raises :class:`NotFound` before the scheduler has seen it)."""
        return await self.client.job(self.id, region=self.region)

    async def wait(
        self, timeout: float | None = None, on_change: Callable[[JobRecord], None] | None = None
    ) -> JobRecord:
        """Wait until the job is terminal and return its final record (``on_change`` sees each
        record on the way)."""
        return await self.client.wait(self.id, region=self.region, timeout=timeout, on_change=on_change)

    async def cancel(self, reason: str = "cancelled by user") -> None:
        """Ask the home scheduler to cancel the job."""
        await self.client.cancel(self.id, region=self.region, reason=reason)

    async def explain(self) -> Explanation:
        """Why the job is pending, or why it went where it did."""
        return await self.client.explain(self.id, region=self.region)


class JobArray:
    """A submitted job array: its id, home region and indices (its jobs are ``<id>-<index>``)."""

    def __init__(self, client: Client, array_id: str, region: str, indices: list[int]) -> None:
        self.client = client
        self.id = array_id
        self.region = region
        self.indices = indices

    def __repr__(self) -> str:
        return f"JobArray({self.id!r}, region={self.region!r}, jobs={len(self.indices)})"

    def job(self, index: int) -> Job:
        """The element of ``index``."""
        return Job(self.client, f"{self.id}-{index}", self.region)

    async def records(self) -> list[JobRecord]:
        """Every element's current record (where it lives), by index."""
        return await self.client.array(self.id)

    async def wait(
        self, timeout: float | None = None, on_change: Callable[[list[JobRecord]], None] | None = None
    ) -> list[JobRecord]:
        """Wait until every element is terminal; their final records, by index."""
        return await self.client.wait_array(self.id, len(self.indices), timeout=timeout, on_change=on_change)

    async def cancel(self, reason: str = "cancelled by user") -> None:
        """Cancel every element (those already ended stay as they are)."""
        await self.client.cancel(self.id, region=self.region, reason=reason)


class Client:
    """A connection to a federation; use ``async with Client.connect(...) as fed``."""

    def __init__(self, connection: Connection, credentials: Credentials | None = None) -> None:
        self.connection = connection
        self.credentials = credentials or connection_credentials(connection)
        # a tenant's credentials: its own jobs only, through the region's scheduler
        # (federation.scheduler.tenants)
        self.tenant = self.credentials.name if self.credentials and self.credentials.kind == "tenant" else ""
        self._buses: dict[str, Bus] = {}
        self._connecting: dict[str, asyncio.Lock] = {}

    @classmethod
    def connect(
        cls,
        state_dir: str | Path | None = None,
        connection: Connection | None = None,
        credentials: Credentials | None = None,
    ) -> Client:
        """A client for the federation described by ``connection`` or found in ``state_dir``, as
        the identity of ``credentials`` (default: ``$FED_CREDS``, else the connection file's)."""
        tracing.configure("fed-client")
        if connection is None:
            connection = load_connection(Path(state_dir) if state_dir else default_state_dir())
        return cls(connection, credentials)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every region connection."""
        for bus in self._buses.values():
            await bus.close()
        self._buses.clear()

    @property
    def regions(self) -> list[str]:
        """The federation's regions, the default one first."""
        names = list(self.connection.regions)
        default = self.connection.default_region
        return sorted(names, key=lambda r: (r != default, names.index(r)))

    def _region(self, region: str | None) -> str:
        name = region or self.connection.default_region or next(iter(self.connection.regions), "")
        if name not in self.connection.regions:
            raise NotFound("region", name)
        return name

    async def bus(self, region: str | None = None) -> Bus:
        """The (cached) connection to a region's server."""
        name = self._region(region)
        return await self._connected(name, self.connection.regions[name].url, timeout=3.0)

    async def _connected(self, key: str, url: str, timeout: float = 5.0) -> Bus:
        """The cached connection ``key``, made once: callers that ask at the same time (200
        submissions gathered at once) share one attempt instead of each opening a connection and
        leaving all but the last open."""
        if key in self._buses:
            return self._buses[key]
        async with self._connecting.setdefault(key, asyncio.Lock()):
            if key not in self._buses:
                self._buses[key] = await Bus.connect(
                    url,
                    "fed-client",
                    retry_forever=False,
                    timeout=timeout,
                    tls=connection_tls(self.connection),
                    credentials=self.credentials,
                )
        return self._buses[key]

    # --- submit / cancel -----------------------------------------------------------------------------

    async def submit(
        self,
        command: Sequence[str],
        *,
        region: str | None = None,
        cpu: int = 1,
        memory: int = 0,
        gpu: int = 0,
        priority: Priority = "medium",
        nodes: Sequence[str] = (),
        tenant: str = "default",
        env: dict[str, str] | None = None,
        job_id: str | None = None,
        require: dict[str, str] | None = None,
        scoring: Literal["", "binpack", "spread"] = "",
        max_attempts: int = 0,
        gang: int = 1,
        custom: dict[str, float] | None = None,
        on_node_lost: str = "",
        regions: Sequence[str] = (),
        semantics: Semantics = "at_most_once",
        timeout: float = 0.0,
        after: Sequence[str | Dependency] = (),
    ) -> Job:
        """Validate and durably submit a job; returns once the region's stream stored it.

        ``on_node_lost`` is ``replace``, ``wait=30s`` or ``fail`` (empty: the region's default).
        ``regions`` lists where the job may run (empty or ``["any"]``: home first, then any
        region); ``semantics`` is ``at_most_once`` or ``at_least_once`` across regions.
        ``timeout`` is each attempt's wall-clock limit in seconds (0: none). ``after`` names jobs
        or job arrays this one waits for, ``"ID"`` or ``"ID:ok"`` (succeeded), ``"ID:failed"``,
        ``"ID:any"``, in any region; an unknown one is refused here.
        """
        name = self._region(region)
        spec = self._submission(
            command,
            job_id=job_id or new_job_id(),
            cpu=cpu,
            memory=memory,
            gpu=gpu,
            priority=priority,
            nodes=nodes,
            tenant=tenant,
            env=env,
            require=require,
            scoring=scoring,
            max_attempts=max_attempts,
            gang=gang,
            custom=custom,
            on_node_lost=on_node_lost,
            regions=regions,
            semantics=semantics,
            timeout=timeout,
            after=await self._dependencies(after),
        )
        with tracing.span("fed.submit", job=spec.id, region=name):
            subject = await self._store(spec, name)
        return Job(self, spec.id, name, subject)

    async def submit_workflow(
        self, jobs: Mapping[str, Mapping[str, Any]], *, region: str | None = None
    ) -> dict[str, Job | JobArray]:
        """Submit several jobs that depend on each other by name: a small workflow, checked as a
        whole before anything is sent (an unknown option, a cycle, or an ``after`` that names
        neither a job here nor an existing job: an error, and nothing is submitted).

        Each entry is :meth:`submit`'s keyword arguments plus ``command``; ``after`` entries are
        ``"NAME[:ok|failed|any]"`` (a job of this workflow) or an existing job or array id;
        ``array`` (a sequence of indices) and ``limit`` make the entry a job array
        (:meth:`submit_array`); ``id`` names the job (or the array). Jobs are stored in dependency
        order; returns each name's :class:`Job` or :class:`JobArray`.
        """
        order = workflow_order(jobs)
        external: dict[str, Dependency] = {}
        for name in order:  # check every job and every outside dependency before storing anything
            entry = dict(jobs[name])
            unknown = sorted(set(entry) - WORKFLOW_KEYS)
            if unknown:
                raise InvalidRequest(f"job {name!r}: unknown option {unknown[0]!r}")
            if "command" not in entry:
                raise InvalidRequest(f"job {name!r}: no command")
            for item in entry.get("after", ()):
                target = str(item).partition(":")[0]
                if target not in jobs and str(item) not in external:
                    try:
                        external[str(item)] = (await self._dependencies([str(item)]))[0]
                    except InvalidRequest as exc:
                        raise InvalidRequest(f"job {name!r}: {exc} (nor a job of this workflow)") from None
            options = {
                k: v
                for k, v in entry.items()
                if k not in ("command", "after", "array", "limit", "id", "region")
            }
            self._region(entry.get("region", region))
            try:
                self._submission(entry["command"], job_id=new_job_id(), **options)
            except TypeError as exc:
                raise InvalidRequest(f"job {name!r}: {exc}") from None
            except InvalidRequest as exc:
                raise InvalidRequest(f"job {name!r}: {exc}") from None
        submitted: dict[str, Job | JobArray] = {}
        for name in order:
            entry = dict(jobs[name])
            after = []
            for item in entry.pop("after", ()):
                target, _, when = str(item).partition(":")
                if target in submitted:
                    done = submitted[target]
                    after.append(
                        Dependency(job=done.id, when=cast(DependencyWhen, when or "ok"), region=done.region)
                    )
                else:
                    after.append(external[str(item)])
            command, job_id = entry.pop("command"), entry.pop("id", None)
            where = entry.pop("region", region)
            if "array" in entry:
                indices, limit = entry.pop("array"), entry.pop("limit", 0)
                submitted[name] = await self.submit_array(
                    command, indices, limit=limit, array_id=job_id, region=where, after=after, **entry
                )
            else:
                submitted[name] = await self.submit(
                    command, job_id=job_id, region=where, after=after, **entry
                )
        return submitted

    async def submit_array(
        self,
        command: Sequence[str],
        indices: Sequence[int],
        *,
        limit: int = 0,
        array_id: str | None = None,
        region: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        **options: Any,
    ) -> JobArray:
        """Submit a job array (Slurm's ``--array``): one job per index, ``<array id>-<index>``, each
        with ``FED_ARRAY_ID`` and ``FED_ARRAY_INDEX`` in its environment; ``limit`` > 0 lets at
        most that many hold an allocation at once (Slurm's ``%``). ``options`` are :meth:`submit`'s.
        Returns once every element is stored (sent many at a time; ``progress(stored, total)``
        hears how far it got). Submitting again with the same ``array_id`` adds nothing twice."""
        name = self._region(region)
        array_id = array_id or new_job_id()
        if not indices:
            raise InvalidRequest("a job array needs at least one index")
        if len(set(indices)) != len(indices):
            raise InvalidRequest("a job array's indices must be distinct")
        if len(indices) > MAX_ARRAY_JOBS:
            raise InvalidRequest(f"a job array holds at most {MAX_ARRAY_JOBS} jobs, not {len(indices)}")
        if min(indices) < 0 or max(indices) > MAX_ARRAY_INDEX:
            raise InvalidRequest(f"array indices run from 0 to {MAX_ARRAY_INDEX}")
        if limit < 0:
            raise InvalidRequest(f"an array's running limit is a count of jobs, not {limit}")
        if len(array_id) + 1 + len(str(max(indices))) > 64:
            raise InvalidRequest(
                f"array id {array_id!r} leaves no room for the index in a job id (64 characters)"
            )
        env = dict(options.pop("env", None) or {})
        after = await self._dependencies(options.pop("after", ()))
        template = self._submission(
            command, job_id=f"{array_id}-{max(indices)}", env=env, after=after, **options
        )
        template = msgspec.structs.replace(template, array=array_id, array_limit=limit)
        validate(template)
        stored = 0
        window = asyncio.Semaphore(ARRAY_WINDOW)

        async def store(position: int, index: int) -> None:
            nonlocal stored
            element = msgspec.structs.replace(
                template,
                id=f"{array_id}-{index}",
                array_index=index,
                # a microsecond apart, in index order: the queue takes equal priorities by age, so
                # the elements start in index order whatever order their acknowledgements come in
                submitted_at=template.submitted_at + position * 1e-6,
                env={**env, "FED_ARRAY_ID": array_id, "FED_ARRAY_INDEX": str(index)},
            )
            async with window:
                await self._store(element, name)
            stored += 1
            if progress is not None:
                progress(stored, len(indices))

        with tracing.span("fed.submit_array", job=array_id, region=name, jobs=len(indices)):
            await asyncio.gather(*(store(position, index) for position, index in enumerate(sorted(indices))))
        return JobArray(self, array_id, name, list(indices))

    def _submission(
        self,
        command: Sequence[str],
        *,
        job_id: str,
        cpu: int = 1,
        memory: int = 0,
        gpu: int = 0,
        priority: Priority = "medium",
        nodes: Sequence[str] = (),
        tenant: str = "default",
        env: dict[str, str] | None = None,
        require: dict[str, str] | None = None,
        scoring: Literal["", "binpack", "spread"] = "",
        max_attempts: int = 0,
        gang: int = 1,
        custom: dict[str, float] | None = None,
        on_node_lost: str = "",
        regions: Sequence[str] = (),
        semantics: Semantics = "at_most_once",
        timeout: float = 0.0,
        after: Sequence[Dependency] = (),
    ) -> Submit:
        """A submission checked as the scheduler will check it (bad input never leaves here)."""
        unknown = [r for r in regions if r != "any" and r not in self.connection.regions]
        if unknown:
            known = ", ".join(self.connection.regions)
            raise InvalidRequest(f"unknown region {unknown[0]!r} in regions: this federation has {known}")
        if cpu < 1:
            raise InvalidRequest(f"cpu must be at least 1 (a job always holds a core), got {cpu}")
        if self.tenant and tenant not in ("default", self.tenant):
            raise InvalidRequest(f"these credentials submit as tenant {self.tenant!r} only, not {tenant!r}")
        tenant = self.tenant or tenant
        try:
            spec = Submit(
                id=job_id,
                command=list(command),
                cpu=cpu,
                memory=memory,
                gpu=gpu,
                priority=priority,
                tenant=tenant,
                nodes=list(nodes),
                env=dict(env or {}),
                submitted_at=time.time(),
                require=dict(require or {}),
                scoring=scoring,
                max_attempts=max_attempts,
                timeout=timeout,
                gang=gang,
                custom=dict(custom or {}),
                on_node_lost=on_node_lost,
                regions=list(regions),
                semantics=semantics,
                after=list(after),
            )
            validate(spec)
        except MalformedMessage as exc:
            raise InvalidRequest(f"invalid submission: {exc.reason}") from None
        except (RemoteProtocolError, TypeError, msgspec.ValidationError) as exc:
            raise InvalidRequest(f"invalid submission: {exc}") from None
        size = len(encode(spec))
        if size > MAX_MESSAGE_BYTES:
            raise InvalidRequest(f"submission is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
        return spec

    async def _dependencies(self, after: Sequence[str | Dependency]) -> list[Dependency]:
        """``after`` as dependencies, each found where it lives now (a job, or a job array by its
        id); one that no region knows is refused before anything is sent. A :class:`Dependency`
        that names its region is taken as it is."""
        out = []
        for item in after:
            if isinstance(item, Dependency) and item.region:  # found already (a workflow's own job)
                out.append(item)
                continue
            if isinstance(item, str):
                job, _, when = item.partition(":")
                if when not in ("", "ok", "failed", "any"):
                    raise InvalidRequest(f"after {item!r}: say how it must end with :ok, :failed or :any")
                item = Dependency(job=job, when=cast(DependencyWhen, when or "ok"))
            try:
                subjects.check_token(item.job, "job id")
                region = (await self.where(item.job)).region
            except NotFound:
                elements = await self.array(item.job)
                if not elements:
                    raise InvalidRequest(
                        f"after {item.job}: no job or job array of that id in any region"
                    ) from None
                region = next((r.region for r in elements if not r.spec.origin), elements[0].spec.origin)
            out.append(msgspec.structs.replace(item, region=region))
        return out

    async def _store(self, spec: Submit, region: str) -> str:
        """Store ``spec`` on ``region``'s workloads stream (the id is the duplicate key); the subject."""
        bus = await self.bus(region)
        subject = subjects.submit(region, spec.id)
        if self.tenant:
            subject = subjects.tenant_submit(region, spec.id, self.tenant)
        await bus.store(subject, encode(spec), msg_id=spec.id, timeout=FAILOVER)
        return subject

    async def cancel(
        self, job_id: str, *, region: str | None = None, reason: str = "cancelled by user"
    ) -> None:
        """Ask the scheduler of the region that holds the job to cancel it (a no-op once the job
        is terminal; a job handed to another region is cancelled there). A job array's id cancels
        every element: one request to the array's home, whose scheduler knows its elements."""
        try:
            where = (await self.where(job_id, region=region)).region
        except NotFound:
            elements = await self.array(job_id, region=region)
            if not elements:
                raise
            # the array's home: where an element lives that was not handed over, else where one came from
            where = next((r.region for r in elements if not r.spec.origin), elements[0].spec.origin)
        bus = await self.bus(where)
        message = Cancel(id=job_id, reason=reason, requested_at=time.time())
        subject = subjects.cancel(where, job_id)
        if self.tenant:
            subject = subjects.tenant_cancel(where, job_id, self.tenant)
        await bus.store(subject, encode(message), timeout=FAILOVER)

    # --- read -------------------------------------------------------------------------------------

    async def job(self, job_id: str, *, region: str | None = None) -> JobRecord:
        """A job's record, from its region (searching every region when none is given)."""
        subjects.check_token(job_id, "job id")
        for name in [self._region(region)] if region else self.regions:
            try:
                if self.tenant:
                    with contextlib.suppress(NotFound):
                        return (await self._ask(name, "job", TenantQuery(job=job_id))).records[0]
                    continue
                bus = await self.bus(name)
                value, _ = await bus.kv_get(subjects.jobs_bucket(name), job_id)
            except FederationUnavailable:
                if region:
                    raise
                continue
            if value is not None:
                return decode(JobRecord, value)
        raise NotFound("job", job_id)

    async def _ask(self, region: str, verb: str, query: TenantQuery) -> TenantReply:
        """A tenant's question to ``region``'s leading scheduler."""
        bus = await self.bus(region)
        data = await bus.request(
            subjects.tenant_api(region, self.tenant, verb), encode(query), timeout=FAILOVER
        )
        reply = decode_tenant_reply(data)
        if reply.error.endswith("not found"):
            raise NotFound("job", query.job)
        if reply.error:
            raise InvalidRequest(reply.error)
        return reply

    async def where(self, job_id: str, *, region: str | None = None) -> JobRecord:
        """The record of the region the job lives in: its home's, or the region it was forwarded to
        (the home's while that region has not written its record yet, or cannot be reached)."""
        record = await self.job(job_id, region=region)
        if record.state == "forwarded" and record.forwarded_to in self.connection.regions:
            with contextlib.suppress(NotFound, FederationUnavailable):
                return await self.job(job_id, region=record.forwarded_to)
        return record

    async def explain(self, job_id: str, *, region: str | None = None) -> Explanation:
        """Why a job is pending (filters, queue position now) or why it went where it did.

        A job handed to another region is explained from that region's record; ``via`` is then
        the home region's record (why it left).
        """
        home = await self.job(job_id, region=region)
        record = await self.where(job_id, region=home.region)
        via = home if record is not home else None
        position = 0
        if record.state == "pending":
            waiting = await self.jobs(region=record.region, state="pending")
            ordered = sorted(waiting, key=lambda r: (PRIORITY_RANK[r.spec.priority], r.submitted_at, r.id))
            position = next((i + 1 for i, r in enumerate(ordered) if r.id == job_id), 0)
        return Explanation(record=record, decision=record.decision, queue_position=position, via=via)

    async def wait(
        self,
        job_id: str,
        *,
        region: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[JobRecord], None] | None = None,
    ) -> JobRecord:
        """Follow the job's record until it is terminal (into the region it was forwarded to);
        ``on_change`` sees each record on the way."""
        name = self._region(region)
        if self.tenant:  # no bucket access: ask until the record is terminal
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                # not recorded yet, or the leader is changing: ask again
                with contextlib.suppress(NotFound, FederationUnavailable):
                    record = await self.job(job_id, region=name)
                    if record.terminal:
                        return record
                    if on_change is not None:
                        on_change(record)
                    if record.state == "forwarded" and record.forwarded_to in self.connection.regions:
                        name = record.forwarded_to
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not finished after {timeout}s")
                await asyncio.sleep(TENANT_POLL)
        bus = await self.bus(name)
        bucket = subjects.jobs_bucket(name)
        tail = await bus.tail(f"KV_{bucket}", f"$KV.{bucket}.{job_id}", last_per_subject=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                item = await tail.next(timeout=left)
                if item is None:
                    raise TimeoutError(f"job {job_id} not finished after {timeout}s")
                if item.removed:
                    continue
                try:
                    record = decode(JobRecord, item.data)
                except RemoteProtocolError:
                    continue  # an unreadable value: the scheduler quarantines and replaces it
                if record.terminal:
                    return record
                if on_change is not None:
                    on_change(record)
                if record.state == "forwarded" and record.forwarded_to in self.connection.regions:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    return await self.wait(
                        job_id, region=record.forwarded_to, timeout=left, on_change=on_change
                    )
        finally:
            await tail.stop()

    async def array(self, array_id: str, *, region: str | None = None) -> list[JobRecord]:
        """The records of a job array's elements (where each lives), by index; empty when no
        region knows that array."""
        subjects.check_token(array_id, "array id")
        records = [r for r in await self.jobs(region=region) if r.spec.array == array_id]
        return sorted(records, key=lambda r: r.spec.array_index)

    async def wait_array(
        self,
        array_id: str,
        count: int,
        *,
        region: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[list[JobRecord]], None] | None = None,
    ) -> list[JobRecord]:
        """Wait until ``count`` elements of the array are known and every one is terminal (read
        every :data:`ARRAY_POLL` seconds; ``on_change`` sees each read whose states moved)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: dict[str, str] = {}
        while True:
            records = await self.array(array_id, region=region)
            states: dict[str, str] = {r.id: r.state for r in records}
            if states != seen:
                seen = states
                if on_change is not None:
                    on_change(records)
            if len(records) >= count and all(r.terminal for r in records):
                return records
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"array {array_id} not finished after {timeout} s")
            await asyncio.sleep(ARRAY_POLL)  # sleep-ok: the poll interval of a read of every element

    async def jobs(self, *, region: str | None = None, state: str | None = None) -> list[JobRecord]:
        """Job records of one region (or all), oldest first, optionally of one state. Across all
        regions a job handed to another region is listed once, by the region it lives in."""
        out: list[JobRecord] = []
        for name in [self._region(region)] if region else self.regions:
            if self.tenant:
                out += (await self._ask(name, "jobs", TenantQuery(state=state or ""))).records
                continue
            bus = await self.bus(name)
            for record in _readable(await bus.kv_load(subjects.jobs_bucket(name))):
                if state is None or record.state == state:
                    out.append(record)
        if not region:
            elsewhere = {r.id for r in out if r.spec.origin}
            out = [r for r in out if not (r.state == "forwarded" and r.id in elsewhere)]
        return sorted(out, key=lambda r: (r.submitted_at, r.id))

    async def logs(
        self, job_id: str, *, region: str | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]:
        """The job's output chunks (from the region that runs it); ``follow`` keeps reading until
        the job is terminal."""
        record = await self.where(job_id, region=region)
        if self.tenant:
            async for chunk in self._tenant_logs(record, follow):
                yield chunk
            return
        bus = await self.bus(record.region)
        tail = await bus.tail(
            subjects.logs_stream(record.region), subjects.job_log_filter(record.region, job_id)
        )
        try:
            while True:
                if await tail.caught_up():
                    if not follow:
                        return
                    record = await self.job(job_id, region=record.region)
                    if record.terminal and await tail.caught_up():
                        return  # the agent stores output before the exit report: nothing more comes
                item = await tail.next(timeout=0.5 if follow else 5.0)
                if item is not None:
                    yield item.data
        finally:
            await tail.stop()

    async def _tenant_logs(self, record: JobRecord, follow: bool) -> AsyncIterator[bytes]:
        after = 0
        while True:
            reply = await self._ask(record.region, "logs", TenantQuery(job=record.id, after=after))
            for chunk in reply.chunks:
                yield chunk
            if reply.next > after:
                after = reply.next
                continue
            if not follow or record.terminal:
                return
            record = await self.job(record.id, region=record.region)  # terminal: one more read, then done
            if not record.terminal:
                await asyncio.sleep(TENANT_POLL)

    # --- audit ------------------------------------------------------------------------------------

    def _not_for_tenants(self, what: str) -> None:
        """Refuse at once what a tenant's credentials cannot read (the server would drop the
        requests, and the caller would wait for a timeout that says nothing about permissions)."""
        if self.tenant:
            raise NotPermitted(what, f"tenant {self.tenant}", why="a tenant sees only its own jobs and logs")

    async def _audit_source(self, region: str | None, everywhere: bool) -> tuple[Bus, str]:
        self._not_for_tenants("the audit trail")
        if everywhere:
            return await self._connected(HUB_KEY, self.connection.hub_url), subjects.AUDIT_ALL
        name = self._region(region)
        return await self.bus(name), subjects.audit_stream(name)

    async def audit(
        self,
        *,
        region: str | None = None,
        everywhere: bool = False,
        from_seq: int = 0,
        since: float = 0.0,
        job: str = "",
        node: str = "",
        tenant: str = "",
    ) -> AsyncIterator[AuditEvent]:
        """The audit trail of a region (from its own stream: works while it is cut off) or, with
        ``everywhere``, of every region (the hub's ``AUDIT_ALL``), oldest first, as it is now."""
        bus, stream = await self._audit_source(region, everywhere)
        async for event, _ in events(bus, stream, from_seq=from_seq, since=since):
            if matches(event, job=job, node=node, tenant=tenant):
                yield event

    async def audit_check(
        self,
        *,
        region: str | None = None,
        everywhere: bool = False,
        wait: float = 10.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Report:
        """Rebuild the state from the audit trail and check the invariants (see
        :mod:`federation.audit.check`); ``progress(events, last)`` is told how far it got.

        What the region has handled (its consumers' floors) and each origin's last sequence are
        read first; the pass then reads until the audit has copied that far (up to ``wait``
        seconds), and the live buckets are read last, for I8.
        """
        bus, stream = await self._audit_source(region, everywhere)
        names = self.regions if everywhere else [self._region(region)]
        handled: dict[str, int] = {}
        origins: dict[str, int] = {}
        for name in names:
            if everywhere:
                with contextlib.suppress(FederationUnavailable):
                    origins.update(await origins_last(await self.bus(name), [subjects.audit_stream(name)]))
            else:
                handled.update(await processed(bus, name))
                origins.update(await origins_last(bus, subjects.audit_sources(name)))
        checker = Checker(await baseline(bus, stream))
        await read(bus, stream, checker, origins, wait=wait, progress=progress)
        live: dict[tuple[str, str], tuple[bytes, int]] = {}
        if not everywhere:  # I8 is checked against the region's own buckets
            for bucket in (subjects.ledger_bucket(names[0]), subjects.jobs_bucket(names[0])):
                live.update({(bucket, key): item for key, item in (await bus.kv_load(bucket)).items()})
        return checker.finish(origins_last=origins, live=live, processed=handled)

    async def audit_verify(self, *, region: str | None = None, everywhere: bool = False) -> Verification:
        """Re-run the placement core on the inputs it was fed and compare its decisions step by step
        (see :mod:`federation.audit.verify`)."""
        bus, stream = await self._audit_source(region, everywhere)
        return await verify(bus, stream, self.regions if everywhere else [self._region(region)])

    # --- usage ------------------------------------------------------------------------------------

    async def usage(
        self,
        *,
        since: float = 0.0,
        by: Dimension | Sequence[Dimension] = DEFAULT_BY,
        region: str | None = None,
        everywhere: bool = False,
    ) -> UsageReport:
        """The compute used since ``since`` (Unix seconds; 0: the whole trail), from the audit trail
        (what ``fed usage`` prints; see :mod:`federation.audit.usage` for what is counted and the units).

        Every region's own trail by default (read in turn, the hub not needed): a region that
        cannot be read is listed in ``unread`` and the others are counted. ``region`` reads one
        region's trail, which holds only what ran there (what it lent, not what it borrowed);
        ``everywhere`` the hub's ``AUDIT_ALL``. ``by`` names the breakdowns (``tenant``,
        ``region``, ``origin``, ``node``). A tenant's credentials are refused at once: the audit
        trail holds every tenant's jobs.
        """
        if self.tenant:
            raise NotPermitted(
                "usage accounting (it reads the audit trail)",
                f"tenant {self.tenant}",
                why="not permitted for a tenant, which sees only its own jobs and logs",
            )
        accountant = Accountant(since=since, by=dimensions(by))
        until = time.time()
        scopes: list[tuple[str | None, bool]] = [(name, False) for name in self.regions]
        if everywhere or region:
            scopes = [(None, True)] if everywhere else [(self._region(region), False)]
        read: list[str] = []
        unread: list[str] = []
        for name, hub in scopes:
            stream = subjects.AUDIT_ALL if hub else subjects.audit_stream(name or "")
            try:
                bus, _ = await self._audit_source(name, hub)
                async for event, value in events(bus, stream, since=since):
                    accountant.feed(event.region, event.at, value)
            except FederationError as exc:
                if len(scopes) == 1 or isinstance(exc, NotPermitted):
                    raise
                unread.append(f"{stream}: {exc}")
                continue
            read.append(stream)
        return accountant.report(until=until, read=read, unread=unread)

    async def quarantined(self, *, region: str | None = None) -> list[Quarantined]:
        """Refused messages with their reasons, oldest first (one region, or all)."""
        self._not_for_tenants("the quarantine")
        out: list[Quarantined] = []
        for name in [self._region(region)] if region else self.regions:
            bus = await self.bus(name)
            stream = subjects.quarantine_stream(name)
            if not await bus.last_sequence(stream) is not None:
                continue
            async for item in bus.follow(stream, subjects.quarantine(name, "*"), until_caught_up=True):
                out.append(msgspec.json.decode(item.data, type=Quarantined))
        return sorted(out, key=lambda q: q.at)

    async def status(self) -> list[RegionStatus]:
        """Every region: its nodes (offer, allocations, free capacity), job counts and queue head
        (with a tenant's credentials: only the counts and queue of its own jobs)."""
        if self.tenant:
            return [await self._tenant_status(name) for name in self.regions]
        return [await self.region_status(name) for name in self.regions]

    async def _tenant_status(self, name: str) -> RegionStatus:
        endpoint = self.connection.regions[name]
        try:
            records = (await self._ask(name, "jobs", TenantQuery())).records
        except (FederationUnavailable, TimeoutError) as exc:
            return RegionStatus(
                region=name, url=endpoint.url, reachable=False, error=str(exc), tenant=self.tenant
            )
        return _with_jobs(
            RegionStatus(region=name, url=endpoint.url, reachable=True, tenant=self.tenant), records
        )

    async def region_status(self, name: str) -> RegionStatus:
        """One region's status; an unreachable region is reported, not raised."""
        endpoint = self.connection.regions[name]
        try:
            bus = await self.bus(name)
            offers: dict[str, Offer] = {}
            if await bus.last_sequence(subjects.offers_stream(name)) is not None:
                async for item in bus.follow(
                    subjects.offers_stream(name),
                    subjects.offer(name, "*"),
                    last_per_subject=True,
                    until_caught_up=True,
                ):
                    if not item.removed:
                        message = decode_message(item.data)
                        if isinstance(message, Offer):
                            offers[message.node] = message
            ledgers = {
                k: decode(Ledger, v)
                for k, (v, _) in (await bus.kv_load(subjects.ledger_bucket(name))).items()
            }
            records = _readable(await bus.kv_load(subjects.jobs_bucket(name)))
            silent: set[str] = set()  # nodes whose last heartbeat message is the TTL marker
            beating: set[str] = set()  # nodes whose last heartbeat has not expired
            async for item in bus.follow(
                subjects.heartbeats_stream(name),
                subjects.heartbeat(name, "*"),
                last_per_subject=True,
                until_caught_up=True,
            ):
                (silent if item.removed else beating).add(subjects.last_token(item.subject))
            lease_value, _ = await bus.kv_get(subjects.lease_bucket(name), subjects.LEADER_KEY)
            summary = await self.summary(name)
            views = await self.views(name)
        except (FederationUnavailable, TimeoutError) as exc:
            return RegionStatus(region=name, url=endpoint.url, reachable=False, error=str(exc))
        now = time.time()
        nodes = []
        for node in sorted(set(offers) | set(ledgers) | silent | beating):
            offer = offers.get(node)
            allocations = list(ledgers[node].allocations) if node in ledgers else []
            status = NodeStatus(
                node=node,
                live=bool(offer and offer.expires_at > now) and node in beating,
                offer=offer,
                allocations=allocations,
                heartbeat="lost" if node in silent else "ok" if node in beating else "none",
            )
            if offer is not None:
                free = Free.of(offer, allocations)  # the scheduler's own arithmetic
                status.free_cpu, status.free_memory, status.free_gpu = (
                    len(free.cores),
                    free.memory,
                    len(free.gpus),
                )
            nodes.append(status)
        region = RegionStatus(
            region=name,
            url=endpoint.url,
            reachable=True,
            nodes=nodes,
            leader=_leader(lease_value),
            summary=summary,
            views=views,
        )
        return _with_jobs(region, records)

    async def views(self, region: str) -> dict[str, Summary]:
        """``region``'s view of the others: their summaries as sourced into it (each with its ``at``).

        Read from the region's own stream, so it answers while the region is cut off; a view that
        stopped moving is stale.
        """
        bus = await self.bus(region)
        if not await bus.last_sequence(subjects.views_stream(region)) is not None:
            return {}
        latest = await bus.latest(subjects.views_stream(region), subjects.summary("*"))
        return decode_summaries(item.data for item in latest.values())

    async def summary(self, region: str) -> Summary | None:
        """The region's latest capacity summary as its leader published it (None before the first)."""
        bus = await self.bus(region)
        if not await bus.last_sequence(subjects.summary_stream(region)) is not None:
            return None
        item = await bus.last(subjects.summary_stream(region), subjects.summary(region))
        if item is None:
            return None
        try:
            message = decode_message(item.data)
        except RemoteProtocolError:
            return None
        return message if isinstance(message, Summary) else None


def _with_jobs(status: RegionStatus, records: list[JobRecord]) -> RegionStatus:
    """``status`` with its job counts by state and the head of its queue (oldest first)."""
    for record in records:
        status.jobs[record.state] = status.jobs.get(record.state, 0) + 1
    pending = sorted((r for r in records if r.state == "pending"), key=lambda r: r.submitted_at)
    status.queue = [r.id for r in pending[:20]]
    return status


def _readable(values: dict[str, tuple[bytes, int]]) -> list[JobRecord]:
    """Decode job records, skipping (and logging) unreadable ones: one corrupt key hides no others."""
    out = []
    for key, (value, _) in values.items():
        try:
            out.append(decode(JobRecord, value))
        except RemoteProtocolError as exc:
            log.warning("unreadable job record skipped", job=key, error=str(exc))
    return out


def _leader(value: bytes | None) -> Lease | None:
    """The region's lease holder, if a readable lease is held."""
    if not value:
        return None
    try:
        return decode(Lease, value)
    except RemoteProtocolError:
        return None
