"""What ``fed submit --file`` reads: a TOML job file (one job, or a workflow of named jobs that
depend on each other) or a shell script with ``#FED`` lines (as ``#SBATCH`` in Slurm).

A TOML file's keys are ``fed submit``'s options by their long names (``max-attempts`` or
``max_attempts``), with tables where the flag takes ``KEY=VALUE`` pairs (``env``, ``require``,
``resource``) and lists where it repeats (``node``, ``after``, ``input``, ``output``). An input's
path is taken from the file's own directory. One job::

    command = ["python", "train.py"]
    cpu = 2
    memory = "4GiB"
    input = ["data/train.csv"]
    output = ["model.pt"]

A workflow names its jobs under ``[jobs.NAME]``; keys at the top apply to every job, and ``after``
may name a job of the file (``"prepare"``, ``"train:any"``) or an existing job id::

    tenant = "acme"
    [jobs.prepare]
    command = "sh prepare.sh"
    [jobs.train]
    command = ["python", "train.py"]
    after = ["prepare"]

Everything is checked before anything is submitted: an unknown key is an error naming it (and the
job), and the workflow as a whole is checked by :meth:`~federation.client.Client.submit_workflow`
(a cycle, a name that is neither a job of the file nor an existing job). This module only reads:
it turns a file into :meth:`~federation.client.Client.submit`'s keyword arguments.
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

from federation.cli.common import parse_array
from federation.errors import InvalidRequest
from federation.resources import parse_duration, parse_memory

SCRIPT_PREFIX = "#FED"
MAX_SCRIPT_BYTES = 48 * 1024  # a script travels inside its job's submission (64 KiB at most)


def _strings(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return [str(v) for v in value]
    raise InvalidRequest(f"{where}: {key} must be a string or a list of strings")


def _table(value: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: {key} must be a table of NAME = VALUE")
    return dict(value)


def _number(value: Any, key: str, where: str, kind: type = int) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise InvalidRequest(f"{where}: {key} must be a {'whole number' if kind is int else 'number'}")
    return value


def _options(entry: dict[str, Any], where: str, base: Path) -> dict[str, Any]:
    """One job's keys as :meth:`Client.submit_workflow` arguments (unknown keys refused by name)."""
    out: dict[str, Any] = {}
    for raw, value in entry.items():
        key = raw.replace("-", "_")
        match key:
            case "command":
                out["command"] = (
                    ["sh", "-c", value] if isinstance(value, str) else _strings(value, raw, where)
                )
            case "cpu" | "gpu" | "gang" | "max_attempts":
                out[key] = _number(value, raw, where)
            case "memory":
                out["memory"] = parse_memory(str(value))
            case "timeout":
                out["timeout"] = (
                    parse_duration(value) if isinstance(value, str) else _number(value, raw, where, float)
                )
            case "priority" | "tenant" | "scoring" | "region" | "on_node_lost" | "id":
                if not isinstance(value, str):
                    raise InvalidRequest(f"{where}: {raw} must be a string")
                out[key] = value
            case "node" | "nodes":
                out["nodes"] = _strings(value, raw, where)
            case "regions":
                listed = value.split(",") if isinstance(value, str) else _strings(value, raw, where)
                out["regions"] = [r.strip() for r in listed if r.strip()]
            case "env" | "require":
                out[key] = {str(k): str(v) for k, v in _table(value, raw, where).items()}
            case "resource" | "custom":
                out["custom"] = {
                    str(k): _number(v, raw, where, float) for k, v in _table(value, raw, where).items()
                }
            case "retry_anywhere" | "once":
                if not isinstance(value, bool):
                    raise InvalidRequest(f"{where}: {raw} must be true or false")
                at_least_once = value if key == "retry_anywhere" else not value
                out["semantics"] = "at_least_once" if at_least_once else "at_most_once"
            case "array":
                out["array"], out["limit"] = parse_array(str(value))
            case "after":
                out["after"] = _strings(value, raw, where)
            case "input" | "inputs":  # PATH[:NAME], the path from the job file's directory
                out["inputs"] = [str(base / item) for item in _strings(value, raw, where)]
            case "output" | "outputs":
                out["outputs"] = _strings(value, raw, where)
            case _:
                raise InvalidRequest(f"{where}: unknown key {raw!r} (the keys are fed submit's options)")
    return out


def read_toml(path: Path) -> dict[str, dict[str, Any]]:
    """A TOML job file as named jobs (one job is named by the file's stem)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"no job file {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{path}: not valid TOML: {exc}") from None
    jobs = data.pop("jobs", None)
    if jobs is None:
        return {path.stem: _options(data, str(path), path.parent)}
    if not isinstance(jobs, dict) or not jobs or not all(isinstance(v, dict) for v in jobs.values()):
        raise InvalidRequest(f"{path}: [jobs] must hold one table per job, [jobs.NAME]")
    out = {}
    for name, entry in jobs.items():
        where = f"{path}: job {name!r}"
        top = _options(data, f"{path} (top level)", path.parent)
        out[str(name)] = {**top, **_options(entry, where, path.parent)}
        if "command" not in out[str(name)]:
            raise InvalidRequest(f"{where}: no command")
    return out


def read_script(path: Path) -> tuple[list[str], list[str]]:
    """A script with ``#FED`` lines: the flags those lines give (read up to the first line that
    is not a comment or blank, as ``#SBATCH`` lines are), and the command that runs the script's
    text (its ``#!`` interpreter, else ``sh``), carried in the job itself."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidRequest(f"no script {path}") from None
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"{path} is not a text script (give a .toml job file or a shell script)"
        ) from None
    if len(text.encode()) > MAX_SCRIPT_BYTES:
        raise InvalidRequest(
            f"{path} is {len(text.encode())} bytes; a script submitted whole may be {MAX_SCRIPT_BYTES}"
        )
    lines = text.splitlines()
    flags: list[str] = []
    for line in lines[1:] if lines and lines[0].startswith("#!") else lines:
        stripped = line.strip()
        if stripped.startswith(SCRIPT_PREFIX):
            try:
                flags += shlex.split(stripped[len(SCRIPT_PREFIX) :], comments=True)
            except ValueError as exc:
                raise InvalidRequest(f"{path}: {line!r}: {exc}") from None
        elif stripped and not stripped.startswith("#"):
            break
    interpreter = shlex.split(lines[0][2:]) if lines and lines[0].startswith("#!") else ["sh"]
    return flags, [*interpreter, "-c", text, path.name]
