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


MAX_ARRAY_SPEC = 100_000  # indices one --array may name


def parse_array(text: str) -> tuple[list[int], int]:
    """Slurm's ``--array`` syntax: the indices and the running limit (0: none).

    ``0-999``, ``1,3,5-9``, ``0-99:10`` (a range's step), each with an optional ``%N`` at the end
    (at most N at once): ``0-999%50``. Indices are sorted and distinct."""
    spec, _, limit_text = text.strip().partition("%")
    if limit_text and not limit_text.isdigit():
        raise InvalidRequest(f"--array {text!r}: the running limit after % is a whole number")
    limit = int(limit_text or 0)
    if limit_text and limit < 1:
        raise InvalidRequest(f"--array {text!r}: %0 would let nothing run")
    indices: set[int] = set()
    for part in spec.split(","):
        span, _, step_text = part.strip().partition(":")
        first, dash, last = span.partition("-")
        numbers = [first, last] if dash else [first]
        if not all(n.strip().isdigit() for n in numbers) or (step_text and not step_text.isdigit()):
            raise InvalidRequest(
                f"--array {text!r}: {part.strip()!r} is not an index, a range A-B or a stepped range A-B:S"
            )
        low, high, step = int(first), int(last) if dash else int(first), int(step_text or 1)
        if high < low or step < 1:
            raise InvalidRequest(f"--array {text!r}: {part.strip()!r} is an empty range")
        if (high - low) // step + 1 + len(indices) > MAX_ARRAY_SPEC:
            raise InvalidRequest(f"--array {text!r}: more than {MAX_ARRAY_SPEC} jobs")
        indices.update(range(low, high + 1, step))
    return sorted(indices), limit
