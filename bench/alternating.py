"""Comparing a workload with and without something, on a noisy shared machine: rounds of the two
runs back to back, the order swapped every round, reported as per-round ratios (with / without)."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Awaitable, Callable

Work = Callable[[], Awaitable[dict[str, float]]]


async def compare(
    run: Callable[[bool, Work], Awaitable[dict[str, float]]],
    work: Work,
    *,
    what: str,
    key: str,
    rounds: int,
    with_what: str,
) -> list[float]:
    """``rounds`` pairs of ``run(on, work)``, alternated; prints each round's figures of ``key``
    and returns the ratios (with / without)."""
    ratios = []
    for i in range(rounds):
        result = {}
        for on in (False, True) if i % 2 == 0 else (True, False):
            result[on] = (await run(on, work))[key]
        ratio = result[True] / result[False]
        ratios.append(ratio)
        print(
            f"  {what} round {i + 1}: without {result[False]:.0f}/s, {with_what} {result[True]:.0f}/s: "
            f"ratio {ratio:.3f}",
            flush=True,
        )
    return ratios


def middle(ratios: list[float]) -> str:
    """The median and mean of the ratios."""
    return f"median {statistics.median(ratios):.3f}, mean {statistics.fmean(ratios):.3f}"


def workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The sizes of bench/throughput.py's two workloads, and how many rounds."""
    parser.add_argument("--placements", type=int, default=5000, help="jobs per placements run (0 skips)")
    parser.add_argument("--nodes", type=int, default=50, help="simulated nodes for the placements runs")
    parser.add_argument("--e2e", type=int, default=1000, help="jobs per end-to-end run (0 skips)")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)


async def both_workloads(
    run: Callable[[bool, Work], Awaitable[dict[str, float]]], args: argparse.Namespace, with_what: str
) -> list[str]:
    """bench/throughput.py's placements and end-to-end workloads, each compared with and without
    (``run(on, work)``); the summary line of each."""
    import throughput  # bench/throughput.py: the caller put bench/ on the path

    summary = []
    if args.placements:
        ratios = await compare(
            run,
            lambda: throughput.placements(args.placements, args.nodes, idle=0),
            what="placements",
            key="placements_per_s",
            rounds=args.rounds,
            with_what=with_what,
        )
        summary.append(f"placements/s with/without: {middle(ratios)}")
    if args.e2e:
        ratios = await compare(
            run,
            lambda: throughput.end_to_end(args.e2e, args.agents, args.slots, idle=0),
            what="end to end",
            key="jobs_per_s",
            rounds=args.rounds,
            with_what=with_what,
        )
        summary.append(f"end-to-end jobs/s with/without: {middle(ratios)}")
    return summary
