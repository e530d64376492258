"""Run one workload attempt as a real process, and make sure all of it ends.

Each attempt gets: a private 0700 working directory (:mod:`agents.workdirs`: removed afterwards, or,
left as it was found, handed to a later attempt); an environment built
from an allowlist of the agent's variables plus the job's own ``env`` and ``FED_JOB_ID``,
``FED_ATTEMPT``, ``CUDA_VISIBLE_DEVICES`` (exactly the claimed GPU ids, empty when none) and
``TRACEPARENT``; CPU affinity equal to exactly the claimed cores when the node's cores are real;
its own session and process group, so stopping it (SIGTERM, then SIGKILL after a grace period)
and cleaning up after it reach every process it started. Output (stdout and stderr merged) is
handed to a callback in chunks, up to a bound; the rest is counted and dropped
(:mod:`agents.output`). The process is
started by :mod:`agents.spawning` (``posix_spawn`` unless something must run between fork and exec).

The :class:`Sandbox` confines it further: it runs as an unprivileged user (its working directory
is that user's; the agent's state and credentials are not), argv only (a shell only when the job
itself runs ``sh -c``), under resource limits (address space, CPU time, processes, file size, open
files) that the kernel enforces on every process it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from agents import cgroups, landlock, spawning
from agents.cgroups import Group, Hierarchy, Limits, Usage
from agents.offloop import OffLoop
from agents.output import Output, Sink
from agents.workdirs import WorkDirs

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
OUTPUT_DRAIN = 2.0  # seconds to finish reading output once the process group is gone

OutputSink = Sink
EXECUTABLES = spawning.Executables()  # where commands are, looked up in a job's PATH (process-wide)


MIN_ENTER_PROCESSES = 4  # a v1 pids limit below this keeps the gate (the agent's thread counts)


class _Child:
    """A started process, reaped by the event loop through its pidfd (no child watcher, no thread):
    its exit code, and what its process tree used (``wait4``: itself and every descendant it
    waited for)."""

    def __init__(self, started: spawning.Started, loop: asyncio.AbstractEventLoop) -> None:
        self.started = started
        self.pid = started.pid
        self.returncode: int | None = None
        self.rusage: resource.struct_rusage | None = None
        self.exited = asyncio.Event()
        self._watchers: list[asyncio.Future[bool]] = []  # exited_within's, told at the exit
        self._loop = loop
        self._pidfd = os.pidfd_open(self.pid)  # before the loop runs again: it cannot be reaped yet
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: as asyncio reports it
            pid, code, usage = self.pid, 255, None
        else:
            if pid == 0:
                return  # not yet
            code = os.waitstatus_to_exitcode(status)
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = code
        self.started.exited(code)
        self.rusage = usage
        self.exited.set()
        for watcher in self._watchers:
            if not watcher.done():
                watcher.set_result(True)
        self._watchers.clear()

    def _time_up(self, watcher: asyncio.Future[bool]) -> None:
        if watcher.done():
            return
        if self.returncode is None:  # an exit not yet seen by the loop (uvloop runs timers first)
            self._reap()
        if not watcher.done():
            watcher.set_result(self.returncode is not None)

    async def exits_within(self, seconds: float) -> bool:
        """Whether the process exits within ``seconds`` (a timer and a future: no timeout scope,
        no task; its exit seen in the turn the time ran out still counts)."""
        if self.returncode is not None:
            return True
        watcher: asyncio.Future[bool] = self._loop.create_future()
        self._watchers.append(watcher)
        timer = self._loop.call_later(seconds, self._time_up, watcher)
        try:
            return await watcher
        finally:
            timer.cancel()
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def kill(self) -> None:
        """SIGKILL the process itself (not yet reaped)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class LaunchError(Exception):
    """The command could not be started (not found, not executable, bad cwd)."""


@dataclass(frozen=True, slots=True)
class Sandbox:
    """Who a workload runs as and its limits (``resource.RLIMIT_*`` -> value; absent: unchanged).

    ``tools`` are util-linux's ``setpriv`` and ``prlimit`` when the host has them: the workload is
    then started through them (switch user, set limits, exec the command), so the agent itself
    starts it with ``posix_spawn`` (:mod:`agents.spawning`), at a small fraction of the agent's CPU
    per start of doing the same in a ``preexec_fn`` after a full fork (the fallback).
    """

    uid: int | None = None
    gid: int | None = None
    limits: Mapping[int, int] = field(default_factory=dict)
    tools: tuple[str, str] | None = None
    taskset: str | None = None  # util-linux's taskset: CPU affinity without a preexec_fn
    confine_writes: bool = False  # Landlock: the workload changes files only in its working directory
    cgroups: Hierarchy | None = None  # one cgroup per attempt (agents.cgroups), where the host allows
    memory: int = 0  # this attempt's cgroup memory limit in bytes (0: none)
    processes: int = 0  # this attempt's cgroup process limit (0: none)
    cpus: int = 0  # the cores this attempt asked for: its cgroup's CPU weight when unpinned

    @property
    def by_tools(self) -> bool:
        """Whether the tools apply the user and the limits (else the child does, after a fork)."""
        return self.tools is not None and (self.uid is not None or bool(self.limits))

    def prefix(self, cores: Collection[int] | None = None) -> list[str]:
        """The argv that applies the sandbox and the CPU affinity before the command (empty:
        nothing to apply, or the tools are missing)."""
        argv: list[str] = []
        if cores and self.taskset:
            argv = [self.taskset, "-c", ",".join(str(core) for core in sorted(cores))]
        if not self.by_tools:
            return argv
        assert self.tools is not None
        setpriv, prlimit = self.tools
        pin, argv = argv, []
        if self.uid is not None:
            gid = self.gid if self.gid is not None else self.uid
            argv += [setpriv, f"--reuid={self.uid}", f"--regid={gid}", "--clear-groups", "--"]
        if self.limits:
            argv.append(prlimit)
            argv += [f"--{PRLIMIT_FLAGS[name]}={soft}:{hard}" for name, (soft, hard) in _pairs(self.limits)]
            argv.append("--")
        return argv + pin


def sandbox_tools() -> tuple[str, str] | None:
    """util-linux's ``setpriv`` and ``prlimit`` if both are installed."""
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    return (setpriv, prlimit) if setpriv and prlimit else None


def _pairs(limits: Mapping[int, int]) -> list[tuple[int, tuple[int, int]]]:
    """(soft, hard) per resource: CPU gets SIGXCPU at the soft limit and SIGKILL one second later
    (equal limits would SIGKILL at once and hide the cause)."""
    return [
        (name, (value, value + 1 if name == resource.RLIMIT_CPU else value)) for name, value in limits.items()
    ]


PRLIMIT_FLAGS = {
    resource.RLIMIT_AS: "as",
    resource.RLIMIT_CPU: "cpu",
    resource.RLIMIT_NPROC: "nproc",
    resource.RLIMIT_FSIZE: "fsize",
    resource.RLIMIT_NOFILE: "nofile",
}


LIMIT_SIGNALS: dict[int, str] = {
    int(signal.SIGXCPU): "its CPU time limit",
    int(signal.SIGXFSZ): "its file size limit",
}


def rlimits(
    address_space: int, cpu_time: int, processes: int, file_size: int, open_files: int
) -> dict[int, int]:
    """The limits to set, by resource (0: left as the agent has it)."""
    wanted = {
        resource.RLIMIT_AS: address_space,
        resource.RLIMIT_CPU: cpu_time,
        resource.RLIMIT_NPROC: processes,
        resource.RLIMIT_FSIZE: file_size,
        resource.RLIMIT_NOFILE: open_files,
    }
    return {name: value for name, value in wanted.items() if value > 0}


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to run and with which claimed devices."""

    job: str
    attempt: int
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cores: Sequence[int] = ()
    gpus: Sequence[str] = ()
    pinned: bool = False
    traceparent: str = ""
    keep_workdir: bool = False  # its directory outlives the run (its outputs are stored first)


@functools.cache
def _agent_environment() -> dict[str, str]:
    """The agent's allowlisted variables, read once (``os.environ`` is slow to read per start, and
    the agent's own environment does not change)."""
    return {key: os.environ[key] for key in ENV_ALLOWLIST if key in os.environ}


def build_env(spec: RunSpec, base: Mapping[str, str], workdir: str) -> dict[str, str]:
    """The workload's environment: ``base`` (the agent's allowlisted variables,
    :func:`_agent_environment`), the job's env, the federation's."""
    env = dict(base)
    env.update(spec.env)
    env.update(
        HOME=workdir,
        FED_JOB_ID=spec.job,
        FED_ATTEMPT=str(spec.attempt),
        FED_WORKDIR=workdir,
        CUDA_VISIBLE_DEVICES=",".join(spec.gpus),
    )
    if spec.pinned and spec.cores:
        env["FED_CPUS"] = ",".join(str(c) for c in spec.cores)
    if spec.traceparent:
        env["TRACEPARENT"] = spec.traceparent
    return env


class Run:
    """A started attempt: its process group, its output and exit status."""

    def __init__(
        self,
        spec: RunSpec,
        child: _Child,
        workdir: Path,
        output: Output,
        dirs: WorkDirs,
        group: Group | None = None,
    ):
        self.spec = spec
        self.child = child
        self._output = output  # the read end of its output pipe, forwarded as it comes
        self.workdir = workdir
        self._dirs = dirs
        self.group = group  # its cgroup: every process it forks, setsid or not (None once given back)
        self.contained = group is not None
        # its cgroup was found empty once it was over: nothing of it lives on, and only then may its
        # directory serve another attempt
        self.emptied = False
        self._used: Usage | None = None  # what its cgroup counted, once the attempt is over
        self._group_lock = asyncio.Lock()  # a stop's kill and the group's release, one at a time
        self.stopping = False

    @property
    def usage(self) -> Usage | None:
        """What the attempt used, from its cgroup, else from its process tree's ``wait4`` (None when
        neither is known); final once it was waited for."""
        if self._used is not None:
            return self._used
        if self.group is not None:
            return self.group.usage()
        tree = self.child.rusage
        if tree is None:
            return None
        cpu = tree.ru_utime + tree.ru_stime
        return Usage(cpu_seconds=cpu, peak_memory_bytes=tree.ru_maxrss * 1024)  # maxrss: KiB

    @property
    def measured_by(self) -> str:
        """Where :attr:`usage` comes from: ``cgroup``, ``rusage`` (the process tree), or ``""``."""
        return "cgroup" if self.contained else "rusage" if self.child.rusage is not None else ""

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, signal.SIGKILL)

    @property
    def pid(self) -> int:
        """The pid of the workload's process group leader."""
        return self.child.pid

    async def _exited(self) -> int:
        """The main process's exit code, as soon as it exits (whoever still holds its output
        pipe: a setsid child could hold it for ever)."""
        await self.child.exited.wait()
        assert self.child.returncode is not None
        return self.child.returncode

    async def exited_within(self, seconds: float) -> bool:
        """Whether the main process exits within ``seconds`` (it is not waited for beyond)."""
        return await self.child.exits_within(seconds)

    async def wait(self) -> int:
        """Wait for the process and its output; returns the exit code (negative: killed by signal)."""
        code = await self._exited()
        # leave nothing of the attempt behind, what left the process group too: its cgroup is
        # emptied, measured and given back here (before the output drains: an escapee may hold
        # the pipe); the group may serve another attempt from then on, so it is forgotten here
        if self.contained:
            async with self._group_lock:
                if self.group is not None:
                    group, self.group = self.group, None
                    self._used = await group.remove()
                    self.emptied = group.emptied
        else:
            self._kill_group()
        # a process that left the group (setsid) may still hold the output pipe: it does not keep
        # the attempt open; its output after this point is dropped (a failure to forward output
        # is the attempt's failure)
        try:
            await self._output.finish(OUTPUT_DRAIN)
        finally:
            if not self.spec.keep_workdir:
                self._dirs.give_back(self.workdir, contained=self.emptied)
        return code

    async def stop(self, grace: float) -> None:
        """SIGTERM every process of the attempt (its cgroup, else its process group), SIGKILL
        whatever is left after ``grace`` seconds."""
        self.stopping = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, signal.SIGTERM)
        for pid in self.group.pids() if self.group is not None else ():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self._exited())
        except TimeoutError:  # SIGKILL every process of the attempt: its cgroup, else its group
            async with self._group_lock:  # (not once given back: it may hold another attempt then)
                if self.group is not None:
                    await self.group.kill()
            self._kill_group()


@dataclass(frozen=True)
class Prepared:
    """What an attempt needs before its process starts: its working directory, its environment,
    its cgroup (None without one), the cores to pin it to by affinity (None when a cpuset pins
    it or nothing does), and the executable its command runs."""

    workdir: Path
    env: dict[str, str]
    group: Group | None
    cores: set[int] | None
    gated: bool = False  # it waits behind the gate until put into its cgroup (else starts inside)
    executable: str = ""

    def discard(self, dirs: WorkDirs, *, ran: bool = False) -> None:
        """Undo :func:`make_workdir` and :func:`prepare` for an attempt that will not start
        (``ran``: a process of it may have started, and something it forked live on)."""
        dirs.give_back(self.workdir, contained=not ran)
        if self.group is not None:
            self.group.release()


def make_workdir(dirs: WorkDirs, sandbox: Sandbox = Sandbox(), staged: Path | None = None) -> Path:
    """The attempt's private working directory (blocking: the agent's worker thread takes it, in
    the same batch as the journal line of the attempt); ``staged`` is one taken already, with
    the job's inputs in it, which become the workload's own."""
    if staged is None:
        return dirs.take()
    if sandbox.uid is not None:
        owner = (sandbox.uid, sandbox.gid if sandbox.gid is not None else -1)
        for path in (staged, *staged.iterdir()):
            os.chown(path, *owner)
    return staged


def prepare(spec: RunSpec, workdir: Path, sandbox: Sandbox, dirs: WorkDirs) -> Prepared:
    """The attempt's environment and cgroup; raises :class:`LaunchError` if it cannot start
    (having given ``workdir`` back). The cgroup's are short in-memory kernel calls: on the loop."""
    env = build_env(spec, _agent_environment(), str(workdir))
    env["TMPDIR"] = str(workdir)
    cores = set(spec.cores) if spec.pinned and spec.cores else None
    group = None
    if sandbox.cgroups is not None:  # the cpuset pins it; the limits are the cgroup's
        bounds = Limits(
            sandbox.memory, sandbox.processes, tuple(sorted(cores)) if cores else (), sandbox.cpus
        )
        try:
            group = sandbox.cgroups.attempt(bounds)
        except OSError as exc:
            dirs.give_back(workdir, contained=True)
            raise LaunchError(f"cannot make the attempt's cgroup: {exc}") from None
        cores = None
    gated = group is not None and not _starts_inside(group, sandbox)
    executable = EXECUTABLES.find(spec.command[0], env.get("PATH"), str(workdir))
    prepared = Prepared(workdir, env, group, cores, gated, executable or "")
    if executable is None:  # (a wrapper would report it only as an exit code)
        prepared.discard(dirs)
        raise LaunchError(f"cannot start {spec.command[0]!r}: not found or not executable")
    return prepared


async def start(
    spec: RunSpec,
    work_root: Path,
    sink: OutputSink,
    max_output: int,
    sandbox: Sandbox = Sandbox(),
    dirs: WorkDirs | None = None,
) -> Run:
    """Take the attempt's directory (under ``work_root``, or from ``dirs``, whose owner is then the
    one directories get), prepare and launch the attempt; raises :class:`LaunchError` when it
    cannot start."""
    if dirs is None:
        owner = None if sandbox.uid is None else (sandbox.uid, -1 if sandbox.gid is None else sandbox.gid)
        dirs = WorkDirs(work_root, OffLoop(), owner, keep=False)  # (nobody would take a kept one)
    workdir = await dirs.disk.call(partial(make_workdir, dirs, sandbox))
    return await launch(spec, prepare(spec, workdir, sandbox, dirs), sink, max_output, sandbox, dirs)


async def launch(
    spec: RunSpec,
    prepared: Prepared,
    sink: OutputSink,
    max_output: int,
    sandbox: Sandbox,
    dirs: WorkDirs,
) -> Run:
    """Start the prepared attempt's process; raises :class:`LaunchError` when it cannot start
    (having undone ``prepared``)."""
    workdir, env, group, cores = prepared.workdir, prepared.env, prepared.group, prepared.cores
    # v1: the process starts inside its groups (Group.entered); otherwise the gate holds it
    gate = os.pipe() if prepared.gated else None
    prefix = (cgroups.prefix(group) if group is not None and gate else []) + sandbox.prefix(cores)
    # without the tools, the child applies the sandbox and the affinity itself, between fork and exec
    limits = _pairs(sandbox.limits) if not sandbox.by_tools else []
    switch = sandbox.uid is not None and not sandbox.by_tools
    if sandbox.taskset and cores:
        cores = None  # taskset pins it
    confine = str(workdir) if sandbox.confine_writes else None

    def in_child() -> None:  # runs between fork and exec, after the switch to the sandbox's user
        if confine is not None:  # first: nothing after it (setpriv, prlimit) needs to write
            landlock.confine_writes(confine)
        for name, pair in limits:
            resource.setrlimit(name, pair)
        if cores is not None:
            os.sched_setaffinity(0, cores)

    loop = asyncio.get_running_loop()
    argv = [*prefix, *spec.command]
    # (a user switch without the tools is Popen's, after a full fork)
    switch_to: dict[str, Any] | None = (
        {"user": sandbox.uid, "group": sandbox.gid, "extra_groups": []} if switch else None
    )
    try:
        started = _spawn(
            argv,
            argv[0] if prefix else prepared.executable,
            str(workdir),
            env,
            gate[0] if gate else None,
            in_child if cores is not None or limits or confine else None,
            switch_to,
            None if gate else group,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        _close(gate)
        prepared.discard(dirs, ran=True)  # (started, then failed to join its groups, say)
        raise LaunchError(f"cannot start {spec.command[0]!r}: {exc}") from None
    child = _Child(started, loop)
    try:
        if gate is not None:  # (v2) into every group, then the gate lets it exec
            assert group is not None
            group.add(child.pid)
            os.write(gate[1], b"\n")
    except OSError as exc:
        child.kill()
        await child.exited.wait()
        assert group is not None
        os.close(started.output)
        await group.remove()
        dirs.give_back(workdir, contained=group.emptied)  # (its process was killed, its group emptied)
        raise LaunchError(f"cannot put the attempt into its cgroup: {exc}") from None
    finally:
        if gate is not None:
            os.close(gate[0])
            os.close(gate[1])
    return Run(spec, child, workdir, Output(started.output, sink, max_output, loop), dirs, group)


def _spawn(
    argv: list[str],
    executable: str,
    cwd: str,
    env: dict[str, str],
    stdin: int | None,
    preexec: Callable[[], None] | None,
    switch_to: dict[str, Any] | None,
    inside: Group | None,
) -> spawning.Started:
    """Start the process (:func:`agents.spawning.start`: a posix_spawn, or a fork for a
    ``preexec``), on the loop on purpose: the start inside ``inside``'s groups must not let the
    loop run meanwhile."""

    def go() -> spawning.Started:
        return spawning.start(
            argv, executable, cwd=cwd, env=env, stdin=stdin, preexec=preexec, popen_options=switch_to
        )

    if inside is None:
        return go()
    started: spawning.Started | None = None
    try:
        with inside.entered():  # the process begins where this thread is: inside
            started = go()
            try:  # and joins the others at once, before this thread leaves its freezer
                inside.join(started.pid)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot put the attempt into its cgroups: {exc}") from None
    except OSError:
        if started is not None:  # started, but not wholly in its groups (or this thread could not leave them)
            with contextlib.suppress(ProcessLookupError):
                os.kill(started.pid, signal.SIGKILL)
            os.waitpid(started.pid, 0)
            started.exited(-signal.SIGKILL)
            os.close(started.output)
        raise
    return started


def _starts_inside(group: Group, sandbox: Sandbox) -> bool:
    """Whether the attempt's process starts inside ``group`` (:meth:`Group.entered`, v1 only),
    else behind the gate: its process limit must leave room for the agent's thread, which is
    counted while it is inside."""
    return group.mode == "cgroup-v1" and (not sandbox.processes or sandbox.processes >= MIN_ENTER_PROCESSES)


def _close(gate: tuple[int, int] | None) -> None:
    for fd in gate or ():
        with contextlib.suppress(OSError):
            os.close(fd)
