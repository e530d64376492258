"""Per-thread CPU profiles of the federation's daemons during a benchmark (not used by the code).

    FED_CPROFILE=/tmp/prof PYTHONPATH=bench/profiling .venv/bin/python bench/throughput.py --placements 0

Python imports ``sitecustomize`` at start from ``PYTHONPATH``, in the benchmark and in every
process it starts. In a ``fed agent`` or ``fed scheduler`` process this one starts ``cProfile``
timed by the thread's own CPU time (so waiting and other processes' CPU do not count) and writes
``<role>-<pid>.prof`` into the directory ``FED_CPROFILE`` names when the process exits cleanly
(SIGTERM, as the benchmarks stop their children). Read them with ``pstats``; profiling roughly
triples the cost of Python code, so compare shares, not times.
"""

from __future__ import annotations

import atexit
import os
import sys

_OUT = os.environ.get("FED_CPROFILE", "")
_ROLE = next((a for a in sys.orig_argv if a in ("agent", "scheduler")), "")

if _OUT and _ROLE:
    import cProfile
    import time

    _profile = cProfile.Profile(time.thread_time)
    _profile.enable()

    def _dump() -> None:
        _profile.disable()
        os.makedirs(_OUT, exist_ok=True)
        _profile.dump_stats(os.path.join(_OUT, f"{_ROLE}-{os.getpid()}.prof"))

    atexit.register(_dump)
