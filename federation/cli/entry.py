"""``fed``: the command line. Thin: parse flags -> config/options -> one coroutine.

Every command takes ``--state-dir`` (else ``$FED_STATE_DIR``, else a per-user data directory);
``fed up`` writes the connection file there and the other commands read it. Errors print one line
on stderr and exit with status 2; ``fed submit --wait`` exits with the job's own exit status.

The coroutine runs on uvloop's event loop (libuv's) where uvloop is installed, as it is with the
package on Linux and macOS: the daemons' own CPU per job is 5-8% lower on it than on asyncio's
loop (bench/README.md). ``FED_EVENT_LOOP=asyncio`` runs it on asyncio's own loop instead. The
daemons (``fed scheduler``, ``fed agent``) run under Linux's ``SCHED_BATCH`` policy
(:mod:`federation.cpupolicy`; ``FED_CPU_POLICY=normal`` keeps the default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence

from federation import cpupolicy, logs
from federation.cli import (
    audit,
    completion,
    console,
    creds,
    daemons,
    jobs,
    ops,
    quarantine,
    status,
    up,
    usage,
)
from federation.cli.common import common_options
from federation.errors import FederationError

EXIT_ERROR = 2


def _use_credentials(path: str | None) -> None:
    """``--creds`` (else ``$FED_CREDS``): the identity every connection of this process presents."""
    from federation.identity import load_credentials, use_credentials

    if path:
        os.environ["FED_CREDS"] = path  # the client path reads it (config.connection_credentials)
    path = path or os.environ.get("FED_CREDS")
    if path:
        use_credentials(load_credentials(path))


def build_parser() -> argparse.ArgumentParser:
    """The ``fed`` argument parser (every subcommand, with its help text)."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="fed", description="Share CPU cores, memory and GPUs across regions over NATS.", parents=[common]
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    # the order `fed --help` lists the commands in: a tour's order, not the modules'
    up.add_parsers(sub, common)  # up, chaos
    daemons.add_parsers(sub, common)  # scheduler, agent
    jobs.add_submit_parser(sub, common)
    status.add_parsers(sub, common)
    jobs.add_query_parsers(sub, common)  # jobs, job, explain, logs, get
    audit.add_parsers(sub, common)
    usage.add_parsers(sub, common)
    quarantine.add_parsers(sub, common)
    console.add_parsers(sub, common)
    jobs.add_cancel_parser(sub, common)
    ops.add_parsers(sub, common)  # config, provision
    creds.add_parsers(sub, common)
    completion.add_parsers(sub, common, root=parser)
    return parser


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a command runs on (see the module docstring): None for asyncio's own."""
    if os.environ.get("FED_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # (not installed: Windows, or removed)
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fed`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what was typed (fed submit --file: who wins)
    args.log_level = getattr(args, "log_level", "info")
    logs.configure(args.log_level)
    try:
        if getattr(args, "daemon", False):  # (before any thread: each inherits the policy)
            cpupolicy.enter_batch()
        _use_credentials(getattr(args, "creds", None))
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            code: int = runner.run(args.func(args))
    except FederationError as exc:
        print(f"fed: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fed jobs | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code
