"""``fed submit --file``: TOML job files and workflows, and scripts with #FED lines, against a real
federation (servers, a scheduler, an agent)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fed

pytestmark = pytest.mark.timeout(240)


async def jobs(state: Path) -> list[dict[str, Any]]:
    return list(json.loads((await fed(state, "jobs", "--json")).stdout))


async def test_a_workflow_runs_in_dependency_order_and_a_bad_one_submits_nothing(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    cycle = tmp_path / "cycle.toml"
    cycle.write_text(
        '[jobs.a]\ncommand = "true"\nafter = ["c"]\n[jobs.b]\ncommand = "true"\nafter = ["a"]\n'
        '[jobs.c]\ncommand = "true"\nafter = ["b:any"]\n[jobs.free]\ncommand = "true"\n'
    )
    refused = await fed(cluster.tmp, "submit", "--file", str(cycle))
    assert refused.returncode == 2
    assert "cycle: a -> c -> b -> a" in refused.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text('[jobs.a]\ncommand = "true"\n[jobs.b]\ncommand = "true"\ncpus = 2\n')
    refused = await fed(cluster.tmp, "submit", "--file", str(typo))
    assert refused.returncode == 2
    assert "job 'b': unknown key 'cpus'" in refused.stderr
    missing = tmp_path / "missing.toml"
    missing.write_text('[jobs.a]\ncommand = "true"\nafter = ["nobody"]\n')
    refused = await fed(cluster.tmp, "submit", "--file", str(missing))
    assert refused.returncode == 2
    assert "job 'a'" in refused.stderr
    assert "nobody" in refused.stderr
    absent = tmp_path / "absent.toml"  # an input path is taken from the file's own directory
    absent.write_text('[jobs.a]\ncommand = "true"\n[jobs.b]\ncommand = "true"\ninput = ["absent.csv"]\n')
    refused = await fed(cluster.tmp, "submit", "--file", str(absent))
    assert refused.returncode == 2
    assert f"job 'b': input {tmp_path / 'absent.csv'}: no such file" in refused.stderr
    assert await jobs(cluster.tmp) == []  # nothing of any of them was submitted

    flow = tmp_path / "flow.toml"
    flow.write_text(
        f"""
tenant = "acme"

[jobs.report]
command = "test -e {marks}/train && echo report > {marks}/report"
after = ["train:any"]

[jobs.train]
command = ["sh", "-c", "test -e {marks}/prepare && echo train > {marks}/train && cp in.txt out.txt"]
after = ["prepare"]
input = ["data.txt:in.txt"]
output = ["out.txt"]
cpu = 2
max-attempts = 1

[jobs.prepare]
command = "sleep 0.5; echo prepare > {marks}/prepare"
array = "0-2"
"""
    )
    (tmp_path / "data.txt").write_text("the training data\n")
    done = await fed(cluster.tmp, "submit", "--file", str(flow), "--wait", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["states"] == {
        "prepare": {"succeeded": 3},
        "train": {"succeeded": 1},
        "report": {"succeeded": 1},
    }
    assert result["jobs"]["prepare"]["array"] is True
    assert sorted(p.name for p in marks.iterdir()) == ["prepare", "report", "train"]
    train = json.loads((await fed(cluster.tmp, "job", result["jobs"]["train"]["id"], "--json")).stdout)
    assert (train["spec"]["cpu"], train["spec"]["tenant"], train["spec"]["max_attempts"]) == (2, "acme", 1)
    got = await fed(cluster.tmp, "get", train["id"], "out.txt", "-o", "-")
    assert got.stdout == "the training data\n", got.stderr


async def test_a_script_with_fed_lines_is_submitted_itself(make_cluster: Any, tmp_path: Path) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/sh\n"
        "# a job as a Slurm user writes one\n"
        "#FED --cpu 2 --env GREETING=hello\n"
        "#FED --priority high\n"
        "\n"
        'echo "$GREETING from $0 with $1"\n'
        "#FED --gpu 7   (after the first command: a comment, as #SBATCH would be)\n"
    )
    done = await fed(cluster.tmp, "submit", "--file", str(script), "--wait", "--json", "--", "an argument")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)["record"]
    assert (record["spec"]["cpu"], record["spec"]["priority"], record["spec"].get("gpu", 0)) == (2, "high", 0)
    logs = await fed(cluster.tmp, "logs", record["id"])
    assert logs.stdout == "hello from job.sh with an argument\n"
    overridden = await fed(cluster.tmp, "submit", "--file", str(script), "--cpu", "1", "--json")
    job = json.loads((await fed(cluster.tmp, "job", json.loads(overridden.stdout)["id"], "--json")).stdout)
    assert job["spec"].get("cpu", 1) == 1  # the command line wins over the script's lines
