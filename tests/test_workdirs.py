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
async def test_with_a_user_of_their_own_workloads_own_their_directories_and_none_is_kept(
    tmp_path: Path,
) -> None:
    # every job is that one user: a kept directory's name, known to the job that had it, would be
    # all that keeps it out of the next one's (the work root is passable, not listable)
    nobody = (65534, 65534)
    dirs = WorkDirs(tmp_path, OffLoop(), owner=nobody)
    workdir = await _take(dirs)
    assert (workdir.stat().st_uid, workdir.stat().st_gid) == nobody
    dirs.give_back(workdir, contained=True)
    await _settled(dirs)
    assert len(dirs) == 0
    assert not workdir.exists()
    assert await _take(dirs) != workdir


async def test_a_directory_with_an_extended_attribute_is_removed(tmp_path: Path) -> None:
    dirs = WorkDirs(tmp_path, OffLoop())
    workdir = await _take(dirs)
    try:
        os.setxattr(workdir, "user.note", b"left for the next job")
    except OSError as exc:  # (a file system without user attributes: nothing a job could leave)
        pytest.skip(f"no user extended attributes here: {exc}")
    dirs.give_back(workdir, contained=True)
    await _settled(dirs)
    assert len(dirs) == 0
    assert not workdir.exists()


async def test_a_directory_grown_by_many_entries_is_removed_and_a_throwaway_pool_keeps_none(
    tmp_path: Path,
) -> None:
    dirs = WorkDirs(tmp_path, OffLoop())
    workdir = await _take(dirs)
    for i in range(3000):  # (its entry list grows past LARGEST and does not shrink back)
        (workdir / f"file-with-a-long-name-{i:06d}").touch()
    for entry in os.listdir(workdir):
        (workdir / entry).unlink()
    grown = workdir.stat().st_size > workdirs.LARGEST
    dirs.give_back(workdir, contained=True)
    await _settled(dirs)
    assert len(dirs) == (0 if grown else 1)
    once = WorkDirs(tmp_path / "once", OffLoop(), keep=False)
    workdir = await _take(once)
    once.give_back(workdir, contained=True)
    await _settled(once)
    assert len(once) == 0
    assert not workdir.exists()
