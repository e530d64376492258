"""Usage accounting: the compute each tenant and region used, and what regions lent each other.

Theory of operation
-------------------
The agent that runs an attempt measures it and says so in its ``exited`` report (a
:class:`~federation.schemas.JobEvent` carrying :class:`~federation.schemas.Usage`). The report
is stored in the status stream of the region whose node ran it, and so in that region's audit
trail (and the hub's ``AUDIT_ALL``). :class:`Accountant` takes audit facts in (the region a fact
belongs to, when the trail stored it, the decoded value) and gives a :class:`UsageReport` out:
no I/O, no clock; :meth:`federation.client.Client.usage` reads the trail and feeds it.

* **A run** is one attempt of a job, or one gang member of it. A run is counted from its exit
  report, not from the job's terminal record: the record keeps only the usage of the attempt
  that ended the job, none for a cancelled job (its process is stopped, and reports, after the
  record is written) and none for a preempted or replaced attempt, which used the region's
  machines all the same. A report stored twice (an agent's retry) counts once: runs are keyed by
  (region, job, attempt, member, node).
* **The window**: a run counts when its exit report was stored at or after ``since``; a run still
  going counts once it ends.
* **Where**: a report exists only in the region that ran it, so each run is counted once, in that
  region (``region``) and on its node (``node``). A job handed off to another region has a
  ``forwarded`` record at home and no run there: nothing is counted at home for it.
* **Whose**: the job's records in the region that ran it name its tenant (``spec.tenant``) and
  its home region (``spec.origin`` on a job accepted from another region's hand-off, otherwise
  that region itself): ``tenant`` and ``origin``. A run whose job has no readable record among
  the facts fed (its last record came before the window: a job cancelled just before ``since``
  whose process ended just after) is counted under :data:`UNKNOWN`.
* **Units**: CPU-hours (user + system CPU seconds / 3600); memory GiB-hours (peak memory in GiB
  x wall hours: what the run held, the way a reservation is billed); GPU-hours (claimed GPUs x
  wall hours); wall hours. A run on a node without a cgroup has its wall time only (CPU and
  memory count 0; ``wall_clock_only`` counts such runs); an exit report without usage (from an
  agent older than usage reports) adds nothing and counts in ``unmeasured``.
* **Jobs** count distinct jobs (home region, job id) with a run in the group: a gang's members or
  a retried job's attempts make one job; an at-least-once job that also ran in a second region
  counts once in the totals and in each region's row.
* **The exchange** has one cell per (home region, region that ran it): off the diagonal, the
  column's region lent what the row's region borrowed. ``balance`` sums, per region, what it
  lent (runs of other regions' jobs on its nodes) and what it borrowed (runs of its jobs
  elsewhere).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

import msgspec

from federation.errors import InvalidRequest
from federation.schemas import JobEvent, JobRecord, Usage

Dimension = Literal["tenant", "region", "origin", "node"]
"""How runs are grouped: the job's tenant, the region that ran it, the job's home region
(``origin``), or the node that ran it (``<region>/<node>``)."""

DIMENSIONS: Final[tuple[Dimension, ...]] = get_args(Dimension)
DEFAULT_BY: Final[tuple[Dimension, ...]] = ("tenant", "region")
UNKNOWN: Final = "?"  # the tenant and home of a run whose job has no record in what was read
HOUR: Final = 3600.0
GiB: Final = 1024**3


class Totals(msgspec.Struct, kw_only=True):
    """What a group of runs used (see the module docstring for the units)."""

    jobs: int = 0
    runs: int = 0
    cpu_hours: float = 0.0
    memory_gib_hours: float = 0.0
    gpu_hours: float = 0.0
    wall_hours: float = 0.0
    wall_clock_only: int = 0  # runs without a cgroup: CPU and memory not measured (counted 0)
    unmeasured: int = 0  # runs whose exit report carried no usage (nothing added)


class Row(Totals, kw_only=True):
    """One group of a breakdown: ``key`` is a tenant, a region or ``<region>/<node>``."""

    key: str


class Cell(Totals, kw_only=True):
    """One cell of the exchange matrix: the runs of ``home``'s jobs on ``ran_in``'s nodes."""

    home: str
    ran_in: str


class Balance(msgspec.Struct, kw_only=True):
    """What ``region`` lent (its nodes ran other regions' jobs) and borrowed (its jobs ran elsewhere);
    every region with a run, as home or as executor, has one (zeros when it kept to itself)."""

    region: str
    lent: Totals
    borrowed: Totals


class UsageReport(msgspec.Struct, kw_only=True):
    """``fed usage --json`` and :meth:`federation.client.Client.usage` (documented in the README).

    ``since`` is the window's start (Unix seconds; 0: the whole trail) and ``until`` when it was
    read; ``read`` names the audit streams read and ``unread`` those that could not be read, and
    why (their runs are missing, or partly missing). ``by`` maps each dimension asked for to its
    rows, ``exchange`` is the home x executing region matrix (cells with runs only), ``balance``
    each region's lent and borrowed totals.
    """

    since: float
    until: float
    read: list[str] = []
    unread: list[str] = []
    totals: Totals = msgspec.field(default_factory=Totals)
    by: dict[str, list[Row]] = {}
    exchange: list[Cell] = []
    balance: list[Balance] = []


def dimensions(by: str | Iterable[str]) -> tuple[Dimension, ...]:
    """``by`` as dimensions, in order, each once; an unknown one is refused before anything is read."""
    names = [by] if isinstance(by, str) else list(by)
    out: list[Dimension] = []
    for name in names:
        known = next((d for d in DIMENSIONS if d == name), None)
        if known is None:
            raise InvalidRequest(f"usage cannot be grouped by {name!r}: use {', '.join(DIMENSIONS)}")
        if known not in out:
            out.append(known)
    return tuple(out) or DEFAULT_BY


@dataclass(frozen=True)
class Run:
    """One measured run: where it ran and what it used (None: its report carried no usage)."""

    region: str
    node: str
    job: str
    usage: Usage | None


@dataclass
class _Sum:
    """A group's running total; jobs are kept as a set so a job counts once per group."""

    jobs: set[tuple[str, str]] = field(default_factory=set)
    runs: int = 0
    cpu: float = 0.0
    memory: float = 0.0
    gpu: float = 0.0
    wall: float = 0.0
    wall_clock_only: int = 0
    unmeasured: int = 0

    def add(self, job: tuple[str, str], usage: Usage | None) -> None:
        self.jobs.add(job)
        self.runs += 1
        if usage is None:
            self.unmeasured += 1
            return
        self.cpu += usage.cpu_seconds / HOUR
        self.memory += usage.peak_memory_bytes / GiB * usage.wall_seconds / HOUR
        self.gpu += usage.gpu_seconds / HOUR
        self.wall += usage.wall_seconds / HOUR
        self.wall_clock_only += usage.measured_by == "wall clock"

    def totals(self) -> Totals:
        return Totals(
            jobs=len(self.jobs),
            runs=self.runs,
            cpu_hours=self.cpu,
            memory_gib_hours=self.memory,
            gpu_hours=self.gpu,
            wall_hours=self.wall,
            wall_clock_only=self.wall_clock_only,
            unmeasured=self.unmeasured,
        )


class Accountant:
    """Counts runs from audit facts and reports them (one pass, in any order of regions).

    Feed every fact of the trails read with :meth:`feed`; :meth:`report` then attributes each
    run to its job's tenant and home region and sums the groups.
    """

    def __init__(self, *, since: float = 0.0, by: Sequence[Dimension] = DEFAULT_BY) -> None:
        self.since = since
        self.by = dimensions(by)
        self.runs: dict[tuple[str, str, int, int, str], Run] = {}  # (region, job, attempt, member, node)
        self.owners: dict[tuple[str, str], tuple[str, str]] = {}  # (region, job) -> (tenant, home)

    def feed(self, region: str, at: float, value: object) -> None:
        """Take one fact of ``region``'s trail, stored at ``at``: a job record names its job's
        tenant and home; an ``exited`` report stored in the window is a run. Anything else (or
        an unreadable value, None) is not about usage and is ignored."""
        match value:
            case JobRecord():
                self.owners[(region, value.id)] = (value.spec.tenant, value.spec.origin or region)
            case JobEvent(kind="exited") if at >= self.since:
                key = (region, value.job, value.attempt, value.member, value.node)
                self.runs[key] = Run(region, value.node, value.job, value.usage)
            case _:
                pass

    def report(self, *, until: float, read: Sequence[str] = (), unread: Sequence[str] = ()) -> UsageReport:
        """The totals, each dimension's rows, the exchange matrix and each region's balance."""
        totals = _Sum()
        groups: dict[Dimension, dict[str, _Sum]] = {d: {} for d in self.by}
        cells: dict[tuple[str, str], _Sum] = {}
        lent: dict[str, _Sum] = {}
        borrowed: dict[str, _Sum] = {}
        for run in self.runs.values():
            tenant, home = self.owners.get((run.region, run.job), (UNKNOWN, UNKNOWN))
            job = (run.region if home == UNKNOWN else home, run.job)
            keys: dict[Dimension, str] = {
                "tenant": tenant,
                "region": run.region,
                "origin": home,
                "node": f"{run.region}/{run.node}",
            }
            totals.add(job, run.usage)
            for dimension, group in groups.items():
                group.setdefault(keys[dimension], _Sum()).add(job, run.usage)
            cells.setdefault((home, run.region), _Sum()).add(job, run.usage)
            if home not in (UNKNOWN, run.region):
                lent.setdefault(run.region, _Sum()).add(job, run.usage)
                borrowed.setdefault(home, _Sum()).add(job, run.usage)
        return UsageReport(
            since=self.since,
            until=until,
            read=list(read),
            unread=list(unread),
            totals=totals.totals(),
            by={
                dimension: [
                    Row(key=key, **msgspec.structs.asdict(group[key].totals())) for key in sorted(group)
                ]
                for dimension, group in groups.items()
            },
            exchange=[
                Cell(home=home, ran_in=ran_in, **msgspec.structs.asdict(cells[(home, ran_in)].totals()))
                for home, ran_in in sorted(cells)
            ],
            balance=[
                Balance(
                    region=region,
                    lent=lent.get(region, _Sum()).totals(),
                    borrowed=borrowed.get(region, _Sum()).totals(),
                )
                for region in sorted({r for cell in cells for r in cell} - {UNKNOWN})
            ],
        )


__all__ = [
    "DEFAULT_BY",
    "DIMENSIONS",
    "UNKNOWN",
    "Accountant",
    "Balance",
    "Cell",
    "Dimension",
    "Row",
    "Run",
    "Totals",
    "UsageReport",
    "dimensions",
]
