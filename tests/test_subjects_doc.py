"""subjects.md and federation/subjects.py describe the same namespace."""

from __future__ import annotations

import re
from pathlib import Path

from federation import subjects

DOC = Path(__file__).resolve().parents[1] / "subjects.md"


def documented_names() -> set[str]:
    """Every backticked name in the first column of a table in subjects.md."""
    names = set()
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            names.add(match.group(1))
    return names


def test_every_name_in_the_code_is_documented_and_vice_versa() -> None:
    code = {entry.pattern for entry in subjects.CATALOGUE}
    doc = documented_names()
    assert code - doc == set(), f"in subjects.py but not in subjects.md: {sorted(code - doc)}"
    assert doc - code == set(), f"in subjects.md but not in subjects.py: {sorted(doc - code)}"


def test_every_subject_starts_with_its_region() -> None:
    for entry in subjects.CATALOGUE:
        if entry.kind == "subject":  # an object store's subjects carry the region in its bucket
            assert entry.pattern.startswith(("fed.<region>.", "$O.fed-objects-<region>.")), entry
        elif entry.kind in ("stream", "bucket"):
            assert "<region>" in entry.pattern, entry


def test_status_subjects_parse_back() -> None:
    subject = subjects.job_event("eu-west", "gpu-7", "job-1")
    assert subjects.parse_status(subject) == ("eu-west", "gpu-7", "job-1", "event")
    assert subjects.parse_status("fed.eu.offer.n1") is None


def test_ci_runs_exactly_the_readme_test_command() -> None:
    root = DOC.parent
    ci = [
        line
        for line in (root / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "rm "))
    ]
    assert len(ci) == 1
    assert ci[0] in (root / "README.md").read_text()
