"""The attempts' directories (agents.workdirs): an emptied one is handed to the next attempt only
when nothing of the old attempt can reach it; everything else is removed. Real directories, the
agent's real worker thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents import workdirs
from agents.offloop import OffLoop
from agents.workdirs import WorkDirs

pytestmark = pytest.mark.timeout(30)


async def _settled(dirs: WorkDirs) -> None:
    await dirs.disk.drain()


async def _take(dirs: WorkDirs) -> Path:
    return await dirs.disk.call(dirs.take)


async def test_a_contained_attempt_s_empty_directory_goes_to_the_next_attempt(tmp_path: Path) -> None:
    dirs = WorkDirs(tmp_path / "work", OffLoop())  # (the root is made at the first take)
    first = await _take(dirs)
    assert first.parent == tmp_path / "work"
    assert first.name.startswith(workdirs.PREFIX)
    assert first.stat().st_mode & 0o777 == 0o700
    (first / "scratch").write_text("made and removed by the job")
    (first / "scratch").unlink()
    dirs.give_back(first, contained=True)
    await _settled(dirs)
    assert len(dirs) == 1
    assert await _take(dirs) == first
    assert await _take(dirs) != first  # none waits: a new one


@pytest.mark.parametrize(
    "leave",
    [
        pytest.param(lambda d: (d / "result.txt").write_text("left behind"), id="a file left"),
        pytest.param(lambda d: (d / "sub").mkdir(), id="a directory left"),
        pytest.param(lambda d: d.chmod(0o755), id="its mode changed"),
    ],
)
async def test_a_directory_not_as_it_was_made_is_removed(tmp_path: Path, leave) -> None:
    dirs = WorkDirs(tmp_path, OffLoop())
    workdir = await _take(dirs)
    leave(workdir)
    dirs.give_back(workdir, contained=True)
    await _settled(dirs)
    assert len(dirs) == 0
    assert not workdir.exists()


async def test_an_uncontained_attempt_s_directory_is_removed_even_empty(tmp_path: Path) -> None:
    # without a cgroup a process of the attempt may live on (setsid) and write into it later
    dirs = WorkDirs(tmp_path, OffLoop())
    workdir = await _take(dirs)
    dirs.give_back(workdir, contained=False)
    await _settled(dirs)
    assert len(dirs) == 0
    assert not workdir.exists()


async def test_at_most_kept_wait_and_close_removes_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(workdirs, "KEPT", 2)
    dirs = WorkDirs(tmp_path, OffLoop())
    taken = [await _take(dirs) for _ in range(3)]
    for workdir in taken:
        dirs.give_back(workdir, contained=True)
    await _settled(dirs)
    assert len(dirs) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in taken[:2])
    await dirs.disk.call(dirs.close)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root")
async def test_the_workloads_user_owns_its_directories_and_only_theirs_are_kept(tmp_path: Path) -> None:
    nobody = (65534, 65534)
    dirs = WorkDirs(tmp_path, OffLoop(), owner=nobody)
    workdir = await _take(dirs)
    assert (workdir.stat().st_uid, workdir.stat().st_gid) == nobody
    dirs.give_back(workdir, contained=True)
    await _settled(dirs)
    assert await _take(dirs) == workdir
    os.chown(workdir, 0, 0)  # no longer the workloads' own
    dirs.give_back(workdir, contained=True)
    await _settled(dirs)
    assert len(dirs) == 0
    assert not workdir.exists()
