"""Starting a workload's process (agents.spawning): what the child gets, and where its executable is
found. Real processes, no NATS."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agents import runner, spawning
from agents.offloop import OffLoop
from agents.workdirs import WorkDirs

pytestmark = pytest.mark.timeout(60)


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start ``argv`` as the agent does (posix_spawn), wait, return its exit code and output."""
    executable = spawning.Executables().find(argv[0], os.environ["PATH"], str(cwd))
    assert executable is not None
    started = spawning.start(argv, executable, cwd=str(cwd), env=env or dict(os.environ), stdin=None)
    assert started.popen is None  # nothing to run between fork and exec: posix_spawn
    with os.fdopen(started.output, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(started.pid, 0)
    return os.waitstatus_to_exitcode(status), output


def _status(text: str, field: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith(f"{field}:"))


def test_the_child_runs_in_its_directory_in_its_own_session_with_default_signals(tmp_path: Path) -> None:
    here = os.getcwd()
    code, output = _run(["pwd"], tmp_path)
    assert (code, output.strip()) == (0, str(tmp_path))
    assert os.getcwd() == here  # the agent is back where it was
    code, output = _run(["cat", "/proc/self/status"], tmp_path)
    assert code == 0
    ignored = int(_status(output, "SigIgn"), 16)
    for restored in spawning.RESTORED:  # Python ignores them; a program expects them at default
        assert signal.getsignal(restored) == signal.SIG_IGN
        assert not ignored & (1 << (restored - 1))
    code, output = _run(["sh", "-c", "cut -d' ' -f6 /proc/$$/stat; echo $$"], tmp_path)
    sid, pid = output.split()
    assert sid == pid  # a session (and process group) of its own


def test_stdin_is_null_stderr_joins_stdout_and_only_std_descriptors_are_passed(tmp_path: Path) -> None:
    leaked = os.open(tmp_path, os.O_RDONLY)
    os.set_inheritable(leaked, True)  # as a descriptor the agent was started with
    sealed = spawning.seal_inherited()
    try:
        assert leaked in sealed
        assert not os.get_inheritable(leaked)
        script = "readlink /proc/$$/fd/0; echo out; echo err >&2; ls /proc/$$/fd"
        code, output = _run(["sh", "-c", script], tmp_path)
    finally:
        for fd in sealed:  # (this process's descriptors as they were)
            os.set_inheritable(fd, True)
        os.close(leaked)
    lines = output.split()
    assert code == 0
    assert lines[:3] == ["/dev/null", "out", "err"]
    assert sorted(lines[3:]) in (["0", "1", "2"], ["0", "1", "2", "255"])  # (255: sh's own)


def test_a_child_that_needs_a_preexec_is_forked_and_a_failed_start_leaves_the_agent_where_it_was(
    tmp_path: Path,
) -> None:
    here = os.getcwd()
    started = spawning.start(
        ["pwd"], "/bin/pwd", cwd=str(tmp_path), env=dict(os.environ), stdin=None, preexec=lambda: None
    )
    assert started.popen is not None  # the fallback: Popen after a full fork
    with os.fdopen(started.output, "rb") as pipe:
        assert pipe.read().decode().strip() == str(tmp_path)
    _, status = os.waitpid(started.pid, 0)
    started.exited(os.waitstatus_to_exitcode(status))
    assert started.popen.returncode == 0  # told, so Popen never waits for it itself
    with pytest.raises(FileNotFoundError):  # no such executable: posix_spawn says so
        spawning.start(["x"], str(tmp_path / "missing"), cwd=str(tmp_path), env={}, stdin=None)
    with pytest.raises(FileNotFoundError):  # no such directory
        spawning.start(["true"], "/bin/true", cwd=str(tmp_path / "gone"), env={}, stdin=None)
    assert os.getcwd() == here


def test_executables_are_found_in_the_jobs_path_relative_to_its_directory_and_looked_up_again(
    tmp_path: Path,
) -> None:
    now = [0.0]
    found = spawning.Executables(clock=lambda: now[0])
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
    tool = second / "tool"
    tool.write_text("#!/bin/sh\necho second\n")
    tool.chmod(0o755)
    path = f"{first}:{second}"
    assert found.find("tool", path, "/") == str(tool)
    newer = first / "tool"  # installed earlier in the PATH: taken once the found one has aged
    newer.write_text("#!/bin/sh\necho first\n")
    newer.chmod(0o755)
    assert found.find("tool", path, "/") == str(tool)
    now[0] += spawning.FOUND_FOR + 1
    assert found.find("tool", path, "/") == str(newer)
    newer.unlink()  # gone: checked at each use, and looked up again
    assert found.find("tool", path, "/") == str(tool)
    tool.chmod(stat.S_IRUSR)  # not executable any more
    assert found.find("tool", path, "/") is None
    tool.chmod(0o755)
    # a relative PATH entry and a name with a slash are relative to the attempt's directory
    assert found.find("tool", "second", str(tmp_path)) == str(tool)
    relative = found.find("./second/tool", path, str(tmp_path))
    assert relative is not None
    assert os.path.normpath(relative) == str(tool)
    assert found.find("missing", path, "/") is None
    assert found.find(str(first), path, "/") is None  # a directory is not an executable


async def test_a_missing_command_is_a_launch_error_and_its_directory_is_given_back(tmp_path: Path) -> None:
    spec = runner.RunSpec(job="j", attempt=1, command=["no-such-command-here"])
    dirs = WorkDirs(tmp_path / "work", OffLoop())

    async def sink(chunk: bytes) -> None:
        pass

    with pytest.raises(runner.LaunchError, match="not found or not executable"):
        await runner.start(spec, dirs.root, sink, 1024, dirs=dirs)
    await dirs.disk.drain()  # given back with the worker's next batch: nothing ran in it, it is kept
    assert len(dirs) == 1
    (kept,) = os.listdir(dirs.root)
    assert os.listdir(dirs.root / kept) == []
    await dirs.disk.call(dirs.close)
    assert os.listdir(dirs.root) == []


async def test_an_exit_counts_within_its_window_even_before_the_loop_saw_it(tmp_path: Path) -> None:
    dirs = WorkDirs(tmp_path / "work", OffLoop())

    async def sink(chunk: bytes) -> None:
        pass

    async def started(*command: str) -> runner.Run:
        spec = runner.RunSpec(job=command[0], attempt=1, command=list(command))
        return await runner.start(spec, dirs.root, sink, 1024, dirs=dirs)

    slow = await started("sleep", "5")
    assert not await slow.exited_within(0.05)
    await slow.stop(0.5)
    assert await slow.wait() == -signal.SIGTERM

    quick = await started("true")
    pid = quick.pid
    _until_a_zombie(pid)  # the loop is held meanwhile, so it cannot see the exit first
    watcher = asyncio.get_running_loop().create_future()
    quick.child._time_up(watcher)  # the window's timer, as it fires first in a uvloop turn
    assert watcher.result() is True
    assert await quick.exited_within(0.05)
    assert await quick.wait() == 0


def _until_a_zombie(pid: int) -> None:
    """Block (the caller's loop included) until process ``pid`` has exited, not yet reaped."""
    for _ in range(500):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return
        time.sleep(0.01)  # sleep-ok: waiting for the child to exit while the loop is held
    raise AssertionError(f"process {pid} did not exit")


WORKLOADS = """
import os, sys
from agents import spawning
from federation import cpupolicy
cpupolicy.enter_batch()
print(os.sched_getscheduler(0), cpupolicy.WORKLOAD_POLICY)
probe = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"]
for preexec in (None, lambda: None):  # posix_spawn, then the fallback's fork and exec
    started = spawning.start(
        probe, sys.executable, cwd="/", env=dict(os.environ), stdin=None, preexec=preexec
    )
    out = b""
    while chunk := os.read(started.output, 4096):
        out += chunk
    os.waitpid(started.pid, 0)
    print(out.decode().strip())
"""


def _policy(batch: bool) -> Callable[[], None]:
    def set_it() -> None:  # between fork and exec: whatever policy the test runner has
        policy = os.SCHED_BATCH if batch else os.SCHED_OTHER
        os.sched_setscheduler(0, policy, os.sched_param(0))

    return set_it


@pytest.mark.skipif(sys.platform != "linux", reason="scheduling policies are Linux's")
@pytest.mark.parametrize(
    ("setting", "start_batch", "expected"),
    [
        # a daemon: batch, its workloads (by posix_spawn and by the fallback) not
        (None, False, [f"{os.SCHED_BATCH} {os.SCHED_OTHER}", str(os.SCHED_OTHER), str(os.SCHED_OTHER)]),
        ("Normal", False, [f"{os.SCHED_OTHER} None", str(os.SCHED_OTHER), str(os.SCHED_OTHER)]),  # opt-out
        # started under a policy already: kept, and its workloads inherit it
        (None, True, [f"{os.SCHED_BATCH} None", str(os.SCHED_BATCH), str(os.SCHED_BATCH)]),
    ],
)
def test_a_daemon_enters_batch_unless_told_not_to_and_its_workloads_start_under_its_first_policy(
    setting: str | None, start_batch: bool, expected: list[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FED_CPU_POLICY"}
    if setting is not None:
        env["FED_CPU_POLICY"] = setting
    done = subprocess.run(
        [sys.executable, "-c", WORKLOADS],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_policy(start_batch),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_a_bad_cpu_policy_is_refused_with_what_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    from federation import cpupolicy
    from federation.errors import ConfigError

    monkeypatch.setenv("FED_CPU_POLICY", "fifo")
    with pytest.raises(ConfigError, match="batch, normal"):
        cpupolicy.enter_batch()
