"""``fed usage``: the compute used, per tenant and region, and what regions lent each other.

Reads the audit trail through :meth:`federation.client.Client.usage` (every region's own trail by
default, one region's with ``--region``, the hub's ``AUDIT_ALL`` with ``--all``, as ``fed audit``
does) and prints aligned tables, or the :class:`~federation.audit.usage.UsageReport` as JSON. What is
counted, and the units, are in :mod:`federation.audit.usage`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from federation.audit.usage import DIMENSIONS, Balance, Totals, UsageReport, dimensions
from federation.cli.common import print_json, state_dir
from federation.errors import ConfigError
from federation.resources import parse_duration

COLUMNS = ("JOBS", "RUNS", "CPU-H", "MEM-GiB-H", "GPU-H", "WALL-H")

HELP = """\
The compute the federation's jobs used, read from the audit trail: per tenant and per region
that ran it (--by), the exchange matrix (home region x region that ran its jobs) and each
region's balance of what it lent and borrowed.

A run is one attempt of a job (one per gang member), counted once, in the region whose node ran
it, from the exit report its agent stored there; it is attributed to the job's tenant and home
region. It counts in the window its exit report was stored in (a run still going counts once it
ends). A job handed off to another region is counted there, never at home.

Units:
  CPU-H      CPU-hours: user + system CPU seconds / 3600
  MEM-GiB-H  memory GiB-hours: peak memory (GiB) x wall hours
  GPU-H      GPU-hours: claimed GPUs x wall hours
  WALL-H     wall-clock hours of the runs
  JOBS, RUNS distinct jobs and runs counted
A run on a node without a cgroup has its wall time only (CPU and memory 0, noted below the
tables); a report without usage adds nothing and is noted too.

The exchange: one line per (home region, region that ran it). Where they differ, the region
that ran the jobs lent that much to the home region, which borrowed it; where they are the same,
the region used its own nodes. The balance sums, per region, what it lent and what it borrowed.
A '?' tenant or home: the job's record is not in the window read (e.g. it was cancelled just
before the window and its process ended just after).

Scope: every region's own trail by default (the hub is not needed); --region R reads only what
ran in R (what R lent, not what it borrowed); --all the hub's AUDIT_ALL. A region whose trail
cannot be read is named on stderr and the command exits 1 (the others are still counted). A
tenant's credentials are refused: the trail holds every tenant's jobs.
"""


def window(text: str) -> float:
    """``--since``: a duration (``30d``, ``12h``, ``90m``, ``45s``) in seconds, or ``all`` (inf)."""
    if text.strip() == "all":
        return math.inf
    try:
        return parse_duration(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number and a unit, e.g. 30d, 12h, 90m or 45s "
            "(or 'all' for the whole trail)"
        ) from None


async def cmd_usage(args: argparse.Namespace) -> int:
    from federation.client import Client

    since = 0.0 if math.isinf(args.since) else time.time() - args.since
    by = dimensions(args.by or ())
    async with Client.connect(state_dir(args)) as fed:
        report = await fed.usage(since=since, by=by, region=args.region, everywhere=args.all)
    if args.json:
        print_json(report)
    else:
        sys.stdout.write(render(report))
        sys.stdout.flush()
    for why in report.unread:
        print(f"fed: {why}: its runs are missing above", file=sys.stderr)
    return 1 if report.unread else 0  # a region's runs are missing: the figures are not the whole


def render(report: UsageReport) -> str:
    """The human form: the window, a table per breakdown, the exchange, the balance, the notes."""
    lines = [_header(report), ""]
    titles = {"tenant": "TENANT", "region": "RAN IN", "origin": "HOME REGION", "node": "NODE"}
    for dimension, rows in report.by.items():
        named: list[tuple[Sequence[str], Totals]] = [([row.key], row) for row in rows]
        total: list[tuple[Sequence[str], Totals]] = [(["total"], report.totals)] if rows else []
        lines += [*_table([titles.get(dimension, dimension.upper())], named + total), ""]
    lines.append("exchange: home region x region that ran its jobs (they differ: lent and borrowed)")
    cells = [([cell.home, cell.ran_in], cell) for cell in report.exchange]
    lines += [*_table(["HOME", "RAN IN"], cells), ""]
    lines.append("balance: lent = other regions' jobs run here; borrowed = this region's jobs run elsewhere")
    lines += _balance(report.balance)
    lines += _notes(report.totals)
    return "\n".join(lines) + "\n"


def _header(report: UsageReport) -> str:
    def when(at: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))

    span = f"since {when(report.since)}" if report.since else "over the whole trail"
    read = ", ".join(report.read) or "nothing"
    return f"compute used {span} (to {when(report.until)}), from {read}"


def _hours(value: float) -> str:
    return "<0.0001" if 0 < value < 0.00005 else f"{value:.4f}"


def _figures(totals: Totals) -> list[str]:
    return [
        str(totals.jobs),
        str(totals.runs),
        _hours(totals.cpu_hours),
        _hours(totals.memory_gib_hours),
        _hours(totals.gpu_hours),
        _hours(totals.wall_hours),
    ]


def _table(keys: Sequence[str], rows: Sequence[tuple[Sequence[str], Totals]]) -> list[str]:
    """A breakdown: its key columns, then the figures of :data:`COLUMNS`."""
    if not rows:
        return ["(no runs)"]
    return _aligned([[*keys, *COLUMNS]] + [[*named, *_figures(totals)] for named, totals in rows], len(keys))


def _balance(balance: Sequence[Balance]) -> list[str]:
    if not balance:
        return ["(no runs)"]
    units = ("cpu_hours", "memory_gib_hours", "gpu_hours")
    header = ["REGION", "LENT CPU-H", "MEM-GiB-H", "GPU-H", "BORROWED CPU-H", "MEM-GiB-H", "GPU-H"]
    grid = [header] + [
        [
            entry.region,
            *(_hours(getattr(entry.lent, unit)) for unit in units),
            *(_hours(getattr(entry.borrowed, unit)) for unit in units),
        ]
        for entry in balance
    ]
    return _aligned(grid, 1)


def _aligned(grid: Sequence[Sequence[str]], keys: int) -> list[str]:
    """Rows of cells as lines: the first ``keys`` columns left-aligned, the figures right-aligned,
    each column as wide as its widest cell. Control characters are escaped (names are checked on
    decoding, but a table must never drive a terminal)."""
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    out = []
    for line in grid:
        cells = [
            c.ljust(w) if i < keys else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        row = "  ".join(cells).rstrip()
        out.append(row if row.isprintable() else row.encode("unicode_escape").decode())
    return out


def _notes(totals: Totals) -> list[str]:
    notes = []
    if totals.wall_clock_only:
        notes.append(
            f"note: CPU and memory were not measured for {totals.wall_clock_only} of the runs (nodes "
            "without a cgroup: counted 0)"
        )
    if totals.unmeasured:
        notes.append(
            f"note: {totals.unmeasured} of the runs reported no usage (an agent older than usage "
            "reports): nothing added for them"
        )
    return ["", *notes] if notes else []


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``usage`` to the ``fed`` subcommands."""
    p = sub.add_parser(
        "usage",
        parents=[common],
        help="compute used per tenant and region, and what regions lent and borrowed",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--since",
        type=window,
        default=window("30d"),
        metavar="DURATION",
        help="runs that ended in the last DURATION: 30d, 12h, 90m, 45s, or 'all' (default 30d)",
    )
    p.add_argument(
        "--by",
        action="append",
        choices=DIMENSIONS,
        help="break down by the job's tenant, the region that ran it, the job's home region (origin) "
        "or the node that ran it (repeat for several; default: tenant and region)",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--region", help="only what ran in this region, from its own trail (default: every region's)"
    )
    scope.add_argument("--all", action="store_true", help="every region, from the hub's AUDIT_ALL")
    p.add_argument(
        "--json",
        action="store_true",
        help="the report as one JSON document (since, until, read, unread, totals, by, exchange, "
        "balance: see the README)",
    )
    p.set_defaults(func=cmd_usage)
