"""One cgroup per attempt: every process of a job contained, limited and measured (Linux).

Theory of operation
-------------------
At start the agent looks for a cgroup hierarchy it may write (:func:`detect`): the unified (v2)
hierarchy when its controllers are available to the agent's own cgroup, else the separate v1
hierarchies (``freezer``, ``memory``, ``pids``, ``cpuset``, ``cpuacct``; all of them, or v1 is not
used). Under the agent's own cgroup it makes ``fed-<node>``, and under that one cgroup per
attempt, ``slot-<n>`` (reused by later attempts, one at a time: see *Reuse*), before it starts:

* **limits**: memory to what the job asked for (``memory.limit_in_bytes``/``memory.max``; an
  out-of-memory kill is read back as the cause), a process count (``pids.max``), and CPU: the
  claimed cores where they are real (``cpuset.cpus``), else a weight by the cores asked
  (``cpu.shares`` 1024 per core on v1, where a ``cpu`` hierarchy is mounted; ``cpu.weight`` 100
  per core on v2), so busy attempts share the node's CPU in proportion to what they asked for;
* **containment**: the workload is in its cgroup from its start, and every process it forks stays
  there, ``setsid`` and double forks included. On v1 the agent's event-loop thread enters the
  attempt's freezer group (each hierarchy's ``tasks``: that thread alone; also its pids group when
  its processes are limited, its cpuset when it has claimed cores) just around the start of the
  process (:meth:`Group.entered`), which a ``posix_spawn`` (glibc's vfork) begins where the thread
  is, and leaves at once: nothing the process forks escapes a kill or its limits. Its other
  groups (memory, CPU accounting and weight) are joined by the process right after its start,
  before the thread leaves, with anything it forked meanwhile (:meth:`Group.join`): the memory
  group so that nothing the agent allocates is ever charged to an attempt (what the process
  touched before the join, microseconds of a fresh exec, is not counted), the others because a
  migration of the thread in and out costs two writes per hierarchy per start (what they miss is
  the same microseconds of CPU).
  On v2, where a process moves with all its threads, a two-line ``sh`` prefix holds the workload
  until the agent wrote its pid into ``cgroup.procs`` (:func:`prefix`, the gate: one more exec).
  Stopping the attempt, and the end of its main process, kill everything left in the cgroup: v2
  writes ``cgroup.kill``; v1 freezes the group first (nothing can fork while the signals go out),
  kills every member, then thaws it;
* **measurement**: CPU seconds (``cpuacct.usage``/``cpu.stat``), peak memory
  (``memory.max_usage_in_bytes``/``memory.peak``) and whether the kernel killed for memory
  (``memory.oom_control``/``memory.events``), read once the group is empty.

**Reuse.** Making and removing a cgroup (a directory in each of five v1 hierarchies) and opening
its files cost the agent more CPU than starting a short job, so groups are kept and reused: an
attempt gets a group of its own (``slot-<n>``), empty, with its limits rewritten where they
differ from the previous attempt's; when it ends, everything left in it is killed and its usage
read, and the group goes back to the agent's pool. One group holds one attempt at a time. Its
counters carry on across attempts, so an attempt's CPU seconds and out-of-memory kills are the
difference from what they were at its start, and its peak memory is reset before it starts
(v1 ``memory.max_usage_in_bytes``; v2 ``memory.peak``, where the kernel can reset it: 6.12 and
later, else a v2 group is never reused). A group still charged with more than :data:`RESIDUE`
bytes after its attempt (page cache of files the job wrote) is removed, not reused: an
attempt's peak counts at most that much of what came before it (measured here: 0.2-0.6 MB of
kernel objects after jobs of ``true``, whose own peak is about 0.26 MB). The files written or
read for every attempt (``tasks``, ``cgroup.procs``, the counters) stay open (:class:`_Files`);
member lists are read through a new descriptor each time (v1 caches them per descriptor).

A previous life of the agent may have left attempt groups: :meth:`Hierarchy.leftovers` names them
so the agent kills and removes them at start. With no writable hierarchy, :func:`detect` returns
None and the agent keeps its process-group mechanisms (and says so once).

Every file operation here is a short write or read of a kernel file (microseconds); the waits
(a freeze to settle, a group to empty) are bounded and asynchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

V1_CONTROLLERS = ("freezer", "memory", "pids", "cpuset", "cpuacct")
V1_OPTIONAL = ("cpu",)  # CPU weight of unpinned attempts, where the host mounts it
ENTERED = ("freezer", "pids", "cpuset")  # v1 groups a start may be inside from the first instruction
V2_CONTROLLERS = ("memory", "pids", "cpuset", "cpu")
Mode = Literal["cgroup-v1", "cgroup-v2"]
SETTLE = 5.0  # seconds a freeze or an emptying group may take before giving up
RESIDUE = 1024 * 1024  # bytes a group may still be charged with and be reused (kernel objects)
COUNTER_BYTES = 4096  # a counter file read in one go (a page: what the kernel fills for one read)


@dataclass(frozen=True)
class Limits:
    """What one attempt may use: bytes of memory, processes, cores (0 / empty: not limited)."""

    memory: int = 0
    processes: int = 0
    cores: tuple[int, ...] = ()
    cpus: int = 0  # cores asked: the CPU weight of an attempt without claimed cores


@dataclass(frozen=True)
class Usage:
    """What one attempt used, read from its cgroup."""

    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    oom_killed: bool = False


def _write(path: Path | str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read(path: Path | str, default: str = "") -> str:
    """The file's whole text, through a descriptor of its own (``default`` if it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return default
    try:
        return _contents(fd, default)
    finally:
        os.close(fd)


def _contents(fd: int, default: str) -> str:
    """Everything ``fd`` holds, read from its start (a kernel file is generated anew)."""
    chunks, offset = [], 0
    try:
        while chunk := os.pread(fd, 65536, offset):
            chunks.append(chunk)
            offset += len(chunk)
    except OSError:
        return default
    return b"".join(chunks).decode()


def _number(text: str) -> int:
    """A counter the kernel shows (0 when it shows none)."""
    try:
        return int(text.strip() or 0)
    except ValueError:
        return 0


def _pairs(text: str) -> dict[str, str]:
    """``key value`` lines (``memory.oom_control``, ``cpu.stat``, ``memory.events``)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


class _Files:
    """Kernel files kept open: a cgroupfs file is opened once, then written (``pwrite``) or read
    (``pread`` from its start, which has the kernel generate it anew) for every attempt. An open
    and a close cost several times the write itself."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[int, int]] = {}  # path -> descriptor, how it was opened

    def _fd(self, path: str, access: int) -> int:
        held = self._open.get(path)
        if held is not None and held[1] in (access, os.O_RDWR):
            return held[0]
        access = access if held is None else os.O_RDWR  # read and written: one descriptor for both
        fd = os.open(path, access | (os.O_CREAT if access != os.O_RDONLY else 0), 0o644)
        if held is not None:
            os.close(held[0])
        self._open[path] = (fd, access)
        return fd

    def write(self, path: str, value: str) -> None:
        """Write ``value`` (OSError, ProcessLookupError for a pid that is gone, as the kernel says)."""
        os.pwrite(self._fd(path, os.O_WRONLY), value.encode(), 0)

    def read(self, path: str, default: str = "") -> str:
        """The text of a counter file (``default`` if it cannot be read). Only for the files of
        counters (``pids.current``, ``cpuacct.usage``, ``memory.oom_control``, ``cpu.stat``...):
        the kernel writes each whole, as one record of a few lines, into the first read, so
        one ``pread`` is enough (a list such as ``cgroup.procs`` is not one record: :func:`_read`)."""
        try:
            return os.pread(self._fd(path, os.O_RDONLY), COUNTER_BYTES, 0).decode()
        except OSError:
            return default

    def both(self, path: str) -> None:
        """Have ``path`` open for reading and writing through one descriptor (OSError if it cannot
        be): a v2 ``memory.peak`` is reset for the reads of the descriptor it was written through."""
        self._fd(path, os.O_RDWR)

    def close(self, under: Path | None = None) -> None:
        """Close the files under ``under`` (every file: None)."""
        prefix = f"{under}{os.sep}" if under is not None else ""
        for path in [p for p in self._open if p.startswith(prefix)]:
            os.close(self._open.pop(path)[0])


@dataclass(frozen=True)
class _Counters:
    """A group's cumulative counters: where an attempt's usage is counted from."""

    cpu_seconds: float = 0.0
    oom_kills: int = 0


@dataclass(eq=False)
class Group:
    """One attempt's cgroup: a directory per v1 controller, or one v2 directory (key ``""``).

    Made (or taken from the pool) by :meth:`Hierarchy.attempt`; given back by :meth:`remove` once
    its attempt is over, after which this object must not be used for that attempt any more."""

    mode: Mode
    dirs: dict[str, Path]
    home: dict[str, Path] = field(default_factory=dict)  # the agent's own group in each hierarchy
    files: _Files = field(default_factory=_Files, repr=False)  # shared with the hierarchy
    owner: Hierarchy | None = field(default=None, repr=False)  # whose pool it goes back to (None: removed)
    limits: Limits | None = field(default=None, repr=False)  # written now (None: the kernel's defaults)
    start: _Counters = field(default_factory=_Counters, repr=False)  # at this attempt's start
    emptied: bool = field(default=False, repr=False)  # the last remove() left no process behind
    procs_files: list[str] = field(init=False, repr=False)  # where a pid is written to move it in
    # the files read or written for every attempt, their paths made once: the thread's way in and
    # out (v1 "tasks" here, and in the agent's group), and the counters (CPU, peak, OOM kills, charged)
    _tasks: dict[str, tuple[str, str]] = field(init=False, repr=False)
    _counter_files: tuple[str, str, str, str] = field(init=False, repr=False)
    _count_file: str = field(init=False, repr=False)  # pids.current: processes in the group ("": none)

    def __post_init__(self) -> None:
        self.procs_files = [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]
        self._tasks = {
            c: (os.path.join(d, "tasks"), os.path.join(self.home[c], "tasks"))
            for c, d in self.dirs.items()
            if c in ENTERED and c in self.home
        }

        def at(controller: str, name: str) -> str:  # "" where the group has no such directory
            return os.path.join(self.dirs[controller], name) if controller in self.dirs else ""

        self._count_file = at("pids" if self.mode == "cgroup-v1" else "", "pids.current")
        if self.mode == "cgroup-v1":
            self._counter_files = (
                at("cpuacct", "cpuacct.usage"),
                at("memory", "memory.max_usage_in_bytes"),
                at("memory", "memory.oom_control"),
                at("memory", "memory.usage_in_bytes"),
            )
        else:
            names = ("cpu.stat", "memory.peak", "memory.events", "memory.current")
            self._counter_files = tuple(at("", name) for name in names)  # type: ignore[assignment]

    @property
    def pattern(self) -> str:
        """The ``sh`` pattern of the ``/proc/<pid>/cgroup`` line of a member, for the hierarchy
        :meth:`add` writes last (so a process that matches is in every one)."""
        controller, directory = list(self.dirs.items())[-1]
        suffix = f"/{directory.parent.name}/{directory.name}"
        if self.mode == "cgroup-v2":
            return f"0::*{suffix}"
        return f"*[:,]{controller}[:,]*{suffix}"  # a v1 line may name co-mounted controllers

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the group (every hierarchy; OSError if the kernel refuses)."""
        for path in self.procs_files:
            self.files.write(path, str(pid))

    def _entering(self) -> list[str]:
        """The v1 hierarchies the starting thread enters (:meth:`entered`): the freezer always,
        the pids group when the attempt's processes are limited, the cpuset when it has cores."""
        limited = self.limits is not None and self.limits.processes > 0
        return [c for c in self._tasks if c != "pids" or limited]

    def join(self, pid: int) -> None:
        """Move ``pid``, started inside the hierarchies :meth:`entered` enters, into the group's
        others (memory, CPU accounting and weight, an unlimited pids group), and whatever it
        forked before that too (found in the freezer, read again until a read shows nothing new: a
        process forked after that read was forked by one already moved, and inherits its groups).
        A process gone meanwhile is skipped."""
        entering = self._entering()
        paths = [path for c, path in zip(self.dirs, self.procs_files, strict=True) if c not in entering]
        moved: set[int] = set()
        born = {pid}
        while born:
            for member in sorted(born):
                with contextlib.suppress(ProcessLookupError):  # exited already
                    for path in paths:
                        self.files.write(path, str(member))
            moved |= born
            born = self.pids() - moved

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This thread inside the group's freezer (and pids group, and cpuset: :meth:`_entering`)
        while the block runs, so that a process spawned there begins inside: it can neither fork
        past a kill nor past its process limit, nor run on a core it did not claim. The thread
        is back in the agent's own groups after, whatever happened. Only the calling thread moves
        (v1 ``tasks``). The process joins the other hierarchies right after its start
        (:meth:`join`): the memory group is never entered by the thread, so that no page the agent
        touches meanwhile is charged to the attempt; CPU accounting and weight miss the
        microseconds before the join, and each migration of the thread in and out costs the
        agent two writes per hierarchy per start."""
        assert self.mode == "cgroup-v1"
        tid = str(threading.get_native_id())
        write = self.files.write
        left: list[str] = []
        try:
            for controller in self._entering():
                inside, home = self._tasks[controller]
                write(inside, tid)
                left.append(home)
            yield
        finally:
            for home in left:  # a failure here leaves the thread inside: pids() says so
                write(home, tid)

    def pids(self) -> set[int]:
        """Every process in the group now, never the agent's own. One file is enough, the
        freezer's (the first hierarchy): an attempt's process is in it from its start
        (:meth:`entered`; a fork inherits it), and :meth:`add` writes the first hierarchy first
        and stops at a refusal."""
        mine = os.getpid()
        # opened anew: through a descriptor kept open, v1 shows a list cached for up to a second
        text = _read(self.procs_files[0])
        return {int(p) for p in text.split() if p.isdigit() and int(p) != mine}

    def _counters(self) -> tuple[_Counters, int]:
        """The cumulative CPU seconds and out-of-memory kills, and the peak memory (since the
        group was made or its peak last reset)."""
        read = self.files.read
        cpu_file, peak_file, oom_file, _ = self._counter_files
        oom = _number(_pairs(read(oom_file)).get("oom_kill", ""))
        peak = _number(read(peak_file))
        if self.mode == "cgroup-v1":
            cpu = _number(read(cpu_file)) / 1e9
        else:
            cpu = _number(_pairs(read(cpu_file)).get("usage_usec", "")) / 1e6
        return _Counters(cpu, oom), peak

    def _none_counted(self) -> bool:
        """Whether the pids controller counts no process in the group (a counter read through a
        descriptor kept open, where :meth:`pids` opens the member list anew; a process that has
        exited and is not yet reaped is still counted, so False is not proof of a member)."""
        return bool(self._count_file) and _number(self.files.read(self._count_file, "1")) == 0

    def charged(self) -> int:
        """Bytes the memory group is charged with now."""
        return _number(self.files.read(self._counter_files[3]))

    def usage(self) -> Usage:
        """What the attempt used so far: CPU seconds, peak memory, whether memory ran out."""
        return self._since_start(*self._counters())

    def _since_start(self, now: _Counters, peak: int) -> Usage:
        return Usage(
            cpu_seconds=max(0.0, now.cpu_seconds - self.start.cpu_seconds),
            peak_memory_bytes=peak,
            oom_killed=now.oom_kills > self.start.oom_kills,
        )

    async def kill(self) -> bool:
        """SIGKILL every process in the group, forks made meanwhile included; returns once it is
        empty (True), or after :data:`SETTLE` seconds (False: some still is)."""
        if not self.pids():
            return True
        if self.mode == "cgroup-v2":
            kill = self.dirs[""] / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    _write(kill, "1")
            else:
                await self._freeze_and_kill(self.dirs[""] / "cgroup.freeze", "1", "0")
        else:
            await self._freeze_and_kill(self.dirs["freezer"] / "freezer.state", "FROZEN", "THAWED")
        return await _until(lambda: not self.pids(), SETTLE)

    async def _freeze_and_kill(self, state: Path, frozen: str, thawed: str) -> None:
        with contextlib.suppress(OSError):
            _write(state, frozen)
        if self.mode == "cgroup-v1":  # FREEZING until every member stopped
            await _until(lambda: _read(state).strip() == frozen, SETTLE)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            _write(state, thawed)  # the kills are delivered once the members run again

    async def remove(self) -> Usage:
        """The attempt is over: kill what is left, and give the group back (:meth:`release`);
        returns what the attempt used. :attr:`emptied` says whether every process was gone."""
        empty = self._none_counted() or not self.pids() or await self.kill()
        self.emptied = empty
        return self.release(empty=empty)

    def release(self, *, empty: bool = False) -> Usage:
        """Give back the group of an attempt whose processes are all gone (to its hierarchy's
        pool, or removed; ``empty``: found so just now, not read again); returns what the
        attempt used."""
        now, peak = self._counters()
        used = self._since_start(now, peak)
        if self.owner is None or (not empty and self.pids()) or not self.owner.recycle(self, now, peak):
            self.discard()
        return used

    def discard(self) -> None:
        """Remove the directories (of an empty group)."""
        for directory in self.dirs.values():
            self.files.close(directory)
            with contextlib.suppress(OSError):
                directory.rmdir()


class Hierarchy:
    """Where the agent makes its attempts' cgroups: ``bases`` maps each v1 controller (or ``""``
    for v2) to the agent's ``fed-<node>`` directory in it; empty groups wait in a pool for the
    next attempt (see the module's notes)."""

    def __init__(self, mode: Mode, bases: dict[str, Path], weight: str | None = None) -> None:
        self.mode = mode
        self.bases = bases
        # where a v1 attempt's cpu.shares is written: "cpu" (its own hierarchy), "cpuacct"
        # (co-mounted with it), None (not mounted: no weight); v2 writes cpu.weight
        self.weight = weight
        self._memsw: bool | None = None
        self.files = _Files()
        self._free: dict[bool, list[Group]] = {False: [], True: []}  # by: has claimed cores
        self._made = 0

    def __repr__(self) -> str:
        return f"Hierarchy({self.mode}, {self.bases})"

    def attempt(self, limits: Limits) -> Group:
        """An empty cgroup for one attempt, with ``limits`` (OSError if the kernel refuses).

        On v1 an attempt gets a cpuset group only with claimed cores (else it stays in the
        agent's cpuset), and a cpu group (its weight) only without them: each attempt one of the
        two, never both."""
        pinned = bool(limits.cores)
        if self._free[pinned]:
            # a reused group that takes no new limit (one below what it is still charged with,
            # say) is removed, and a new one made
            with contextlib.suppress(OSError):
                return self._limited(self._free[pinned].pop(), limits)
        return self._limited(self._make(pinned), limits)

    def _limited(self, group: Group, limits: Limits) -> Group:
        """``group`` with ``limits`` written (removed if the kernel refuses one: OSError)."""
        try:
            self._limit(group, limits)
        except OSError:
            group.discard()
            raise
        group.limits = limits
        return group

    def _make(self, pinned: bool) -> Group:
        self._made += 1
        name = f"slot-{self._made}"
        dirs = {
            controller: base / name
            for controller, base in self.bases.items()
            if (controller != "cpuset" or pinned) and (controller != "cpu" or not pinned)
        }
        try:
            for directory in dirs.values():
                directory.mkdir(exist_ok=True)
        except OSError:
            for directory in dirs.values():
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        return Group(self.mode, dirs, {c: self.bases[c].parent for c in dirs}, self.files, self)

    def recycle(self, group: Group, counters: _Counters, peak: int) -> bool:
        """Put an emptied group back into the pool, its peak reset and its ``counters`` (read
        just now) kept as the next attempt's start; False when it cannot be reused (then it is
        removed). What it is still charged with is read only when its ``peak`` (read just now, at
        least that) is above :data:`RESIDUE`."""
        if peak > RESIDUE and group.charged() > RESIDUE:
            return False
        peak_file = group._counter_files[1]
        try:
            if self.mode == "cgroup-v1":
                self.files.write(peak_file, "0")  # the kernel sets it to what is charged now
            else:  # the reset counts for reads through this descriptor (usage() reads through it)
                self.files.both(peak_file)
                self.files.write(peak_file, "reset")
        except OSError:
            return False  # (v2: a kernel before 6.12, whose peak cannot be reset)
        group.start = counters
        self._free[bool(group.limits and group.limits.cores)].append(group)
        return True

    def _limit(self, group: Group, limits: Limits) -> None:
        """Write what differs from the group's present limits (all of them into a new group)."""
        was = group.limits or Limits()
        d = group.dirs
        if self.mode == "cgroup-v1":
            if "cpuset" in d and limits.cores != was.cores:
                if not was.cores:  # a v1 cpuset takes no task until it has cpus and mems
                    _write(d["cpuset"] / "cpuset.mems", _read(self.bases["cpuset"] / "cpuset.mems").strip())
                _write(d["cpuset"] / "cpuset.cpus", ",".join(map(str, limits.cores)))
            if limits.memory != was.memory:
                self._memory_v1(d["memory"], limits.memory, was.memory)
            if limits.processes != was.processes:
                _write(d["pids"] / "pids.max", str(limits.processes) if limits.processes else "max")
            if self.weight in d and limits.cpus != was.cpus and not limits.cores:
                _write(d[self.weight] / "cpu.shares", str(1024 * max(1, limits.cpus)))  # 1024: one core
            return
        v2 = d[""]
        if limits.cores != was.cores and limits.cores and (v2 / "cpuset.cpus").exists():
            _write(v2 / "cpuset.cpus", ",".join(map(str, limits.cores)))
        if limits.memory != was.memory and (v2 / "memory.max").exists():
            _write(v2 / "memory.max", str(limits.memory) if limits.memory else "max")
            if not was.memory and (v2 / "memory.swap.max").exists():
                with contextlib.suppress(OSError):
                    _write(v2 / "memory.swap.max", "0")
        if limits.processes != was.processes and (v2 / "pids.max").exists():
            _write(v2 / "pids.max", str(limits.processes) if limits.processes else "max")
        if limits.cpus != was.cpus and not limits.cores and (v2 / "cpu.weight").exists():
            _write(v2 / "cpu.weight", str(min(10_000, 100 * max(1, limits.cpus))))  # 100: one core

    def _memory_v1(self, memory: Path, limit: int, was: int) -> None:
        """Set a v1 memory limit (``-1``: none), and the same for memory and swap together where
        swap is accounted (no escape into swap). The kernel keeps memory+swap at least memory:
        a raised limit is written memory+swap first, a lowered one memory first."""
        value = str(limit) if limit else "-1"
        memsw = memory / "memory.memsw.limit_in_bytes"
        if self._memsw is None:  # swap accounting is a boot option: looked up once
            self._memsw = memsw.exists()
        raised = not limit or (was and limit > was)
        if self._memsw and raised:
            with contextlib.suppress(OSError):
                _write(memsw, value)
        _write(memory / "memory.limit_in_bytes", value)
        if self._memsw and not raised:
            with contextlib.suppress(OSError):
                _write(memsw, value)

    def existing(self, name: str) -> Group | None:
        """The attempt cgroup ``name`` if a previous life of the agent left it (removed, not
        pooled, once emptied)."""
        dirs = {controller: base / name for controller, base in self.bases.items()}
        if not any(directory.is_dir() for directory in dirs.values()):
            return None
        found = {c: d for c, d in dirs.items() if d.is_dir()}
        return Group(self.mode, found, {c: self.bases[c].parent for c in found}, self.files)

    def close(self) -> None:
        """Remove the pooled groups and the agent's own ``fed-<node>`` directories (once no
        attempt group is left)."""
        for pool in self._free.values():
            while pool:
                pool.pop().discard()
        self.files.close()
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                base.rmdir()

    def leftovers(self) -> list[str]:
        """Names of attempt cgroups that exist now (at start: a previous life's)."""
        names: set[str] = set()
        for base in self.bases.values():
            names.update(p.name for p in base.iterdir() if p.is_dir())
        return sorted(names)


def agent_name(node: str, state_dir: Path) -> str:
    """What an agent's groups are named after (``fed-<this>``): its node and a hash of its state
    directory, so that two agents of one node name on a host (two test federations, say) never
    share, and an agent restarted on the same state finds its own."""
    return f"{node}-{state_tag(state_dir)}"


def state_tag(state_dir: Path) -> str:
    """The part of :func:`agent_name` that comes from the state directory."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def detect(node: str, root: Path = Path("/proc/self")) -> Hierarchy | None:
    """The hierarchy this process may make attempt cgroups in (None: none is writable).

    ``root`` is where ``mountinfo`` and ``cgroup`` are read (``/proc/self``; a test passes a
    directory laid out like it).
    """
    mounts = _mounts(_read(root / "mountinfo"))
    own = _own(_read(root / "cgroup"))
    name = f"fed-{node}"
    if "" in mounts and "" in own:
        unified = mounts[""] / own[""].lstrip("/")
        available = set(_read(unified / "cgroup.controllers").split())
        if set(V2_CONTROLLERS) - {"cpuset"} <= available:
            with contextlib.suppress(OSError):
                return _v2(unified, name, available)
    if all(c in mounts and c in own for c in V1_CONTROLLERS):
        bases = {c: mounts[c] / own[c].lstrip("/") / name for c in V1_CONTROLLERS}
        try:
            for controller, base in bases.items():
                base.mkdir(exist_ok=True)
                if controller == "cpuset":  # a v1 cpuset takes no task until it has cpus and mems
                    for key in ("cpuset.cpus", "cpuset.mems"):
                        if not _read(base / key).strip():
                            _write(base / key, _read(base.parent / key).strip())
        except OSError:
            return None
        return Hierarchy("cgroup-v1", bases, _v1_weight(mounts, own, name, bases))
    return None


def _v1_weight(mounts: dict[str, Path], own: dict[str, str], name: str, bases: dict[str, Path]) -> str | None:
    """Where v1 CPU weights go (see :class:`Hierarchy`); adds the ``cpu`` base when it has its own
    mount. Optional: without it, unpinned attempts share the CPU unweighted."""
    if "cpu" not in mounts or "cpu" not in own:
        return None
    if mounts["cpu"] == mounts.get("cpuacct"):
        return "cpuacct"
    base = mounts["cpu"] / own["cpu"].lstrip("/") / name
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return None
    bases["cpu"] = base
    return "cpu"


def _v2(unified: Path, name: str, available: set[str]) -> Hierarchy:
    # v2 lets a cgroup hand controllers to its children only while it holds no process itself:
    # the agent (and whatever shares its cgroup, e.g. its systemd unit with Delegate=yes) moves
    # into a leaf of its own first
    members = _read(unified / "cgroup.procs").split()
    if members:
        leaf = unified / "fed-agent"
        leaf.mkdir(exist_ok=True)
        for pid in members:
            with contextlib.suppress(OSError):  # gone meanwhile
                _write(leaf / "cgroup.procs", pid)
    base = unified / name
    base.mkdir(exist_ok=True)
    wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in available)
    _write(unified / "cgroup.subtree_control", wanted)
    _write(base / "cgroup.subtree_control", wanted)
    return Hierarchy("cgroup-v2", {"": base})


def _mounts(mountinfo: str) -> dict[str, Path]:
    """Mount point of each v1 controller (and ``""``: the v2 hierarchy), when mounted at its root."""
    out: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or fields[3] != "/":
            continue
        if tail[0] == "cgroup2":
            out[""] = Path(fields[4])
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                if option in V1_CONTROLLERS or option in V1_OPTIONAL:
                    out[option] = Path(fields[4])
    return out


def _own(cgroup: str) -> dict[str, str]:
    """This process's cgroup path per v1 controller (and ``""`` for v2), from ``/proc/self/cgroup``."""
    out: dict[str, str] = {}
    for line in cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


# Blocks on its stdin (the gate) until the agent has moved it into its cgroup and written a line,
# takes /dev/null as stdin instead, checks (one read of /proc/self/cgroup, no fork) that it is in
# the group, then execs the workload; exits 126 if it is not (the agent died first). $0 is the
# pattern of the line.
GATE_SCRIPT = (
    "read -r _; exec 0</dev/null; "
    'while read -r line; do case "$line" in $0) exec "$@";; esac; done < /proc/self/cgroup; '
    "echo 'fed: the attempt never joined its cgroup' >&2; exit 126"
)


def prefix(group: Group) -> list[str]:
    """The command prefix that holds the workload until the agent has put it into ``group``
    (:meth:`Group.add`, right after the start) and written a line to its stdin (a pipe: the gate),
    then execs it with /dev/null as stdin: nothing it runs or forks is ever outside. The agent
    still starts it with ``posix_spawn``; the child blocks without spinning and needs no right of its
    own (no write: it also works as another user and under Landlock)."""
    return ["/bin/sh", "-c", GATE_SCRIPT, group.pattern]


async def _until(predicate: Callable[[], bool], deadline: float) -> bool:
    """Poll ``predicate`` every 10 ms until it holds or ``deadline`` seconds pass."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not predicate():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)  # sleep-ok: the kernel settles a freeze or an exit asynchronously
    return True


__all__ = ["Group", "Hierarchy", "Limits", "Usage", "agent_name", "detect", "prefix", "state_tag"]
