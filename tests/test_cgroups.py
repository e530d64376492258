"""The cgroup file operations of agents/cgroups.py, against directories laid out like cgroupfs.

The v1 path also runs for real in tests/integration/test_isolation.py (this machine's hierarchy is
v1); the v2 path cannot be mounted here with controllers, so its reads and writes are checked
against a temporary directory shaped like a delegated v2 subtree.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path

import pytest

from agents import cgroups
from agents.cgroups import Limits


def _proc(tmp: Path, mountinfo: list[str], cgroup: list[str]) -> Path:
    proc = tmp / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text("\n".join(mountinfo) + "\n")
    (proc / "cgroup").write_text("\n".join(cgroup) + "\n")
    return proc


def _v1(tmp: Path, optional: tuple[str, ...] = ()) -> Path:
    """A v1 layout: one mount per controller, the agent in /agent.slice of the memory one."""
    mountinfo, cgroup = [], []
    for i, controller in enumerate(cgroups.V1_CONTROLLERS + optional):
        mount = tmp / "cg" / controller
        own = mount / "agent.slice" if controller == "memory" else mount
        own.mkdir(parents=True)
        mountinfo.append(f"{30 + i} 23 0:{28 + i} / {mount} rw,relatime - cgroup cgroup rw,{controller}")
        cgroup.append(f"{i + 1}:{controller}:{'/agent.slice' if controller == 'memory' else '/'}")
    (tmp / "cg" / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (tmp / "cg" / "cpuset" / "cpuset.mems").write_text("0\n")
    return _proc(tmp, mountinfo, cgroup)


def test_v1_is_found_with_every_controller_and_the_agents_own_path(tmp_path: Path) -> None:
    hierarchy = cgroups.detect("n1-abc", root=_v1(tmp_path))
    assert hierarchy is not None
    assert hierarchy.mode == "cgroup-v1"
    assert hierarchy.bases["memory"] == tmp_path / "cg" / "memory" / "agent.slice" / "fed-n1-abc"
    assert hierarchy.bases["pids"] == tmp_path / "cg" / "pids" / "fed-n1-abc"
    # a v1 cpuset takes no task before it has cpus and mems: the agent's copies its parent's
    assert (hierarchy.bases["cpuset"] / "cpuset.cpus").read_text() == "0-3"


def test_a_v1_attempt_without_claimed_cores_stays_in_the_agents_cpuset(tmp_path: Path) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path))
    assert hierarchy is not None
    group = hierarchy.attempt(Limits(memory=512 * 1024**2, processes=64))
    assert set(group.dirs) == {"freezer", "memory", "pids", "cpuacct"}
    assert group.dirs["pids"] == hierarchy.bases["pids"] / "slot-1"
    assert not (hierarchy.bases["cpuset"] / "slot-1").exists()
    assert group.procs_files == [str(group.dirs[c] / "cgroup.procs") for c in group.dirs]


def test_a_v1_attempt_is_weighted_by_the_cores_it_asked_for_unless_its_cores_are_pinned(
    tmp_path: Path,
) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path, optional=("cpu",)))
    assert hierarchy is not None
    assert hierarchy.weight == "cpu"
    shared = hierarchy.attempt(Limits(cpus=3))
    assert (shared.dirs["cpu"] / "cpu.shares").read_text() == "3072"
    assert "cpuset" not in shared.dirs
    pinned = hierarchy.attempt(Limits(cores=(0, 1), cpus=2))
    assert "cpu" not in pinned.dirs  # its own cores: no weight needed
    assert (pinned.dirs["cpuset"] / "cpuset.cpus").read_text() == "0,1"


def test_without_every_v1_controller_or_a_v2_with_controllers_there_is_no_hierarchy(tmp_path: Path) -> None:
    mount = tmp_path / "unified"
    mount.mkdir()
    (mount / "cgroup.controllers").write_text("\n")  # like this machine's cgroup2 mount: no controllers
    proc = _proc(tmp_path, [f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw"], ["0::/"])
    assert cgroups.detect("n1", root=proc) is None


def test_a_v1_attempt_gets_its_limits_and_reports_its_usage(tmp_path: Path) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path))
    assert hierarchy is not None
    group = hierarchy.attempt(Limits(memory=512 * 1024**2, processes=64, cores=(2, 3)))
    assert (group.dirs["memory"] / "memory.limit_in_bytes").read_text() == str(512 * 1024**2)
    assert (group.dirs["pids"] / "pids.max").read_text() == "64"
    assert (group.dirs["cpuset"] / "cpuset.cpus").read_text() == "2,3"
    assert (group.dirs["cpuset"] / "cpuset.mems").read_text() == "0"
    (group.dirs["cpuacct"] / "cpuacct.usage").write_text("1500000000\n")
    (group.dirs["memory"] / "memory.max_usage_in_bytes").write_text("4096\n")
    (group.dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    usage = group.usage()
    assert (usage.cpu_seconds, usage.peak_memory_bytes, usage.oom_killed) == (1.5, 4096, True)
    assert group.pattern == "*[:,]cpuacct[:,]*/fed-n1/slot-1"
    assert hierarchy.leftovers() == ["slot-1"]
    assert hierarchy.existing("slot-1") is not None
    assert hierarchy.existing("job-9.9") is None


def test_a_v2_attempt_writes_its_limits_and_reads_its_usage(tmp_path: Path) -> None:
    mount = tmp_path / "unified"
    own = mount / "agent.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.procs").write_text("4242\n")  # the agent itself: it must move into a leaf first
    proc = _proc(tmp_path, [f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw"], ["0::/agent.service"])
    hierarchy = cgroups.detect("n1", root=proc)
    assert hierarchy is not None
    assert hierarchy.mode == "cgroup-v2"
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpuset +cpu"
    assert (own / "fed-agent" / "cgroup.procs").read_text() == "4242"
    attempt = own / "fed-n1" / "slot-1"
    attempt.mkdir()
    for name in ("memory.max", "memory.swap.max", "pids.max", "cpuset.cpus"):
        (attempt / name).write_text("max\n")
    group = hierarchy.attempt(Limits(memory=1024**3, processes=10, cores=(1,)))
    (own / "fed-n1" / "slot-2").mkdir()
    (own / "fed-n1" / "slot-2" / "cpu.weight").write_text("100\n")
    hierarchy.attempt(Limits(cpus=4))
    assert (own / "fed-n1" / "slot-2" / "cpu.weight").read_text() == "400"
    assert (attempt / "memory.max").read_text() == str(1024**3)
    assert (attempt / "memory.swap.max").read_text() == "0"
    assert (attempt / "pids.max").read_text() == "10"
    assert (attempt / "cpuset.cpus").read_text() == "1"
    (attempt / "cpu.stat").write_text("usage_usec 250000\nuser_usec 200000\n")
    (attempt / "memory.peak").write_text("8192\n")
    (attempt / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    usage = group.usage()
    assert (usage.cpu_seconds, usage.peak_memory_bytes, usage.oom_killed) == (0.25, 8192, False)
    assert group.pattern == "0::*/fed-n1/slot-1"


def test_killing_a_v1_group_freezes_kills_every_member_and_thaws(tmp_path: Path) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path))
    assert hierarchy is not None
    group = hierarchy.attempt(Limits())
    member = subprocess.Popen(["sleep", "60"])
    try:
        for path in group.procs_files:
            Path(path).write_text(f"{member.pid}\n")
        asyncio.run(_kill_with_short_settle(group))
        assert member.wait(timeout=10) == -9
        assert (group.dirs["freezer"] / "freezer.state").read_text() == "THAWED"
    finally:
        if member.poll() is None:
            member.kill()
            member.wait()


async def _kill_with_short_settle(group: cgroups.Group) -> None:
    saved, cgroups.SETTLE = cgroups.SETTLE, 0.2  # a plain directory never empties by itself
    try:
        await group.kill()
    finally:
        cgroups.SETTLE = saved


def test_a_v1_attempt_is_entered_by_the_starting_thread_alone_and_left_after(tmp_path: Path) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path))
    assert hierarchy is not None
    group = hierarchy.attempt(Limits(memory=512 * 1024**2, processes=64, cores=(1,)))
    tid = str(threading.get_native_id())
    with group.entered():
        inside = {c: (d / "tasks").read_text() for c, d in group.dirs.items() if (d / "tasks").exists()}
    # the freezer, the limited pids group and the cpuset got this thread (not the process: v1
    # "tasks" moves one thread); memory and CPU accounting are joined by the process after its start
    assert inside == {"freezer": tid, "pids": tid, "cpuset": tid}
    assert not (group.dirs["memory"] / "tasks").exists()
    assert not (group.dirs["cpuacct"] / "tasks").exists()
    assert all((group.home[c] / "tasks").read_text() == tid for c in inside)  # and it left
    unlimited = hierarchy.attempt(Limits())
    with unlimited.entered():
        inside = {c: (d / "tasks").read_text() for c, d in unlimited.dirs.items() if (d / "tasks").exists()}
    assert inside == {"freezer": tid}  # no process limit, no claimed cores: the freezer alone
    assert group.home["memory"] == tmp_path / "cg" / "memory" / "agent.slice"

    def fails_inside() -> None:
        with group.entered():
            (group.home["pids"] / "tasks").write_text("0")
            raise RuntimeError

    with pytest.raises(RuntimeError):  # it leaves whatever happened inside
        fails_inside()
    assert (group.home["pids"] / "tasks").read_text() == tid
    # the agent itself is never one of the attempt's processes, even while a thread is inside
    (group.dirs["freezer"] / "cgroup.procs").write_text(f"{os.getpid()}\n4242\n")
    assert group.pids() == {4242}


def test_the_groups_not_entered_take_the_started_process_and_what_it_forked_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path))
    assert hierarchy is not None
    group = hierarchy.attempt(Limits(memory=512 * 1024**2))
    members = group.dirs["freezer"] / "cgroup.procs"
    members.write_text("100\n101\n")  # 101: forked by 100 before 100 joined its memory group
    written: list[tuple[str, str]] = []
    real = cgroups._Files.write

    def record(files: cgroups._Files, path: str, value: str) -> None:
        written.append((path, value))
        if value == "100":
            members.write_text("100\n101\n102\n")  # 102: forked by 101 meanwhile
        if value == "102":
            raise ProcessLookupError  # and gone already: skipped
        real(files, path, value)

    monkeypatch.setattr(cgroups._Files, "write", record)
    group.join(100)
    # every group the starting thread does not enter (no process limit: pids too), for each
    joined = [str(group.dirs[c] / "cgroup.procs") for c in ("memory", "pids", "cpuacct")]
    assert written == [(path, pid) for pid in ("100", "101") for path in joined] + [(joined[0], "102")]


def _ended(group: cgroups.Group, cpu_ns: int, oom_kills: int, peak: int, charged: int) -> cgroups.Usage:
    """An attempt of ``group`` over, its counters as the kernel would show them: give it back."""
    memory = group.dirs["memory"]
    (group.dirs["cpuacct"] / "cpuacct.usage").write_text(f"{cpu_ns}\n")
    (memory / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kills}\n")
    (memory / "memory.max_usage_in_bytes").write_text(f"{peak}\n")
    (memory / "memory.usage_in_bytes").write_text(f"{charged}\n")
    return group.release()


def test_an_emptied_v1_group_serves_the_next_attempt_counting_from_where_the_last_one_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path))
    assert hierarchy is not None
    written: list[tuple[str, str]] = []
    real = cgroups._Files.write

    def record(files: cgroups._Files, path: str, value: str) -> None:
        written.append((Path(path).name, value))
        real(files, path, value)

    monkeypatch.setattr(cgroups._Files, "write", record)
    first = hierarchy.attempt(Limits(memory=512 * 1024**2))
    used = _ended(first, cpu_ns=1_500_000_000, oom_kills=1, peak=4096, charged=200_000)
    assert (used.cpu_seconds, used.peak_memory_bytes, used.oom_killed) == (1.5, 4096, True)
    # its peak was reset for the next attempt (the kernel sets it to what is charged now)
    assert written == [("memory.max_usage_in_bytes", "0")]

    second = hierarchy.attempt(Limits(memory=512 * 1024**2))
    assert second is first
    assert second.dirs["pids"].name == "slot-1"
    used = _ended(second, cpu_ns=1_750_000_000, oom_kills=1, peak=8192, charged=0)
    assert (used.cpu_seconds, used.peak_memory_bytes, used.oom_killed) == (0.25, 8192, False)

    # a group still charged with more than RESIDUE (page cache of what the job wrote) is not reused
    third = hierarchy.attempt(Limits())
    assert third is first
    big = cgroups.RESIDUE + 4096
    _ended(third, cpu_ns=1_750_000_000, oom_kills=1, peak=big, charged=big - 1)
    fourth = hierarchy.attempt(Limits())
    assert fourth.dirs["pids"].name == "slot-2"
    # what it is charged with is read only after a peak above RESIDUE (the kernel's charge is at
    # most its peak): a file that says otherwise is not even read
    _ended(fourth, cpu_ns=0, oom_kills=0, peak=8192, charged=big)
    assert hierarchy.attempt(Limits()) is fourth


def test_a_reused_v1_group_gets_only_the_limits_that_differ_in_an_order_the_kernel_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path, optional=("cpu",)))
    assert hierarchy is not None
    group = hierarchy.attempt(Limits(memory=1024**3, processes=64, cpus=2))
    (group.dirs["memory"] / "memory.memsw.limit_in_bytes").write_text("-1\n")  # swap accounted
    hierarchy._memsw = None
    _ended(group, cpu_ns=0, oom_kills=0, peak=0, charged=0)
    written: list[tuple[str, str]] = []
    real = cgroups._write

    def record(path: Path | str, value: str) -> None:
        written.append((Path(path).name, value))
        real(path, value)

    monkeypatch.setattr(cgroups, "_write", record)
    # raised: memory+swap first (the kernel keeps it at least the memory limit), nothing else
    assert hierarchy.attempt(Limits(memory=2 * 1024**3, processes=64, cpus=2)) is group
    two = str(2 * 1024**3)
    assert written == [("memory.memsw.limit_in_bytes", two), ("memory.limit_in_bytes", two)]
    _ended(group, cpu_ns=0, oom_kills=0, peak=0, charged=0)
    written.clear()
    # lowered: memory first; limits taken off go back to the kernel's "none"
    assert hierarchy.attempt(Limits(memory=1024**2, cpus=4)) is group
    assert written == [
        ("memory.limit_in_bytes", str(1024**2)),
        ("memory.memsw.limit_in_bytes", str(1024**2)),
        ("pids.max", "max"),
        ("cpu.shares", "4096"),
    ]
    _ended(group, cpu_ns=0, oom_kills=0, peak=0, charged=0)
    written.clear()
    assert hierarchy.attempt(Limits()) is group
    assert ("memory.limit_in_bytes", "-1") in written
    # an attempt with claimed cores never takes a group without a cpuset
    assert "cpuset" in hierarchy.attempt(Limits(cores=(1,))).dirs


def test_a_v2_group_is_reused_only_where_its_peak_can_be_reset(tmp_path: Path) -> None:
    mount = tmp_path / "unified"
    own = mount / "agent.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    proc = _proc(tmp_path, [f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw"], ["0::/agent.service"])
    hierarchy = cgroups.detect("n1", root=proc)
    assert hierarchy is not None
    group = hierarchy.attempt(Limits())
    d = group.dirs[""]
    (d / "cpu.stat").write_text("usage_usec 250000\n")
    (d / "memory.peak").write_text("8192\n")
    (d / "memory.current").write_text("0\n")
    assert group.release().cpu_seconds == 0.25
    assert (d / "memory.peak").read_text() == "reset"  # written through the descriptor it is read by
    assert hierarchy.attempt(Limits()) is group
    (d / "cpu.stat").write_text("usage_usec 300000\n")
    (d / "memory.peak").unlink()
    (d / "memory.peak").mkdir()  # cannot be written: as a kernel before 6.12
    hierarchy.files.close(d)
    assert group.release().cpu_seconds == pytest.approx(0.05)
    assert hierarchy.attempt(Limits()) is not group


def test_an_attempt_over_is_found_empty_by_its_process_count_else_by_its_members(tmp_path: Path) -> None:
    hierarchy = cgroups.detect("n1", root=_v1(tmp_path))
    assert hierarchy is not None
    group = hierarchy.attempt(Limits())
    _ended(group, cpu_ns=0, oom_kills=0, peak=4096, charged=0)  # (its counters, as the kernel shows them)
    group = hierarchy.attempt(Limits())
    count = group.dirs["pids"] / "pids.current"
    members = group.dirs["freezer"] / "cgroup.procs"
    count.write_text("1\n")  # a zombie not yet reaped is counted, and is no member: the list decides
    members.write_text("")
    asyncio.run(group.remove())
    assert group.emptied
    group = hierarchy.attempt(Limits())
    count.write_text("0\n")  # nothing counted: the member list is not read at all
    members.write_text("99999999\n")  # (above any pid_max: were it read, no real process is killed)
    asyncio.run(group.remove())
    assert group.emptied
