"""Every wire message and stored record, as msgspec Structs.

Messages travel as JSON (any NATS client can publish them by hand; see ``subjects.md``). The
published messages form one tagged union, :data:`Message`, decoded by one typed decoder built
once; the ``type`` field is the tag. Values read on their own (the node ledger, the job record, the
lease, a hand-off reply) are decoded by their type through one table, :data:`DECODERS`
(:func:`decode`). Decoding is size-bounded: the payload length is checked before a byte is parsed.

One wire message lives elsewhere: the core's input journal (:mod:`federation.inputs`), whose
events and policy are the core's own types; the core is built on this module, so this module
cannot import the core back.

Evolution rules (msgspec ``docs/schema-evolution.rst``): wire messages never forbid unknown
fields (a newer client may add one); a new field always has a default; a field never changes type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal, NamedTuple, TypeVar

import msgspec

from federation.errors import InvalidRequest, MalformedMessage, MessageTooLarge, RemoteProtocolError
from federation.subjects import view_origin

# --- bounded scalar types -----------------------------------------------------------------------

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
"""Region, node and tenant names: lower-case, safe as one NATS subject token and in KV keys."""

MAX_ARRAY_INDEX: Final = 999_999  # the highest index of a job array (Slurm's default MaxArraySize is 1,001)
JobId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
"""A job id is one subject token and one KV key; the client generates it (idempotency key)."""

EnvKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Arg = Annotated[str, msgspec.Meta(max_length=8192)]
Label = Annotated[str, msgspec.Meta(max_length=256)]
Reason = Annotated[str, msgspec.Meta(max_length=4096)]
Cores = Annotated[int, msgspec.Meta(ge=0, le=4096)]
MemoryBytes = Annotated[int, msgspec.Meta(ge=0, le=2**52)]
GpuCount = Annotated[int, msgspec.Meta(ge=0, le=256)]
GpuId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9:._-]{1,128}$")]
Timestamp = Annotated[float, msgspec.Meta(ge=0)]

Amount = Annotated[float, msgspec.Meta(ge=0, le=1e15)]
"""A quantity of a custom resource (licences, scratch GB, FPGA slots): any non-negative number."""

OnNodeLost = Annotated[
    str, msgspec.Meta(pattern=r"^(|replace|fail|wait=[0-9]{1,7}(\.[0-9]{1,3})?(ms|s|m|h)?)$")
]
"""What happens to a job when its node is lost: ``replace`` (requeue at once), ``wait=DURATION``
(keep the allocation that long; if the node returns in time nothing moves, else replace) or
``fail`` (the job ends ``lost``). Empty: the region's default."""

Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]

Semantics = Literal["at_most_once", "at_least_once"]
"""Execution semantics of a job handed to another region (``fed submit --once/--retry-anywhere``)."""

Attribute = Amount | Label | Annotated[list[Label], msgspec.Meta(max_length=64)]
"""A node attribute beyond the counted resources (Oakestra's non-canonical resources): a number
(``scratch_gb = 500``), a string (``os = "debian12"``) or a list of strings (``isa = ["avx2",
"avx512"]``). Region summaries sum numbers, collect strings, flatten lists."""

Priority = Literal["urgent", "high", "medium", "low"]
PRIORITY_RANK: Final[dict[str, int]] = {"urgent": 0, "high": 1, "medium": 2, "low": 3}

JobState = Literal[
    "pending", "placed", "running", "succeeded", "failed", "cancelled", "lost", "preempted", "forwarded"
]
TERMINAL_STATES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled", "lost"})

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Upper bound on any published message (submission, offer, status event)."""

MAX_RECORD_BYTES: Final = 4 * 1024 * 1024
"""Upper bound on a stored value (a node ledger holds every allocation's command line)."""


# --- published messages (the tagged union) -----------------------------------------------------


DependencyWhen = Literal["ok", "failed", "any"]


class Dependency(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    """One job a submission waits for (``fed submit --after JOB[:ok|failed|any]``): ``when`` says
    how it must end (``ok``: succeeded; ``failed``: failed, lost or cancelled; ``any``: ended);
    ``region`` is where the submitter found it ("" or the home region: here)."""

    job: JobId
    when: DependencyWhen = "ok"
    region: Annotated[str, msgspec.Meta(pattern=r"^([a-z0-9][a-z0-9_-]{0,62})?$")] = ""


_FILE_NAME: Final = r"^[A-Za-z0-9_.-][A-Za-z0-9_.+@=,-]{0,127}$"
FileName = Annotated[str, msgspec.Meta(pattern=_FILE_NAME)]
"""A file's name in a job's working directory: one path component, no ``/`` (and not ``.`` or
``..``: :func:`check_file_name`)."""

OutputPattern = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.*?\[\]-][A-Za-z0-9_.+@=,*?\[\]-]{0,127}$")]
"""A glob naming output files in a job's working directory (``*.csv``, ``result-?.txt``), no ``/``."""

ObjectId = Annotated[
    str, msgspec.Meta(pattern=r"^(in|out)\.[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.[A-Za-z0-9_-]{1,64}$")
]
"""An object of a region's object store: ``in.<tenant>.<key>`` or ``out.<node>.<key>``."""

Digest = Annotated[str, msgspec.Meta(pattern=r"^SHA-256=[A-Za-z0-9_-]{43}=?$")]
"""A SHA-256 digest as the JetStream Object Store writes it: ``SHA-256=`` and base64url."""


class ObjectRef(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    """A file kept in a region's object store: its ``name`` in the job's working directory, the
    ``object`` whose chunks hold it, its ``size`` in bytes and its ``digest`` (checked by whoever
    reads it)."""

    name: FileName
    object: ObjectId
    size: Annotated[int, msgspec.Meta(ge=0)]
    digest: Digest


def check_file_name(name: str) -> str:
    """``name`` if it can name a file in a job's working directory, else :class:`InvalidRequest`."""
    if name in (".", "..") or not re.match(_FILE_NAME, name):
        raise InvalidRequest(
            f"invalid file name {name!r}: one path component of letters, digits and . _ - + @ = , "
            "(max 128), not . or .."
        )
    return name


class Submit(msgspec.Struct, tag="submit", tag_field="type", kw_only=True, omit_defaults=True):
    """A workload request, published to ``fed.<region>.wl.submit.<id>``.

    ``id`` is chosen by the submitter and is the idempotency key: publishing the same id twice
    creates one job. ``nodes`` are preferred nodes (used first when they fit); ``require`` are
    labels a node must carry (``{"gpu_model": "A100,H100"}``: any of the comma-separated values;
    every node also carries ``node=<name>`` and ``region=<region>``). ``scoring`` overrides the
    region's default (binpack or spread); ``max_attempts`` (0: the region's default) bounds retries.
    ``gang`` > 1 asks for that many allocations of the request (members), placed and started all
    together or not at all. ``on_node_lost`` says what happens when the node running the job stops
    heartbeating (see :data:`OnNodeLost`).

    ``regions`` says where the job may run: empty (or ``["any"]``) is the home region first, then
    any other; a list names the regions allowed (the home region, if listed, is tried first).
    ``semantics`` is the execution guarantee across regions: ``at_most_once`` (a hand-off whose
    answer was lost holds the job until the answer is known) or ``at_least_once`` (the job may be
    placed elsewhere after the hand-off's deadline; a duplicate run is recorded). ``origin`` is set
    by a scheduler on a job it accepted from another region's hand-off (such a job never moves on);
    a submitter never sets it (:func:`decode_workload` refuses it).
    ``timeout`` is the wall-clock limit of each attempt in seconds (0: none): the agent stops the
    attempt's whole process group when it is reached and the attempt fails with that cause.

    ``array`` names the job array this job is element ``array_index`` of (Slurm's ``--array``: one
    submission of many jobs, each its own job ``<array>-<index>``); ``array_limit`` > 0 lets at most
    that many of the array's elements hold an allocation at once in the home region (Slurm's
    ``%``), and keeps the elements there (they are never handed to another region, where the limit
    could not be counted). A cancel of the array's id cancels every element.

    ``after`` lists the jobs (or job arrays) this one waits for, each to end a given way; one that
    ends the other way cancels this job (see :mod:`federation.core.dependencies`). A job with
    dependencies stays in its home region.

    ``inputs`` are files uploaded to the home region's object store before the submission: the
    agent that runs the job, in whichever region, puts each into the job's working directory under
    its name (digest checked) before it starts the job. ``outputs`` name files (globs) the agent
    stores from the working directory when the job exits; the record lists them (``stored``).
    """

    id: JobId
    command: Annotated[list[Arg], msgspec.Meta(min_length=1, max_length=1024)]
    cpu: Cores = 1
    memory: MemoryBytes = 0
    gpu: GpuCount = 0
    priority: Priority = "medium"
    tenant: Name = "default"
    nodes: Annotated[list[Name], msgspec.Meta(max_length=256)] = []
    env: Annotated[dict[EnvKey, Label], msgspec.Meta(max_length=256)] = {}
    submitted_at: Timestamp = 0.0
    require: Annotated[dict[Label, Label], msgspec.Meta(max_length=64)] = {}
    scoring: Literal["", "binpack", "spread"] = ""
    max_attempts: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    gang: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    custom: Annotated[dict[Label, Amount], msgspec.Meta(max_length=32)] = {}
    on_node_lost: OnNodeLost = ""
    regions: Annotated[list[Name], msgspec.Meta(max_length=64)] = []
    semantics: Semantics = "at_most_once"
    origin: Annotated[str, msgspec.Meta(pattern=r"^([a-z0-9][a-z0-9_-]{0,62})?$")] = ""
    timeout: Annotated[float, msgspec.Meta(ge=0, le=30 * 24 * 3600)] = 0.0
    array: Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9][A-Za-z0-9_-]{0,63})?$")] = ""
    array_index: Annotated[int, msgspec.Meta(ge=0, le=MAX_ARRAY_INDEX)] = 0
    array_limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_ARRAY_INDEX)] = 0
    after: Annotated[list[Dependency], msgspec.Meta(max_length=64)] = []
    inputs: Annotated[list[ObjectRef], msgspec.Meta(max_length=64)] = []
    outputs: Annotated[list[OutputPattern], msgspec.Meta(max_length=64)] = []


class Cancel(msgspec.Struct, tag="cancel", tag_field="type", kw_only=True, omit_defaults=True):
    """Ask the home scheduler to cancel a job, published to ``fed.<region>.wl.cancel.<id>``."""

    id: JobId
    reason: Reason = "cancelled by user"
    requested_at: Timestamp = 0.0


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="type", kw_only=True):
    """An agent's liveness beat on ``fed.<region>.hb.<node>`` (per-message TTL = 3 beats)."""

    node: Name
    seq: Annotated[int, msgspec.Meta(ge=0)]
    sent_at: Timestamp
    interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0


class Offer(msgspec.Struct, tag="offer", tag_field="type", kw_only=True, omit_defaults=True):
    """What a node is willing to share *now*, on ``fed.<region>.offer.<node>``.

    ``cores`` and ``gpus`` name concrete devices. ``pinned`` is false when the declared cores do not
    exist on the host (a simulated or over-declared node): jobs then run without CPU affinity.
    ``capacity_*`` is the node's registered maximum, the ceiling an offer is clamped to.
    ``*_percent`` is the host's utilisation when the offer was made (federation workloads
    excluded), ``runtimes`` how it can run a job (``process``), ``attributes`` what else it
    declares (see :data:`Attribute`).
    """

    node: Name
    region: Name
    cores: Annotated[list[Cores], msgspec.Meta(max_length=4096)]
    memory: MemoryBytes
    gpus: Annotated[list[GpuId], msgspec.Meta(max_length=256)] = []
    pinned: bool = False
    max_allocations: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 32
    labels: Annotated[dict[Label, Label], msgspec.Meta(max_length=64)] = {}
    capacity_cpu: Cores = 0
    capacity_memory: MemoryBytes = 0
    capacity_gpu: GpuCount = 0
    sent_at: Timestamp = 0.0
    expires_at: Timestamp = 0.0
    note: Reason = ""
    custom: Annotated[dict[Label, Amount], msgspec.Meta(max_length=32)] = {}
    cpu_percent: Percent = 0.0
    memory_percent: Percent = 0.0
    gpu_percent: Percent = 0.0
    runtimes: Annotated[list[Label], msgspec.Meta(max_length=16)] = []
    attributes: Annotated[dict[Label, Attribute], msgspec.Meta(max_length=32)] = {}


JobEventKind = Literal["started", "exited", "failed", "refused", "lost"]


class Usage(msgspec.Struct, kw_only=True, frozen=True):
    """What an attempt used, as its agent measured it (carried by the ``exited`` report and kept on
    the job record). ``cpu_seconds`` (user + system) and ``peak_memory_bytes`` come from the
    attempt's cgroup, else from its process tree's ``wait4`` rusage (``rusage``: the main process
    and the descendants it waited for; a process that left the tree is not counted), else they
    are 0 (``wall clock``): ``measured_by`` says which; ``wall_seconds`` is
    from start to exit; ``gpu_seconds`` the claimed GPUs times the wall time. A gang's record sums
    its members'."""

    cpu_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    peak_memory_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    wall_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    gpu_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    measured_by: Literal["cgroup", "rusage", "wall clock"] = "wall clock"

    def plus(self, other: Usage | None) -> Usage:
        """The sum of two attempts' (or gang members') usage; peak memory adds up too (they ran
        side by side)."""
        if other is None:
            return self
        return Usage(
            cpu_seconds=self.cpu_seconds + other.cpu_seconds,
            peak_memory_bytes=self.peak_memory_bytes + other.peak_memory_bytes,
            wall_seconds=max(self.wall_seconds, other.wall_seconds),
            gpu_seconds=self.gpu_seconds + other.gpu_seconds,
            measured_by=self.measured_by if self.measured_by == other.measured_by else "wall clock",
        )


class JobEvent(msgspec.Struct, tag="job_event", tag_field="type", kw_only=True, omit_defaults=True):
    """An agent's report on one attempt, on ``fed.<region>.status.<node>.<job>.event``.

    ``exited`` carries the exit code (negative: killed by that signal); ``failed`` means the
    attempt could not start or the agent failed it (``reason`` says why); ``refused`` means local
    admission turned the allocation down before anything ran (the job goes back to the queue);
    ``lost`` means the agent lost track of a running attempt (it restarted while the attempt ran
    and killed what was left of it): the job's ``on_node_lost`` decides, as for a lost node.
    ``started_at`` on an ``exited`` report says the attempt started then and ended before its
    ``started`` report was due: the one report stands for both (a short job costs one durable
    report, not two), and the job's history still shows it running from that time.
    """

    node: Name
    job: JobId
    attempt: Annotated[int, msgspec.Meta(ge=1)]
    epoch: Annotated[int, msgspec.Meta(ge=0)] = 0
    kind: JobEventKind
    exit_code: int | None = None
    reason: Reason = ""
    at: Timestamp = 0.0
    member: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0
    usage: Usage | None = None  # with ``exited``: what the attempt used
    started_at: Timestamp = 0.0  # with ``exited``: when it started, if it sent no ``started`` report
    stored: Annotated[list[ObjectRef], msgspec.Meta(max_length=256)] = []  # with ``exited``: outputs


class Summary(msgspec.Struct, tag="summary", tag_field="type", kw_only=True, omit_defaults=True):
    """A region's capacity in one message, on ``fed.<region>.summary`` and broadcast as its view on
    ``fed.<region>.view`` (aggregated Oakestra-style).

    Canonical resources are summed over the nodes with a live offer: ``cpu``/``memory``/``gpu``
    offered, and ``*_free`` what their allocations leave. Utilisation percentages are averaged
    over those nodes. ``gpu_models`` and ``runtimes`` are listed, and ``labels`` collects every
    label's values. ``custom`` aggregates counted resources and attributes by value type: numbers
    are summed (counted resources: what is free), strings collected in a list, lists flattened.
    ``nodes`` counts every node known, ``live`` those with a live offer.
    """

    region: Name
    at: Timestamp
    nodes: Annotated[int, msgspec.Meta(ge=0)] = 0
    live: Annotated[int, msgspec.Meta(ge=0)] = 0
    cpu: Annotated[int, msgspec.Meta(ge=0)] = 0
    cpu_free: Annotated[int, msgspec.Meta(ge=0)] = 0
    memory: Annotated[int, msgspec.Meta(ge=0)] = 0
    memory_free: Annotated[int, msgspec.Meta(ge=0)] = 0
    gpu: Annotated[int, msgspec.Meta(ge=0)] = 0
    gpu_free: Annotated[int, msgspec.Meta(ge=0)] = 0
    cpu_percent: Percent = 0.0
    memory_percent: Percent = 0.0
    gpu_percent: Percent = 0.0
    gpu_models: Annotated[list[Label], msgspec.Meta(max_length=256)] = []
    runtimes: Annotated[list[Label], msgspec.Meta(max_length=64)] = []
    labels: Annotated[
        dict[Label, Annotated[list[Label], msgspec.Meta(max_length=1024)]], msgspec.Meta(max_length=64)
    ] = {}
    custom: Annotated[
        dict[Label, Amount | Annotated[list[Label], msgspec.Meta(max_length=4096)]],
        msgspec.Meta(max_length=64),
    ] = {}
    pending: Annotated[int, msgspec.Meta(ge=0)] = 0


class HandOff(msgspec.Struct, tag="handoff", tag_field="type", kw_only=True, omit_defaults=True):
    """A home scheduler offering a job to another region, a request on ``fed.<remote>.handoff.<id>``.

    The remote leader stores ``spec`` (with ``origin`` set) in its own workloads stream and answers
    ``accepted``, or answers ``refused`` having stored nothing. A request past ``expires_at`` is
    refused unread, so a late copy can never be accepted after the home region moved on. With
    ``query`` set nothing is stored: the answer says whether the remote holds the job
    (``found``, with its state) or not (``absent``).
    """

    origin: Name
    spec: Submit
    expires_at: Timestamp
    query: bool = False
    lookup: bool = False  # only: what state is the job (or job array) ``spec.id`` in here, whoever sent it


HandOffOutcome = Literal["accepted", "refused", "found", "absent"]


class HandOffReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The remote region's answer to a :class:`HandOff` (``state``: the job's state there, if held)."""

    outcome: HandOffOutcome
    reason: Reason = ""
    state: str = ""


class TenantQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """A tenant's question on ``fed.<region>.tenant.<tenant>.<verb>`` (``job``, ``jobs``, ``logs``,
    ``get`` or ``limits``),
    answered by the region's leading scheduler (:mod:`federation.scheduler.tenants`)."""

    job: str = ""
    state: str = ""
    after: int = 0  # logs, get: the stream sequence already read
    name: str = ""  # get: the output file


class TenantReply(msgspec.Struct, kw_only=True):
    """The leading scheduler's answer to a :class:`TenantQuery`: that tenant's own records or log
    chunks, or ``error``."""

    records: list[JobRecord] = []
    chunks: list[bytes] = []  # logs (base64 in JSON)
    next: int = 0  # logs: ask again after this sequence
    truncated: bool = False  # jobs: more than tenants.MAX_RECORDS matched (the newest are left out)
    max_input_bytes: int = 0  # limits: what the region's policy allows a job's inputs to total
    error: str = ""


Message = Submit | Cancel | Heartbeat | Offer | JobEvent | Summary | HandOff
"""Everything published on a ``fed.>`` subject, except log chunks (raw bytes)."""


# --- stored values ------------------------------------------------------------------------------


class Allocation(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One job attempt bound to exact devices of one node, held in that node's ledger.

    A gang job has ``members`` allocations, numbered by ``member``, possibly on several nodes.
    ``held`` marks a gang member claimed while the rest of its gang is still being claimed: the
    agent must not start it until the scheduler clears the flag (all members are stored).
    """

    job: JobId
    attempt: int
    epoch: int = 0
    cpu: int = 0
    memory: int = 0
    cores: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    env: dict[str, str] = {}
    priority: Priority = "medium"
    tenant: str = "default"
    pinned: bool = False
    traceparent: str = ""
    placed_at: float = 0.0
    member: int = 0
    members: int = 1
    held: bool = False
    custom: dict[str, float] = {}
    on_node_lost: str = ""
    max_attempts: int = 0
    timeout: float = 0.0  # the attempt's wall-clock limit in seconds (0: none)
    inputs: tuple[ObjectRef, ...] = ()  # staged into the working directory before the start
    store: str = ""  # the region whose object store holds the inputs ("": this one)
    outputs: tuple[str, ...] = ()  # globs of the files stored after the exit
    output_bytes: int = 0  # at most this many bytes of outputs are stored (0: no limit)


class Capacity(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    """What a node offered when a ledger write was made (its evidence for ``fed audit check``).

    ``cpu``, ``memory`` and ``gpu`` are the node's registered maximum; ``cores`` and ``gpus`` the
    devices it offered then and ``offered_memory`` the memory (an agent withholds busy devices, so
    the offer can be smaller than what its ledger already holds).
    """

    cpu: int
    memory: int
    gpu: int
    cores: tuple[int, ...] | None = None  # None: written before offers were recorded (not judged)
    gpus: tuple[str, ...] | None = None
    offered_memory: int | None = None

    @classmethod
    def of(cls, offer: Offer) -> Capacity:
        """The evidence of ``offer``."""
        return cls(
            cpu=max(offer.capacity_cpu, len(offer.cores)),
            memory=max(offer.capacity_memory, offer.memory),
            gpu=max(offer.capacity_gpu, len(offer.gpus)),
            cores=tuple(offer.cores),
            gpus=tuple(offer.gpus),
            offered_memory=offer.memory,
        )


class Ledger(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A node's allocation ledger: the only record of what runs there, CAS-updated by revision.

    ``capacity`` is the offer the write was made against (absent on ledgers written before it
    existed, and on a fencing stamp).
    """

    node: str
    allocations: tuple[Allocation, ...] = ()
    epoch: int = 0
    updated_at: float = 0.0
    capacity: Capacity | None = None

    def find(self, job: str) -> Allocation | None:
        """The (first) allocation of ``job`` on this node, if any."""
        for allocation in self.allocations:
            if allocation.job == job:
                return allocation
        return None

    def members(self, job: str) -> list[Allocation]:
        """Every allocation of ``job`` on this node (several for a gang)."""
        return [a for a in self.allocations if a.job == job]


class Transition(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, array_like=True):
    """One step of a job's history (state, when, why), kept in the job record."""

    state: JobState
    at: float
    reason: str = ""


class Candidate(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    """A node and its score in a decision (lower scores win)."""

    node: str
    score: tuple[int, ...]


class Decision(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Why a job is pending, or why it went where it did: the data behind ``fed explain``.

    ``filtered`` counts nodes rejected per reason; ``chosen`` and ``runners_up`` carry scores;
    ``victims`` are the allocations preempted to make room; ``queue_position`` is the job's place in
    the queue when the decision was made (1 = next).
    """

    kind: Literal["pending", "placed", "preempting"]
    at: float
    considered: int = 0
    filtered: dict[str, int] = {}
    chosen: Candidate | None = None
    runners_up: tuple[Candidate, ...] = ()
    victims: tuple[str, ...] = ()
    queue_position: int = 0
    note: str = ""


class JobRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A job's state, in the region's jobs bucket keyed by job id; moved forward by CAS only.

    ``reason`` says why a job is where it is: why pending (which filters rejected which nodes),
    why failed. ``history`` keeps every transition for ``fed job``.

    Cross-region: ``handoffs`` maps each region this job was offered to onto what is known of it
    (``asked``: request sent, answer not yet known; ``accepted``, ``refused``; ``absent``: the
    region confirmed it never took the job). ``forwarded_to`` is the region that accepted it (the
    record then stays ``forwarded``; the job's life continues in that region's record).
    ``duplicates`` names regions found to have run the job as well (at-least-once only).
    ``cancel_requested`` keeps a cancel that arrived while the job was being handed off or after
    it was forwarded (passed on to the region that holds it, again after a restart).
    """

    id: str
    region: str
    spec: Submit
    state: JobState = "pending"
    attempt: int = 0
    node: str = ""
    exit_code: int | None = None
    reason: str = ""
    submitted_at: float = 0.0
    updated_at: float = 0.0
    traceparent: str = ""
    history: tuple[Transition, ...] = ()
    not_before: float = 0.0
    decision: Decision | None = None
    members: tuple[str, ...] = ()
    member_exits: dict[str, int] = {}
    epoch: int = 0
    forwarded_to: str = ""
    handoffs: dict[str, str] = {}
    duplicates: tuple[str, ...] = ()
    cancel_requested: str = ""
    usage: Usage | None = None  # what the attempt that ended it used (a gang: its members summed)
    stored: tuple[ObjectRef, ...] = ()  # output files its last attempt stored (``spec.outputs``)

    @property
    def terminal(self) -> bool:
        """True once the job has reached its one terminal state."""
        return self.state in TERMINAL_STATES


class Lease(msgspec.Struct, kw_only=True, frozen=True):
    """The region's scheduler lease (``fed-lease-<region>`` key ``scheduler``, per-message TTL).

    ``epoch`` is the revision of the write that won the lease: the server hands it out, so every
    new leader's epoch is higher than every earlier one's (the fencing token stamped on writes).
    The leader also says here how often the region's nodes beat and refresh their offers.
    """

    holder: str
    epoch: int = 0
    renewed_at: float = 0.0
    ttl: float = 0.0
    # the region's node cadence (federation.core.cadence), read by its agents; 0: not said
    heartbeat: float = 0.0  # seconds between a node's heartbeats
    offer_refresh: float = 0.0  # seconds between refreshes of an unchanged offer
    nodes: int = 0  # nodes the leader counts in the region
    node_budget: float = 0.0  # heartbeats and offer refreshes a second, for the whole region


class ChaosCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A request to ``fed up --chaos`` on ``fed.hub.chaos.<command>`` (``partition``, ``heal``, ``status``).

    ``region`` empty means every region (``heal``); ``seconds`` > 0 heals a partition by itself
    after that long; ``mode`` ``cut`` closes the link (peers see it at once), ``blackhole`` drops
    its bytes (peers notice through their own timeouts).
    """

    region: str = ""
    seconds: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 0.0
    mode: Literal["cut", "blackhole"] = "cut"


class ChaosState(msgspec.Struct, kw_only=True):
    """The reply: every region's link mode (``open``, ``cut``, ``blackhole``), or an error."""

    links: dict[str, str] = {}
    error: str = ""


class Quarantined(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A refused message, kept with the reason on ``fed.<region>.quarantine.<source>``."""

    subject: str
    reason: str
    payload: str
    size: int
    at: float
    sequence: int = 0
    deliveries: int = 0


# --- codecs (built once) -------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)


def encode(value: msgspec.Struct) -> bytes:
    """Encode any message or record as JSON bytes."""
    return _encoder.encode(value)


def _bounded(data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise MessageTooLarge(len(data), limit)


def decode_message(data: bytes, limit: int = MAX_MESSAGE_BYTES) -> Message:
    """Decode one published message, refusing it before parsing when it is larger than ``limit``.

    Not in :data:`DECODERS`: the messages are one tagged union (the ``type`` field says which), a
    caller may give its own bound (a hand-off request holds a whole submission), and the error
    names no kind."""
    _bounded(data, limit)
    try:
        message: Message = _message_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(str(exc)) from None
    return message


class Decoding(NamedTuple):
    """How one kind of value is decoded on its own: ``what`` names it in the error, ``limit``
    bounds its size (checked before a byte is parsed), ``decoder`` is built once."""

    what: str
    limit: int
    decoder: msgspec.json.Decoder[Any]


DECODERS: Final[dict[type[msgspec.Struct], Decoding]] = {
    Ledger: Decoding("ledger", MAX_RECORD_BYTES, msgspec.json.Decoder(Ledger)),
    JobRecord: Decoding("job record", MAX_RECORD_BYTES, msgspec.json.Decoder(JobRecord)),
    Lease: Decoding("lease", MAX_MESSAGE_BYTES, msgspec.json.Decoder(Lease)),
    HandOffReply: Decoding("hand-off reply", MAX_MESSAGE_BYTES, msgspec.json.Decoder(HandOffReply)),
}
"""Every value decoded by its type through :func:`decode`: the stored values (a node ledger, a job
record, the scheduler lease) and a remote region's answer to a hand-off. The published messages
are one union instead (:func:`decode_message`)."""

_StructT = TypeVar("_StructT", bound=msgspec.Struct)


def decode(kind: type[_StructT], data: bytes) -> _StructT:
    """Decode a value of type ``kind`` (a key of :data:`DECODERS`): :class:`MessageTooLarge` when
    it is larger than the bound of its kind, before parsing; :class:`MalformedMessage` naming the
    kind when it does not decode or does not satisfy the schema."""
    decoding = DECODERS[kind]
    _bounded(data, decoding.limit)
    try:
        value: _StructT = decoding.decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(f"{decoding.what}: {exc}") from None
    return value


def decode_tenant_reply(data: bytes) -> TenantReply:
    """Decode a leading scheduler's answer to a tenant's question.

    Not in :data:`DECODERS`: it has no size bound, and its errors are msgspec's own
    (``DecodeError``, ``ValidationError``), not :class:`MalformedMessage`."""
    return msgspec.json.decode(data, type=TenantReply)


def decode_summaries(views: Iterable[tuple[str, bytes]], *, without: str = "") -> dict[str, Summary]:
    """Region summaries by region from views as broadcast (their ``fed.<region>.view`` subject,
    their bytes): skipping anything that is not a readable summary, a summary that speaks for
    another region than its publisher (a region's permissions let it publish only its own
    subjects, so the subject says who sent it), and the region ``without`` (a region's views
    stream holds its own view too)."""
    out: dict[str, Summary] = {}
    for subject, data in views:
        origin = view_origin(subject)
        try:
            message = decode_message(data)
        except (MalformedMessage, MessageTooLarge):
            continue
        if isinstance(message, Summary) and message.region == origin and message.region != without:
            out[message.region] = message
    return out


WORKLOAD_TYPES: Final[dict[str, type[Submit] | type[Cancel]]] = {"submit": Submit, "cancel": Cancel}
"""The message type each workload subject carries (``fed.<region>.wl.<kind>.<job>[.<tenant>]``)."""

SYSTEM_OWNED: Final[tuple[str, ...]] = tuple(
    sorted(set(JobRecord.__struct_fields__) - set(Submit.__struct_fields__))
)
"""Fields of the job record that only the scheduler writes (``state``, ``attempt``, ``node``,
``epoch``...): a submission naming one is refused rather than silently stripped, since its
submitter expects an effect it cannot have. ``origin``, a submission field, is the system's too
(see :func:`decode_workload`)."""

_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def message_type(message: Message) -> str:
    """The wire tag of ``message`` (its ``type`` field): ``submit``, ``cancel``, ``offer``..."""
    return str(type(message).__struct_config__.tag)


def decode_workload(data: bytes, *, kind: str, job: str, tenant: str, region: str) -> Submit | Cancel:
    """A message consumed from ``region``'s workloads stream on subject tokens ``kind`` (``submit``
    or ``cancel``), ``job`` and ``tenant`` (the tenant whose credentials sent it, "" for a trusted
    submitter), if it may be accepted; else :class:`RemoteProtocolError` saying why.

    Accepted: the type the subject names, for the job the subject names; a tenant's submission in
    its own name; a submission that sets no field only the system sets: none of the job record's
    own fields (:data:`SYSTEM_OWNED`), and no ``origin`` unless it has the shape of the hand-off
    this region's scheduler stores when it accepts another region's job (``origin`` names that
    region and ``regions`` is this region alone; never on a tenant's subject).
    """
    message = decode_message(data)
    expected = WORKLOAD_TYPES.get(kind)
    if expected is None:
        raise RemoteProtocolError(f"{kind!r} is not a workload subject (submit or cancel)")
    if not isinstance(message, expected):
        raise RemoteProtocolError(
            f"message type {message_type(message)!r} does not belong on a {kind} subject"
        )
    if message.id != job:
        raise RemoteProtocolError(f"job id in payload does not match subject token {job!r}")
    if not isinstance(message, Submit):
        return message
    if tenant and message.tenant != tenant:
        raise RemoteProtocolError(f"tenant {message.tenant!r} submitted with {tenant!r}'s credentials")
    named = sorted(set(_fields_decoder.decode(data)) & set(SYSTEM_OWNED))
    if named:
        raise RemoteProtocolError(
            f"a submission may not set {', '.join(named)}: only the scheduler writes "
            f"{'that field' if len(named) == 1 else 'those fields'} of the job record"
        )
    names = [ref.name for ref in message.inputs]
    for ref in message.inputs:
        try:
            check_file_name(ref.name)
        except InvalidRequest as exc:
            raise RemoteProtocolError(f"input {ref.name!r}: {exc}") from None
        owner = ref.object.split(".")[1]
        if not ref.object.startswith("in.") or owner != message.tenant:
            raise RemoteProtocolError(
                f"input {ref.name!r}: object {ref.object!r} is not tenant {message.tenant}'s"
            )
    if len(set(names)) != len(names):
        raise RemoteProtocolError("two inputs have the same file name")
    if message.origin and (tenant or message.origin == region or message.regions != [region]):
        raise RemoteProtocolError(
            f"a submission may not set origin ({message.origin!r}): only a region's scheduler sets it, "
            "when it accepts another region's hand-off"
        )
    return message


SUBMIT_SKEW = 60.0  # seconds a submission's own time may be from when its stream stored it


def as_stored(spec: Submit, stored_at: float) -> Submit:
    """``spec`` with its ``submitted_at`` (the queue's age order) no more than :data:`SUBMIT_SKEW`
    from ``stored_at``, when the workloads stream stored it: a submitter cannot backdate its job
    to jump the queue, nor date it ahead; a submission without a time gets the stored one. A
    hand-off's copy (``origin`` set) keeps its home region's time. Unchanged when ``stored_at`` is
    unknown (0)."""
    if spec.origin or not stored_at:
        return spec
    when = spec.submitted_at or stored_at
    when = min(max(when, stored_at - SUBMIT_SKEW), stored_at + SUBMIT_SKEW)
    return spec if when == spec.submitted_at else msgspec.structs.replace(spec, submitted_at=when)


def clamp_offer(offer: Offer) -> tuple[Offer, str]:
    """``offer`` within the node's registered maximum (its ``capacity_*``), and what was cut ("" if
    nothing): an agent offering more than its node declares is held to the declaration."""
    cut = []
    cores, gpus, memory = offer.cores, offer.gpus, offer.memory
    if offer.capacity_cpu and len(cores) > offer.capacity_cpu:
        cut.append(f"{len(cores)} cores offered, {offer.capacity_cpu} registered")
        cores = cores[: offer.capacity_cpu]
    if offer.capacity_gpu and len(gpus) > offer.capacity_gpu:
        cut.append(f"{len(gpus)} GPUs offered, {offer.capacity_gpu} registered")
        gpus = gpus[: offer.capacity_gpu]
    if offer.capacity_memory and memory > offer.capacity_memory:
        cut.append(f"{memory} bytes of memory offered, {offer.capacity_memory} registered")
        memory = offer.capacity_memory
    if not cut:
        return offer, ""
    why = "offer clamped to the node's registered maximum: " + "; ".join(cut)
    note = f"{offer.note}; {why}" if offer.note else why
    return msgspec.structs.replace(offer, cores=cores, gpus=gpus, memory=memory, note=note[:1000]), why


def validate(message: Message) -> Message:
    """Check a locally built message against the schema constraints (round trip through JSON)."""
    return decode_message(encode(message))
