"""Identities and their NATS permissions: who may publish and read what.

Theory of operation
-------------------
Every process that talks to a federation's servers authenticates with an nkey (an Ed25519 key
pair; the server keeps only the public key and checks a signature of its nonce). An
:class:`Identity` is one such key with a role, and the role decides the server-side permissions
(:func:`permissions`), so a process can do only what its role needs even if it misbehaves:

- ``agent`` (one node of one region): publishes only its node's heartbeat, offer and status
  subjects, reads only its own ledger key (the republish subject and a direct get of that key)
  and the scheduler lease (a direct get: the region's cadence is said there);
  stores output files only as chunks under its node's name, and reads any region's object store
  (the inputs of the jobs it runs, from their home region through the hub);
- ``scheduler`` (one region): that region's subjects and its domain's JetStream API, hand-offs and
  forwarded cancels to other regions, and answers to requests (``allow_responses``);
- ``tenant``: submits and cancels only on subjects that end in its name (the scheduler checks the
  submission's ``tenant`` against it) and asks its region's scheduler for its own jobs and logs
  (``fed.<region>.tenant.<name>.>``), including its jobs' output files; it stores input files
  only as chunks under its own name; no other stream, bucket or audit access;
- ``auditor``: reads the audit streams, the live buckets (invariant I8), what the web console
  shows (offers, heartbeats, the lease, summaries and views, job output) and stream and consumer
  info, by batched direct gets (:mod:`federation.bus.scan`): it creates no consumer, since
  nats-server does not check a consumer's deliver subject against its creator's permissions;
- ``leaf`` (one region's leafnode link to the hub): everything except the node-local traffic of
  any region (heartbeats, offers, status, ledger republish, journal, quarantine, KV and object
  store writes), in
  either direction, so no region and no hub client can speak for another region's nodes;
- ``admin`` (``fed up``, operators): everything.

Every identity's replies come to a private inbox named by its public key
(``_INBOX.<public key>.>``), which only it may subscribe to. Agents and tenants are accounts of
their own, as are auditors, that reach the streams' account only through service imports (:func:`lent`): NATS
does not check reply subjects against permissions, and a service import is what keeps a forged
reply subject from steering the server's acknowledgement into a stream.

:func:`accounts` renders the ``accounts`` block of a server's configuration;
``federation.ops.keyring`` keeps the keys on disk. Everything here is pure except the last section:
who this process is (:func:`use_credentials`, :func:`use_tls`: a daemon's ``--creds`` and
``--tls-*``), which every connection it opens without its own presents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from federation import subjects
from federation.errors import ConfigError
from federation.identity import ROLES, Identity

KINDS = ROLES
# node-local traffic: it never needs to cross a leafnode link, in either direction
LOCAL_ONLY = ("hb.>", "offer.>", "status.>", "ledger.>", "inputs", "quarantine.>")


@dataclass(frozen=True)
class Permissions:
    """Server-side permissions: what is not allowed is refused (deny lists narrow an allow-all)."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    allow_responses: bool = False


def check_identity(kind: str, name: str, region: str = "") -> None:
    """ConfigError unless ``kind``/``name``/``region`` can name an identity."""
    if kind not in KINDS:
        raise ConfigError(f"unknown identity kind {kind!r} (one of {', '.join(KINDS)})")
    if kind in ("scheduler", "leaf"):
        subjects.check_region(name)
    else:
        subjects.check_token(name, kind)
    if kind == "tenant" and name == "default":
        raise ConfigError("'default' is the tenant of every job submitted without one: choose another name")
    if kind == "agent":
        subjects.check_region(region)


def permissions(identity: Identity, regions: Sequence[str]) -> Permissions | None:
    """What ``identity`` may do on a federation of ``regions`` (None: everything)."""
    kind, name, own = identity.kind, identity.name, identity.inbox + ".>"
    if kind == "admin":
        return None
    if kind == "agent":
        r = identity.region
        ledger, lease = subjects.ledger_bucket(r), subjects.lease_bucket(r)
        return Permissions(
            publish=(
                subjects.heartbeat(r, name),
                subjects.offer(r, name),
                f"fed.{r}.status.{name}.>",
                f"$JS.API.DIRECT.GET.KV_{ledger}.$KV.{ledger}.{name}",
                # the region's cadence, said in the scheduler lease (federation.core.cadence)
                f"$JS.API.DIRECT.GET.KV_{lease}.$KV.{lease}.{subjects.LEADER_KEY}",
                # jobs' files: inputs from any region's store (through the hub), outputs to its own
                f"$JS.API.DIRECT.GET.{subjects.objects_stream(r)}",
                *(_remote_objects(other) for other in regions if other != r),
                subjects.object_chunks(r, subjects.output_object(name, "*")),
            ),
            subscribe=(subjects.ledger_changes(r, name), own),
        )
    if kind == "scheduler":
        r = name
        return Permissions(
            publish=(
                f"fed.{r}.>",
                "fed.*.handoff.>",  # spillover requests to other regions
                "fed.*.wl.cancel.>",  # a cancel passed on to the region a job was handed to
                "$JS.API.>",  # the region's own domain (a region server never routes it to the hub)
                f"$KV.{subjects.ledger_bucket(r)}.>",
                f"$KV.{subjects.jobs_bucket(r)}.>",
                f"$KV.{subjects.lease_bucket(r)}.>",
                *(f"$JS.ACK.{prefix}{stream(r)}.>" for prefix in ("", "*.*.") for stream in ACKED),
                "$JS.FC.>",
            ),
            subscribe=(f"fed.{r}.>", *(f"_fed.deliver.{stream(r)}.>" for stream in ACKED), own),
            allow_responses=True,
        )
    if kind == "tenant":
        return Permissions(
            publish=(
                subjects.submit("*", "*") + f".{name}",
                subjects.cancel("*", "*") + f".{name}",
                f"fed.*.tenant.{name}.>",
                # its jobs' input files, as chunks under its own name
                *(subjects.object_chunks(r, subjects.input_object(name, "*")) for r in regions),
            ),
            subscribe=(own,),
        )
    if kind == "auditor":  # its account imports only these, read-only (federation.bus.scan)
        return Permissions(
            publish=(
                "$JS.API.INFO",
                "$JS.API.STREAM.INFO.*",
                "$JS.API.CONSUMER.INFO.*.*",
                "$JS.API.DIRECT.GET.*",
            ),
            subscribe=(own,),
        )
    if kind == "leaf":
        local = (
            *(f"fed.*.{suffix}" for suffix in LOCAL_ONLY),
            "$KV.>",
            "$O.>",
            "_fed.deliver.>",
            "$JS.ACK.>",
        )
        return Permissions(publish_deny=local, subscribe_deny=local)
    raise ConfigError(f"unknown identity kind {kind!r}")


FED, AGENTS, TENANTS, AUDIT = "FED", "AGENTS", "TENANTS", "AUDIT"  # the accounts
HUB = "hub"
ACKED = (subjects.workloads_stream, subjects.status_stream)  # the scheduler's durable consumers' streams


@dataclass(frozen=True)
class Lent:
    """One subject the FED account lends another account: a service (answered in FED; a
    ``stream`` response may be several messages) or a stream of messages."""

    subject: str
    account: str
    kind: str = "service"  # or "stream"
    response: str = ""  # "stream": several messages answer one request


def _remote_objects(region: str) -> str:
    """A direct get of ``region``'s object store from another region (through the hub)."""
    return f"$JS.{region}.API.DIRECT.GET.{subjects.objects_stream(region)}"


def lent(domain: str, regions: Sequence[str] = ()) -> list[Lent]:
    """What the FED account of a server of ``domain`` lends the other accounts. A service import
    maps the requester's reply subject to a private one (``_R_...``), so neither a JetStream
    acknowledgement nor any answer can be steered into a subject of FED (a stream or a bucket) by
    a forged reply subject."""
    info = [Lent(s, AUDIT) for s in ("$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.CONSUMER.INFO.*.*")]
    if domain == HUB:
        return [*info, Lent(f"$JS.API.DIRECT.GET.{subjects.AUDIT_ALL}", AUDIT, response="stream")]
    r, ledger = domain, subjects.ledger_bucket(domain)
    readable = [  # the audit trail, and what the console shows (every one read-only, by direct gets)
        subjects.audit_stream(r),
        f"KV_{ledger}",
        f"KV_{subjects.jobs_bucket(r)}",
        f"KV_{subjects.lease_bucket(r)}",
        subjects.offers_stream(r),
        subjects.heartbeats_stream(r),
        subjects.summary_stream(r),
        subjects.views_stream(r),
        subjects.logs_stream(r),
    ]
    return [
        *(Lent(s, AGENTS) for s in (subjects.heartbeat(r, "*"), subjects.offer(r, "*"), f"fed.{r}.status.>")),
        Lent(f"$JS.API.DIRECT.GET.KV_{ledger}.>", AGENTS),
        Lent(f"$JS.API.DIRECT.GET.KV_{subjects.lease_bucket(r)}.>", AGENTS),
        Lent(subjects.ledger_changes(r, "*"), AGENTS, kind="stream"),
        *(
            Lent(s, TENANTS)
            for s in (subjects.tenant_submit(r, "*", "*"), subjects.tenant_cancel(r, "*", "*"))
        ),
        Lent(subjects.tenant_api(r, "*", "*"), TENANTS),
        Lent(subjects.object_chunks(r, subjects.input_object("*", "*")), TENANTS),
        Lent(subjects.object_chunks(r, subjects.output_object("*", "*")), AGENTS),
        Lent(f"$JS.API.DIRECT.GET.{subjects.objects_stream(r)}", AGENTS, response="stream"),
        # another region's store, read through the hub (a job's inputs where it was handed over)
        *(Lent(_remote_objects(other), AGENTS, response="stream") for other in regions if other != r),
        *info,
        *(Lent(f"$JS.API.DIRECT.GET.{stream}", AUDIT, response="stream") for stream in readable),
    ]


def accounts(identities: Iterable[Identity], regions: Sequence[str], domain: str) -> str:
    """The ``accounts`` block of a server of ``domain`` (``hub`` or a region).

    Everything JetStream keeps lives in the FED account, with the operator, the server's region's
    scheduler and (on the hub) the regions' leafnode links. Agents, tenants and auditors are
    accounts of their own (AGENTS, TENANTS, AUDIT) that reach FED only through what :func:`lent`
    lends them. A server knows only the identities that have business on it."""
    quote = json.dumps
    members: dict[str, list[str]] = {FED: [], AGENTS: [], TENANTS: [], AUDIT: []}
    for identity in sorted(identities, key=lambda i: (i.kind, i.region, i.name)):
        kind = identity.kind
        if kind == "leaf" and domain != HUB:
            continue
        if (kind == "scheduler" and identity.name != domain) or (
            kind == "agent" and identity.region != domain
        ):
            continue
        if kind == "tenant" and domain == HUB:
            continue
        account = {"agent": AGENTS, "tenant": TENANTS, "auditor": AUDIT}.get(kind, FED)
        entry = f"{{ nkey: {quote(identity.public_key)}"
        perms = permissions(identity, regions)
        if perms is not None:
            entry += f", permissions: {_permissions(perms)}"
        entry += f', allowed_connection_types: ["{"LEAFNODE" if kind == "leaf" else "STANDARD"}"] }}'
        members[account].append(f"      # {identity.label}\n      {entry}")
    loans = lent(domain, regions)
    lines = ["accounts {"]
    for account, users in members.items():
        if account != FED and not any(loan.account == account for loan in loans):
            continue  # (the hub lends agents and tenants nothing)
        lines += [f"  {account} {{", *(["    jetstream: enabled"] if account == FED else []), "    users: ["]
        lines += [",\n".join(users), "    ]"]
        if account == FED:
            out = [
                f"{{ {loan.kind}: {quote(loan.subject)}, accounts: [{loan.account}]"
                + (f", response: {loan.response}" if loan.response else "")
                + " }"
                for loan in loans
            ]
            lines.append("    exports: [\n      " + ",\n      ".join(out) + "\n    ]")
        else:
            mine = [
                f"{{ {loan.kind}: {{ account: {FED}, subject: {quote(loan.subject)} }} }}"
                for loan in loans
                if loan.account == account
            ]
            lines.append("    imports: [\n      " + ",\n      ".join(mine) + "\n    ]")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\nauthorization { timeout: 2 }"


def _permissions(perms: Permissions) -> str:
    def side(allow: tuple[str, ...], deny: tuple[str, ...]) -> str:
        parts = []
        if allow:
            parts.append(f"allow: {json.dumps(list(allow))}")
        if deny:
            parts.append(f"deny: {json.dumps(list(deny))}")
        return "{ " + ", ".join(parts) + " }"

    text = "{ "
    text += f"publish: {side(perms.publish, perms.publish_deny)}, "
    text += f"subscribe: {side(perms.subscribe, perms.subscribe_deny)}"
    if perms.allow_responses:
        text += ", allow_responses: true"
    return text + " }"
