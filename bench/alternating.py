"""Comparing a workload with and without something, on a noisy shared machine: rounds of the two
runs back to back, the order swapped every round, reported as per-round ratios (with / without)."""

from __future__ import annotations

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
