"""Failpoints: named places where a test can make a daemon crash or fail, through the environment.

Borrowed from etcd's gofail: the production code carries the points, the environment arms them.
``FED_FAILPOINT=<point>:<argument>``, read once at start:

* crash points (:func:`crash`) SIGKILL the process, with no cleanup, the first time any process
  reaches them; the argument names a file that the first comer creates (a later process, the
  standby that took over, passes);
* failure points (:func:`fail`) raise :class:`FailpointError` whenever they are reached with a key
  equal to the argument, a handler bug that never goes away: the poison-message path.

Unarmed, a point costs one comparison.
"""

from __future__ import annotations

import os
import signal

import structlog

log = structlog.get_logger()

POINT, _, ARGUMENT = os.environ.get("FED_FAILPOINT", "").partition(":")


class FailpointError(RuntimeError):
    """Raised by an armed failure point."""


def crash(name: str) -> None:
    """Die here (SIGKILL) if this crash point is armed and has not fired yet."""
    if name != POINT:
        return
    if ARGUMENT:
        try:
            os.close(os.open(ARGUMENT, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    log.warning("failpoint reached; dying", failpoint=name)
    os.kill(os.getpid(), signal.SIGKILL)


def fail(name: str, key: str) -> None:
    """Raise :class:`FailpointError` if this failure point is armed for ``key``."""
    if name == POINT and key == ARGUMENT:
        raise FailpointError(f"failpoint {name} armed for {key}")
