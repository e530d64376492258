"""The one place that builds and parses every subject, stream, consumer and bucket name.

Every subject starts with ``fed.<region>.`` so that a region's JetStream domain is the only one
that captures it (a subject captured by streams in two domains is silently stored twice) and so
that server permissions can confine an agent to its own node's subjects. One is captured in every
domain on purpose: a region's :func:`view`, its summary broadcast to every region, each of which
keeps the latest of every region's in its views stream. KV buckets carry the
region in their name for the same reason: their subjects are ``$KV.<bucket>.<key>``.

``subjects.md`` documents the same namespace for people; ``tests/test_subjects_doc.py`` keeps
:data:`CATALOGUE` and that page equal.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from federation.errors import InvalidRequest

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_REGION = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")


def check_region(region: str) -> str:
    """Return ``region`` if it is a valid region name, else raise :class:`InvalidRequest`."""
    if not _REGION.match(region):
        raise InvalidRequest(f"invalid region name {region!r}: use lower-case letters, digits and '-'")
    return region


def check_token(value: str, what: str = "name") -> str:
    """Return ``value`` if it is safe as one subject token (no dots, wildcards or spaces)."""
    if not _TOKEN.match(value):
        raise InvalidRequest(f"invalid {what} {value!r}: use letters, digits, '_' and '-' (max 64)")
    return value


# --- subjects ---------------------------------------------------------------------------------------


def submit(region: str, job: str) -> str:
    """Where a workload request is published (captured by the workloads stream)."""
    return f"fed.{region}.wl.submit.{job}"


def cancel(region: str, job: str) -> str:
    """Where a cancel request is published (captured by the workloads stream)."""
    return f"fed.{region}.wl.cancel.{job}"


def tenant_submit(region: str, job: str, tenant: str) -> str:
    """A tenant's submission: the last token names the tenant, which a permission can pin."""
    return f"{submit(region, job)}.{tenant}"


def tenant_cancel(region: str, job: str, tenant: str) -> str:
    """A tenant's cancel: only that tenant's job is cancelled."""
    return f"{cancel(region, job)}.{tenant}"


def tenant_api(region: str, tenant: str, verb: str) -> str:
    """A tenant's question to its region's leading scheduler (``job``, ``jobs``, ``logs``)."""
    return f"fed.{region}.tenant.{tenant}.{verb}"


class ParsedWorkload(NamedTuple):
    kind: str  # submit | cancel
    job: str
    tenant: str  # "" unless a tenant's subject


def parse_workload(subject: str) -> ParsedWorkload | None:
    """``fed.<region>.wl.<kind>.<job>[.<tenant>]``, or None."""
    parts = subject.split(".")
    if len(parts) not in (5, 6) or parts[0] != "fed" or parts[2] != "wl":
        return None
    return ParsedWorkload(parts[3], parts[4], parts[5] if len(parts) == 6 else "")


def workloads_filter(region: str) -> str:
    """Everything the region's scheduler consumes from the workloads stream."""
    return f"fed.{region}.wl.>"


def heartbeat(region: str, node: str) -> str:
    """An agent's heartbeat subject."""
    return f"fed.{region}.hb.{node}"


def offer(region: str, node: str) -> str:
    """An agent's capacity offer subject."""
    return f"fed.{region}.offer.{node}"


def job_event(region: str, node: str, job: str) -> str:
    """An agent's status report on one job."""
    return f"fed.{region}.status.{node}.{job}.event"


def job_log(region: str, node: str, job: str) -> str:
    """Output chunks of one job, published by the agent that runs it."""
    return f"fed.{region}.status.{node}.{job}.log"


def job_log_filter(region: str, job: str) -> str:
    """Output of one job, from whichever node ran it."""
    return f"fed.{region}.status.*.{job}.log"


def ledger_changes(region: str, node: str) -> str:
    """Every accepted ledger write, republished by the server (core NATS, for watchers and taps)."""
    return f"fed.{region}.ledger.{node}"


def inputs(region: str) -> str:
    """What the region's leader fed its scheduling core, batch by batch (captured by the audit stream)."""
    return f"fed.{region}.inputs"


HUB: Final = "hub"


def chaos(region: str, command: str) -> str:
    """Fault injection requests to ``fed up --chaos`` (``region`` is the hub's: :data:`HUB`)."""
    return f"fed.{region}.chaos.{command}"


def summary(region: str) -> str:
    """The region's capacity summary, republished by its leader every few seconds."""
    return f"fed.{region}.summary"


def view(region: str) -> str:
    """The region's summary as broadcast to every region (plain publish, no acknowledgement): every
    region's views stream captures ``fed.*.view``, and the hub passes each one to every region."""
    return f"fed.{region}.view"


def view_origin(subject: str) -> str:
    """The region a ``fed.<region>.view`` subject was published by ("" for any other subject)."""
    parts = subject.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "fed" and parts[2] == "view" else ""


def handoff(region: str, job: str) -> str:
    """A job offered to ``region`` by another region's scheduler (core request/reply via the hub)."""
    return f"fed.{region}.handoff.{job}"


def quarantine(region: str, source: str) -> str:
    """Where a refused message is recorded with its reason (``source`` is the stream it came from)."""
    return f"fed.{region}.quarantine.{source}"


class ParsedStatus(NamedTuple):
    """The parts of a ``fed.<region>.status.<node>.<job>.<kind>`` subject."""

    region: str
    node: str
    job: str
    kind: str


def parse_status(subject: str) -> ParsedStatus | None:
    """Split a status subject into its tokens, or None when it is not one."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != "fed" or parts[2] != "status":
        return None
    return ParsedStatus(parts[1], parts[3], parts[4], parts[5])


def last_token(subject: str) -> str:
    """The final token of a subject (the node of an offer, the job of a submission)."""
    return subject.rsplit(".", 1)[-1]


# --- streams, consumers, buckets -------------------------------------------------------------------


def workloads_stream(region: str) -> str:
    """Durable stream of submissions and cancels (dedup by ``Nats-Msg-Id``)."""
    return f"fed-{region}-workloads"


def heartbeats_stream(region: str) -> str:
    """Latest heartbeat per node, per-message TTL, delete markers on expiry."""
    return f"fed-{region}-heartbeats"


def offers_stream(region: str) -> str:
    """Latest offer per node, per-message TTL."""
    return f"fed-{region}-offers"


def status_stream(region: str) -> str:
    """Agents' job events."""
    return f"fed-{region}-status"


def logs_stream(region: str) -> str:
    """Bounded job output."""
    return f"fed-{region}-logs"


def summary_stream(region: str) -> str:
    """The latest summary of the region (one message)."""
    return f"fed-{region}-summary"


def views_stream(region: str) -> str:
    """The latest view of every region (:func:`view`), captured in this region: its local view of
    the federation, which stays readable while the region is cut off."""
    return f"fed-{region}-views"


def audit_stream(region: str) -> str:
    """Every claim, release, job record, submission, cancel and agent report of the region, kept
    forever (no delete, no purge)."""
    return f"fed-{region}-audit"


# the audit stream's metadata key: each origin's last sequence when the stream was created
BASELINE: Final = "fed_baseline"


def audit_sources(region: str) -> list[str]:
    """The streams the region's audit stream sources (what the region writes anyway)."""
    return [
        workloads_stream(region),
        status_stream(region),
        f"KV_{ledger_bucket(region)}",
        f"KV_{jobs_bucket(region)}",
        quarantine_stream(region),
    ]


AUDIT_ALL: Final = "AUDIT_ALL"
"""The hub's stream sourcing every region's audit stream."""


def quarantine_stream(region: str) -> str:
    """Refused messages with the reason."""
    return f"fed-{region}-quarantine"


def ledger_bucket(region: str) -> str:
    """KV bucket: one allocation ledger per node, key = node name."""
    return f"fed-ledger-{region}"


def jobs_bucket(region: str) -> str:
    """KV bucket: one job record per job, key = job id."""
    return f"fed-jobs-{region}"


def objects_bucket(region: str) -> str:
    """The region's object store (JetStream Object Store layout, stream ``OBJ_<bucket>``): the
    chunks of jobs' input and output files."""
    return f"fed-objects-{region}"


def objects_stream(region: str) -> str:
    """The stream behind :func:`objects_bucket`."""
    return f"OBJ_{objects_bucket(region)}"


def object_chunks(region: str, obj: str) -> str:
    """Where the chunks of object ``obj`` are stored, in order (``obj`` is two or three tokens:
    :func:`input_object` or :func:`output_object`)."""
    return f"$O.{objects_bucket(region)}.C.{obj}"


def input_object(tenant: str, key: str) -> str:
    """An input file's object id: the tenant that uploaded it (its credentials may write only
    under its own name) and a random key."""
    return f"in.{tenant}.{key}"


def output_object(node: str, key: str) -> str:
    """An output file's object id: the node whose agent stored it, and a random key."""
    return f"out.{node}.{key}"


def lease_bucket(region: str) -> str:
    """KV bucket holding the region's scheduler lease (key :data:`LEADER_KEY`, per-message TTL)."""
    return f"fed-lease-{region}"


LEADER_KEY: Final = "scheduler"

SCHEDULER_WORKLOADS_CONSUMER: Final = "scheduler-workloads"
SCHEDULER_STATUS_CONSUMER: Final = "scheduler-status"


# --- the catalogue documented in subjects.md -----------------------------------------------------------


class Entry(NamedTuple):
    """One documented name: its kind (subject, stream, bucket, consumer) and its pattern."""

    kind: str
    pattern: str


R = "<region>"
CATALOGUE: Final[tuple[Entry, ...]] = (
    Entry("subject", submit(R, "<job>")),
    Entry("subject", cancel(R, "<job>")),
    Entry("subject", tenant_submit(R, "<job>", "<tenant>")),
    Entry("subject", tenant_cancel(R, "<job>", "<tenant>")),
    Entry("subject", tenant_api(R, "<tenant>", "<verb>")),
    Entry("subject", heartbeat(R, "<node>")),
    Entry("subject", offer(R, "<node>")),
    Entry("subject", job_event(R, "<node>", "<job>")),
    Entry("subject", job_log(R, "<node>", "<job>")),
    Entry("subject", ledger_changes(R, "<node>")),
    Entry("subject", summary(R)),
    Entry("subject", view(R)),
    Entry("subject", inputs(R)),
    Entry("subject", chaos(R, "<command>")),
    Entry("subject", handoff(R, "<job>")),
    Entry("subject", quarantine(R, "<source>")),
    Entry("stream", workloads_stream(R)),
    Entry("stream", heartbeats_stream(R)),
    Entry("stream", offers_stream(R)),
    Entry("stream", status_stream(R)),
    Entry("stream", logs_stream(R)),
    Entry("stream", summary_stream(R)),
    Entry("stream", views_stream(R)),
    Entry("stream", quarantine_stream(R)),
    Entry("stream", audit_stream(R)),
    Entry("hub stream", AUDIT_ALL),  # the hub is its own domain: nothing else captures there
    Entry("bucket", ledger_bucket(R)),
    Entry("bucket", jobs_bucket(R)),
    Entry("bucket", lease_bucket(R)),
    Entry("bucket", objects_bucket(R)),
    Entry("stream", objects_stream(R)),
    Entry("subject", object_chunks(R, input_object("<tenant>", "<key>"))),
    Entry("subject", object_chunks(R, output_object("<node>", "<key>"))),
    Entry("consumer", SCHEDULER_WORKLOADS_CONSUMER),
    Entry("consumer", SCHEDULER_STATUS_CONSUMER),
)
