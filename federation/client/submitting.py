"""Submitting and cancelling: a job, a job array, a small workflow of jobs that wait for each
other. A submission is validated here first (bad input never leaves the process), then stored on
the region's workloads stream with the job id as ``Nats-Msg-Id``; it exists durably once the call
returns. A job's dependencies are looked up (reading, below) before anything is sent."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict, Unpack, cast

import msgspec

from federation import subjects, tracing
from federation.bus import FAILOVER
from federation.client.files import Files, Progress, input_files
from federation.client.handles import Job, JobArray
from federation.errors import InvalidRequest, MalformedMessage, NotFound, RemoteProtocolError
from federation.schemas import (
    MAX_ARRAY_INDEX,
    MAX_MESSAGE_BYTES,
    Cancel,
    Dependency,
    DependencyWhen,
    ObjectRef,
    Priority,
    Semantics,
    Submit,
    encode,
    validate,
)

ARRAY_WINDOW = 256  # an array's elements stored at once (each waits for its acknowledgement)
MAX_ARRAY_JOBS = 100_000  # elements of one job array


class SubmitOptions(TypedDict, total=False):
    """What a submission may ask for besides its command, id, region and dependencies (the
    fields of :class:`~federation.schemas.Submit` a submitter sets; Submit's defaults apply)."""

    cpu: int
    memory: int
    gpu: int
    priority: Priority
    nodes: Sequence[str]
    tenant: str
    env: dict[str, str] | None
    require: dict[str, str] | None
    scoring: Literal["", "binpack", "spread"]
    max_attempts: int
    gang: int
    custom: dict[str, float] | None
    on_node_lost: str
    regions: Sequence[str]
    semantics: Semantics
    timeout: float
    outputs: Sequence[str]


# what a workflow's job may say: submit()'s keyword arguments, plus an array's
WORKFLOW_KEYS = frozenset(SubmitOptions.__annotations__) | {
    "command",
    "after",
    "inputs",
    "array",
    "limit",
    "id",
    "region",
}


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


class Submitting(Files):
    """Submitting jobs, job arrays and workflows, and cancelling them."""

    # --- submit / cancel -----------------------------------------------------------------------------

    async def submit(
        self,
        command: Sequence[str],
        *,
        region: str | None = None,
        job_id: str | None = None,
        after: Sequence[str | Dependency] = (),
        inputs: Sequence[str | os.PathLike[str]] = (),
        uploading: Progress | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """Validate and durably submit a job; returns once the region's stream stored it.

        ``on_node_lost`` is ``replace``, ``wait=30s`` or ``fail`` (empty: the region's default).
        ``regions`` lists where the job may run (empty or ``["any"]``: home first, then any
        region); ``semantics`` is ``at_most_once`` or ``at_least_once`` across regions.
        ``timeout`` is each attempt's wall-clock limit in seconds (0: none). ``after`` names jobs
        or job arrays this one waits for, ``"ID"`` or ``"ID:ok"`` (succeeded), ``"ID:failed"``,
        ``"ID:any"``, in any region; an unknown one is refused here. ``inputs`` are local files
        (``PATH[:NAME]``) uploaded to the region's object store first and put into the job's
        directory before it starts (``uploading`` hears how far the upload got); ``outputs`` are
        names (globs) of files the job leaves in its directory, stored when it exits
        (:meth:`get`).
        """
        name = self._region(region)
        job_id = job_id or new_job_id()
        if inputs:  # bad options fail before an upload (upload() checks the files first)
            self._submission(command, job_id=job_id, **options)
        dependencies = await self._dependencies(after)
        refs = await self.upload(
            inputs, region=name, tenant=options.get("tenant", "default"), progress=uploading
        )
        spec = self._submission(command, job_id=job_id, after=dependencies, inputs=refs, **options)
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
                if k not in ("command", "after", "array", "limit", "id", "region", "inputs")
            }
            self._region(entry.get("region", region))
            try:
                self._submission(entry["command"], job_id=new_job_id(), **options)
            except TypeError as exc:
                raise InvalidRequest(f"job {name!r}: {exc}") from None
            except InvalidRequest as exc:
                raise InvalidRequest(f"job {name!r}: {exc}") from None
            try:
                input_files(entry.get("inputs", ()))
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
        after: Sequence[str | Dependency] = (),
        inputs: Sequence[str | os.PathLike[str]] = (),
        uploading: Progress | None = None,
        **options: Unpack[SubmitOptions],
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
        env = dict(options.get("env") or {})
        last = f"{array_id}-{max(indices)}"
        if inputs:  # bad options fail before an upload (upload() checks the files first)
            self._submission(command, job_id=last, **options)
        dependencies = await self._dependencies(after)
        refs = await self.upload(  # once: every element reads the same files
            inputs, region=name, tenant=options.get("tenant", "default"), progress=uploading
        )
        template = self._submission(command, job_id=last, after=dependencies, inputs=refs, **options)
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
        after: Sequence[Dependency] = (),
        inputs: Sequence[ObjectRef] = (),
        **options: Unpack[SubmitOptions],
    ) -> Submit:
        """A submission checked as the scheduler will check it (bad input never leaves here)."""
        regions = list(options.get("regions", ()))
        unknown = [r for r in regions if r != "any" and r not in self.connection.regions]
        if unknown:
            known = ", ".join(self.connection.regions)
            raise InvalidRequest(f"unknown region {unknown[0]!r} in regions: this federation has {known}")
        cpu = options.get("cpu", 1)
        if cpu < 1:
            raise InvalidRequest(f"cpu must be at least 1 (a job always holds a core), got {cpu}")
        tenant = options.get("tenant", "default")
        if self.tenant and tenant not in ("default", self.tenant):
            raise InvalidRequest(f"these credentials submit as tenant {self.tenant!r} only, not {tenant!r}")
        fields: dict[str, Any] = {
            **options,
            "tenant": self.tenant or tenant,
            "nodes": list(options.get("nodes", ())),
            "regions": regions,
            "env": dict(options.get("env") or {}),
            "require": dict(options.get("require") or {}),
            "custom": dict(options.get("custom") or {}),
            "outputs": list(options.get("outputs", ())),
            "inputs": list(inputs),
        }
        try:
            spec = Submit(
                id=job_id, command=list(command), submitted_at=time.time(), after=list(after), **fields
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
