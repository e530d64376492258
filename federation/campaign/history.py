"""What the campaign's clients did and saw, and what each job left behind when it ran.

An :class:`Operation` is one client call as a Jepsen history has it: invoked, then acknowledged
(the stream stored it), refused (an error that says nothing was stored) or indeterminate (a
timeout or a dropped connection: it may or may not have been stored). After the run the outcome
each acknowledged job reached, as the client read it, is added. A job's command appends one
*run marker* line (``job attempt workdir``) to ``<runs>/<job>`` when it starts, so a job that ran
twice leaves two lines, whatever the federation recorded.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

Ack = str  # "ok" (stored), "refused" (definitely not stored), "unknown" (may have been stored)


@dataclass
class Operation:
    """One client operation of the history."""

    kind: str  # "submit" or "cancel"
    job: str
    region: str
    invoked_at: float
    ack: Ack = "unknown"
    acked_at: float = 0.0
    error: str = ""
    at_most_once: bool = True  # no retry anywhere, on_node_lost "fail": it must never run twice
    policy: str = ""  # on_node_lost as submitted ("" is the region default, "fail")
    tenant: str = "default"
    regions: list[str] = field(default_factory=list)
    outcome: str = ""  # the final state the client read after the run ("" if it never ended)

    def acknowledged(self) -> None:
        """The call returned: the stream stored it."""
        self.ack, self.acked_at = "ok", time.time()


@dataclass(frozen=True)
class Run:
    """One start of a job, from its run marker."""

    job: str
    attempt: int
    node: str


class History:
    """The campaign's operations, in invocation order, and where its jobs leave run markers."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        runs.mkdir(parents=True, exist_ok=True)
        self.operations: list[Operation] = []

    def command(self, seconds: float = 0.3, then: str = "") -> list[str]:
        """A job command that leaves its run marker, then sleeps ``seconds`` (and runs ``then``)."""
        marker = (
            f'echo "$FED_JOB_ID $FED_ATTEMPT $FED_WORKDIR" >> {shlex.quote(str(self.runs))}/"$FED_JOB_ID"'
        )
        return ["sh", "-c", f"{marker}; sleep {seconds}{'; ' + then if then else ''}"]

    def add(self, operation: Operation) -> Operation:
        """Record an invocation (its ack is filled in when the call returns)."""
        self.operations.append(operation)
        return operation

    def submissions(self, ack: Ack | None = None) -> list[Operation]:
        """Submit operations (of one ack kind), in invocation order."""
        return [o for o in self.operations if o.kind == "submit" and (ack is None or o.ack == ack)]

    def markers(self) -> dict[str, list[Run]]:
        """Every job's run markers: job -> one Run per start."""
        out: dict[str, list[Run]] = {}
        for path in self.runs.iterdir():
            for line in path.read_text().splitlines():
                job, attempt, workdir = [*line.split(" ", 2), "", ""][:3]
                parts = Path(workdir).parts
                node = parts[parts.index("agents") + 1] if "agents" in parts[:-1] else ""
                out.setdefault(job, []).append(Run(job, int(attempt or 0), node))
        return out

    def dump(self, path: Path) -> None:
        """The history as JSON lines (one operation per line)."""
        with path.open("w") as out:
            for operation in self.operations:
                out.write(json.dumps(asdict(operation)) + "\n")
