"""Quantities as people type them: ``8GiB``, ``512MB``, ``cpu=4,memory=8GiB,gpu=1``, ``30s``.

Memory is carried as an integer number of bytes everywhere on the wire; CPU as whole cores
(a core is the unit of pinning); GPUs as a count of whole devices. This module turns human
text into those integers and back, and nothing else.
"""

from __future__ import annotations

import re

from federation.errors import ConfigError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(text: str | int) -> int:
    """Parse a memory quantity (``"8GiB"``, ``"512MB"``, ``1048576``) into bytes."""
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"memory must not be negative: {text}")
        return text
    match = _QUANTITY.match(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"not a memory quantity: {text!r} (examples: 512MiB, 8GiB, 2GB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_memory(size: int) -> str:
    """Render bytes the short way a person reads them (``8GiB``, ``1.5MiB``)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{size}B"


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|)\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float) -> float:
    """Parse a duration (``"30s"``, ``"5m"``, ``"250ms"``, ``"1.5h"``, ``"30d"``, ``12``) into seconds."""
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(f"a duration must not be negative: {text}")
        return float(text)
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"not a duration: {text!r} (examples: 250ms, 30s, 5m, 1h, 30d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_capacity(text: str) -> dict[str, int]:
    """Parse ``cpu=4,memory=8GiB,gpu=0`` into ``{"cpu": 4, "memory": 8589934592, "gpu": 0}``."""
    result: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise ConfigError(f"expected key=value in capacity, got {part!r}")
        if key == "memory":
            result[key] = parse_memory(value)
        elif key in ("cpu", "gpu"):
            if not value.strip().isdigit():
                raise ConfigError(f"{key} must be a whole number, got {value!r}")
            result[key] = int(value)
        else:
            raise ConfigError(f"unknown resource {key!r} (known: cpu, memory, gpu)")
    return result
