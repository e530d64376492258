"""How the federation's own processes ask Linux to schedule them: ``SCHED_BATCH``.

The daemons (``fed scheduler``, ``fed agent``) and the nats-servers ``fed up`` starts run under
the kernel's ``SCHED_BATCH`` policy. A batch process gets the same share of the CPU as any process
of its nice value; what changes is that its wake-ups do not preempt the process running. The
federation's processes wake for every message (an agent about nine times per job it runs, the
server about eight): under the default policy, on a busy host, most of those wake-ups preempted
another of them half-way through its own work, and each switch cost both. On the 2-core benchmark
host, with the daemons and the server under ``SCHED_BATCH``, the federation spent 0.86-0.94 ms of
CPU per job against 1.08-1.10 and ran 8-14% more jobs per second (alternated, bench/README.md).
On an idle host a woken daemon runs at once either way: one job at a time starts as fast.

Workloads are not the federation's processes: the agent starts them with the policy it was itself
started with (:data:`WORKLOAD_POLICY`), never with its own ``SCHED_BATCH``.

``FED_CPU_POLICY=normal`` keeps the default policy (the daemons' and ``fed up``'s servers');
``batch`` (or unset) is the above; anything else is refused when a daemon or ``fed up`` starts. A
process started under another policy already (systemd's ``CPUSchedulingPolicy=``, ``chrt``) keeps
it: only the default policy, ``SCHED_OTHER``, is changed.
"""

from __future__ import annotations

import contextlib
import os
import sys

from federation.errors import ConfigError

WORKLOAD_POLICY: int | None = None
"""The policy the agent starts workloads with, once :func:`enter_batch` changed its own (None:
they inherit the agent's)."""


CHOICES = ("batch", "normal")


def wanted() -> bool:
    """Whether the federation's processes run under ``SCHED_BATCH`` here (Linux, unless
    ``FED_CPU_POLICY=normal``); raises ConfigError for a value that is neither."""
    choice = os.environ.get("FED_CPU_POLICY", "batch").strip().lower() or "batch"
    if choice not in CHOICES:
        raise ConfigError(f"FED_CPU_POLICY must be one of {', '.join(CHOICES)}, not {choice!r}")
    return sys.platform == "linux" and choice == "batch"


def enter_batch() -> None:
    """Put the calling thread, and every thread and process it starts from now on, under
    ``SCHED_BATCH`` if it runs under the default policy and :func:`wanted`; remember the default
    for workloads (:data:`WORKLOAD_POLICY`). Called first thing by a daemon, before any thread."""
    global WORKLOAD_POLICY
    if not wanted():
        return
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:  # (a seccomp filter, say: the default policy stays)
        return
    WORKLOAD_POLICY = os.SCHED_OTHER


def batch_child() -> None:  # pragma: no cover - runs in the child between fork and exec
    """:func:`enter_batch` for a process about to exec (``fed up``'s nats-servers), without the
    workload bookkeeping (``fed up`` checked ``FED_CPU_POLICY`` when it started)."""
    with contextlib.suppress(Exception):
        if wanted() and os.sched_getscheduler(0) == os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def workload_scheduler() -> tuple[int, os.sched_param] | None:
    """``os.posix_spawn``'s ``scheduler`` argument for a workload (None: it inherits the agent's)."""
    return None if WORKLOAD_POLICY is None else (WORKLOAD_POLICY, os.sched_param(0))


def reset_workload() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In a workload started by a fork: back to the policy the agent was started with."""
    if WORKLOAD_POLICY is not None:
        os.sched_setscheduler(0, WORKLOAD_POLICY, os.sched_param(0))
