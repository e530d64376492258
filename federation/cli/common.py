"""What every ``fed`` command shares: the common options, the state directory, ``--json`` output,
and ``KEY=VALUE`` flags. The command modules import this; it imports none of them (nor the entry
point, :mod:`federation.cli.entry`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from federation.config import default_state_dir
from federation.errors import InvalidRequest


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (``--state-dir``, ``--creds``, ``--log-level``): a parent
    parser for each subcommand's."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=argparse.SUPPRESS,
        help="state directory (default: $FED_STATE_DIR or ~/.local/share/nats-federation)",
    )
    common.add_argument(
        "--creds",
        default=argparse.SUPPRESS,
        help="credentials file to connect with (default: $FED_CREDS, else the one fed up wrote)",
    )
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )
    return common


def state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else ``$FED_STATE_DIR``, else a per-user data directory."""
    value = getattr(args, "state_dir", None)
    return Path(value).expanduser() if value else default_state_dir()


def pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """Repeated ``KEY=VALUE`` flags (``--env``, ``--label``, ``--require``) as a dict."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def amounts(values: Sequence[str], what: str) -> dict[str, float]:
    """Repeated ``NAME=AMOUNT`` flags (``--resource``) as a dict of numbers."""
    out = {}
    for key, value in pairs(values, what).items():
        try:
            out[key] = float(value)
        except ValueError:
            raise InvalidRequest(f"{what} {key} needs a number, got {value!r}") from None
    return out


def print_json(value: object) -> int:
    """The ``--json`` output: one JSON document and a newline (documented in subjects.md)."""
    sys.stdout.buffer.write(msgspec.json.encode(value) + b"\n")
    return 0
