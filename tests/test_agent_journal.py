"""The agent's attempt journal (agents/journal.py) on a real file: durable before a start, group
committed, compacted, and loud when the disk fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents import journal as journal_module
from agents.journal import AttemptJournal


class Counting(AttemptJournal):
    """The journal, counting the commits that wrote something (each one write and one sync)."""

    commits = 0

    def _commit(self, sync: bool) -> None:
        self.commits += bool(self._queued)
        super()._commit(sync)


async def test_a_start_returns_only_once_its_line_is_in_the_file(tmp_path: Path) -> None:
    journal = AttemptJournal(tmp_path / "attempts.journal")
    assert journal.read() == {}
    await journal.starting("a", 1)
    assert (tmp_path / "attempts.journal").read_text() == "a 1 0\n"
    await journal.close()


async def test_starts_asked_for_together_share_one_commit(tmp_path: Path) -> None:
    journal = Counting(tmp_path / "attempts.journal")
    journal.read()
    await asyncio.gather(*(journal.starting(f"job-{i}", 1) for i in range(50)))
    assert journal.commits == 1
    lines = (tmp_path / "attempts.journal").read_text().splitlines()
    assert sorted(lines) == sorted(f"job-{i} 1 0" for i in range(50))
    await journal.close()


async def test_a_restarted_agent_reads_each_attempt_with_its_process_group(tmp_path: Path) -> None:
    path = tmp_path / "attempts.journal"
    first = AttemptJournal(path)
    first.read()
    await first.starting("a", 1)
    first.running("a", 1, 4242)
    await first.starting("b#2", 3)  # a gang member's slot; committed after the pid line above
    await first.close()
    assert AttemptJournal(path).read() == {("a", 1): 4242, ("b#2", 3): 0}


async def test_a_long_journal_is_compacted_to_the_jobs_still_allocated_and_appends_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_AFTER", 5)
    path = tmp_path / "attempts.journal"
    journal = AttemptJournal(path)
    journal.read()
    for i in range(8):
        await journal.starting(f"job-{i}", 1)
    started = asyncio.ensure_future(journal.starting("job-8", 1))
    await asyncio.sleep(0)  # sleep-ok: one turn, so its line is asked for before the compaction
    journal.compact({"job-6", "job-7", "job-8"})
    journal.running("job-9", 1, 77)  # asked after: a job the compaction did not know of
    await started
    await journal.close()
    kept = {("job-6", 1): 0, ("job-7", 1): 0, ("job-8", 1): 0, ("job-9", 1): 77}
    assert AttemptJournal(path).read() == kept


async def test_a_journal_that_cannot_be_written_fails_the_start_instead_of_letting_it_run(
    tmp_path: Path,
) -> None:
    journal = AttemptJournal(tmp_path / "attempts.journal")
    journal.read()
    journal._fd = 10_000  # a descriptor that is not open: every write fails as a broken disk would
    with pytest.raises(OSError, match="attempt journal not written"):
        await journal.starting("a", 1)
    journal._fd = -1
