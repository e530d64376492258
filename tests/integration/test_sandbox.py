"""The workload sandbox on a real agent (issue #7): hostile jobs are stopped or denied, each fails
with its cause recorded, and the agent and the jobs after them are unaffected.

The agent starts as root (as the suite runs) and runs workloads as ``nobody`` under small limits.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from federation.client import Client
from federation.ops.keyring import Keyring
from tests.conftest import GiB, eventually

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root"),
]

SECRET = "s3cr3t-agent-token"
PYTHON = "/usr/bin/python3"  # the system's: a job runs as nobody, who cannot reach a private venv
LIMITS = {"cpu_time": 2, "processes": 48, "file_size": 64 * 1024**2, "address_space": 1 * GiB}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside pytest's private (0700) tree, so nobody can reach its own workdir."""
    path = Path(tempfile.mkdtemp(prefix="fed-sandbox-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _open_dir(base: Path) -> Path:
    """A world-writable directory with the sticky bit, like /tmp."""
    path = base / "open"
    path.mkdir(exist_ok=True)
    path.chmod(0o1777)
    return path


def _nobody_processes() -> int:
    uid = pwd.getpwnam("nobody").pw_uid
    return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)


async def test_hostile_workloads_are_stopped_or_denied_and_the_agent_carries_on(
    make_cluster, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = await make_cluster(regions=("sb",), agents=0)
    state = shared_dir / "agent"
    config = shared_dir / "agent.toml"
    limits = "\n".join(f"{key} = {value}" for key, value in LIMITS.items())
    config.write_text(
        f'run_as = "nobody"\nconfine_writes = true\nmax_output_bytes = 65536\n'
        f'work_dir = "{shared_dir / "work"}"\n'
        f"cpu = 4\nmemory = {8 * GiB}\n[limits]\n{limits}\n"
    )
    monkeypatch.setenv("FED_AGENT_SECRET", SECRET)  # in the agent's environment only
    agent = await cluster.start_agent("sb", "sandboxed", "--config", str(config), "--state-dir", str(state))
    journal = state / "attempts.journal"
    key = Keyring.of(cluster.tmp).path("agent", "sandboxed", "sb")  # the agent's nkey seed
    hostile = {
        "allocate-4g": ([PYTHON, "-c", "b = bytearray(4 * 1024**3)"], 0.0),
        "spin": (["sh", "-c", "while :; do :; done"], 0.0),
        "big-file": (["dd", "if=/dev/zero", "of=big", "bs=1M", "count=2048"], 0.0),
        "flood": (["head", "-c", "100000000", "/dev/zero"], 0.0),
        "steal": (["cat", str(journal)], 0.0),
        "steal-key": (["cat", str(key)], 0.0),
        "escape": (["sh", "-c", f"echo pwned > {state}/planted"], 0.0),
        "escape-tmp": (["sh", "-c", f"echo pwned > {_open_dir(shared_dir)}/planted"], 0.0),
        "dump-env": (["env"], 0.0),
    }
    async with Client.connect(connection=cluster.connection) as fed:
        await eventually(lambda: _offered(fed), timeout=30)
        jobs = {
            name: await fed.submit(command, region="sb", cpu=1, job_id=name, timeout=timeout)
            for name, (command, timeout) in hostile.items()
        }
        records = {name: await job.wait(timeout=120) for name, job in jobs.items()}
        # the process limit counts every process of the user jobs run as, so the bomb runs alone
        bomb = await fed.submit(
            ["sh", "-c", "while :; do sleep 30 & done"], region="sb", job_id="fork-bomb", timeout=5.0
        )
        records["fork-bomb"] = await bomb.wait(timeout=60)
        output = {name: b"".join([chunk async for chunk in fed.logs(name, region="sb")]) for name in records}

        fork = records["fork-bomb"]
        assert fork.state == "failed"
        # the process limit stops it: in its own cgroup (pids.max) the shell's fork fails and it
        # exits at once; without one (RLIMIT_NPROC of the user) it forks on until its wall clock
        assert ("wall-clock limit of 5 s" in fork.reason) != (fork.exit_code not in (None, 0, -9, -15))
        assert b"fork" in output["fork-bomb"].lower()  # it hit the process limit
        assert records["allocate-4g"].state == "failed"
        assert b"MemoryError" in output["allocate-4g"]
        assert records["spin"].state == "failed"
        assert "SIGXCPU" in records["spin"].reason
        assert records["big-file"].state == "failed"
        assert "SIGXFSZ" in records["big-file"].reason
        assert len(output["flood"]) < 65536 + 200
        assert b"output truncated" in output["flood"]
        assert records["steal"].state == "failed"
        assert b"Permission denied" in output["steal"]
        assert journal.exists()  # the file is there: only its mode keeps the job out
        assert records["steal-key"].state == "failed"
        assert b"Permission denied" in output["steal-key"]
        assert key.exists()
        assert b"SU" not in output["steal-key"]
        assert records["escape"].state == "failed"
        assert not (state / "planted").exists()
        assert records["escape-tmp"].state == "failed"  # the directory is world-writable: Landlock
        assert b"Permission denied" in output["escape-tmp"]
        assert not (_open_dir(shared_dir) / "planted").exists()
        assert records["dump-env"].state == "succeeded"
        assert SECRET.encode() not in output["dump-env"]
        assert b"FED_JOB_ID=dump-env" in output["dump-env"]
        # everything the jobs started is gone, and the agent and its next job are fine
        await eventually(lambda: _nobody_processes() == 0, timeout=20)
        assert agent.alive()
        after = await fed.submit(["sh", "-c", "id -un; pwd"], region="sb", job_id="after")
        assert (await after.wait(timeout=60)).state == "succeeded"
        shown = b"".join([chunk async for chunk in fed.logs("after", region="sb")]).decode()
        assert shown.splitlines()[0] == "nobody"
        assert str(shared_dir / "work") in shown


async def _offered(fed: Client) -> bool:
    (region,) = await fed.status()
    return any(node.node == "sandboxed" and node.offer is not None for node in region.nodes)


@pytest.mark.parametrize("through_tools", [True, False], ids=["setpriv-prlimit", "preexec"])
async def test_both_ways_of_applying_the_sandbox_switch_user_and_set_limits(
    shared_dir: Path, through_tools: bool
) -> None:
    """With util-linux's setpriv and prlimit the agent starts a workload with a vfork and the
    tools apply the sandbox; without them the child applies it between fork and exec. Same result."""
    import resource

    from agents import runner

    tools = runner.sandbox_tools() if through_tools else None
    if through_tools:
        assert tools is not None, "setpriv and prlimit (util-linux) are missing on this host"
    nobody = pwd.getpwnam("nobody")
    limits = runner.rlimits(256 * 1024**2, 7, 0, 4096, 64)
    taskset = shutil.which("taskset") if through_tools else None
    sandbox = runner.Sandbox(
        uid=nobody.pw_uid, gid=nobody.pw_gid, limits=limits, tools=tools, taskset=taskset, confine_writes=True
    )
    assert bool(sandbox.prefix()) == through_tools
    assert resource.RLIMIT_AS in limits
    output: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        output.append(chunk)

    core = sorted(os.sched_getaffinity(0))[-1]
    outside = _open_dir(shared_dir) / "outside"  # world-writable, like /tmp: only Landlock keeps it out
    probe = (
        "id -u; ulimit -v; ulimit -t; ulimit -n; grep Cpus_allowed_list /proc/self/status; "
        f"echo in > inside && cat inside; (echo out > {outside}) 2>/dev/null || echo denied"
    )
    spec = runner.RunSpec(job="probe", attempt=1, command=["sh", "-c", probe], cores=(core,), pinned=True)
    run = await runner.start(spec, shared_dir / "work", sink, 4096, sandbox)
    assert await run.wait() == 0
    uid, space, cpu, files, _, allowed, inside, denied = b"".join(output).decode().split()
    assert (inside, denied) == ("in", "denied")
    assert not outside.exists()
    assert allowed == str(core)  # pinned by taskset, or by the child itself
    assert ("taskset" in " ".join(sandbox.prefix({core}))) == through_tools
    assert int(uid) == nobody.pw_uid
    assert int(space) == 256 * 1024  # KiB
    assert cpu == "7"
    assert files == "64"
    with pytest.raises(runner.LaunchError):
        await runner.start(
            runner.RunSpec(job="x", attempt=1, command=["no-such-command"]),
            shared_dir / "work",
            sink,
            4096,
            sandbox,
        )


async def test_a_confined_workload_running_as_the_agents_user_cannot_signal_it(shared_dir: Path) -> None:
    """Without ``run_as`` a workload is the agent's user; Landlock's scopes still keep it from
    signalling processes outside its sandbox (this test process stands in for the agent)."""
    from agents import landlock, runner

    if landlock.abi() < 6:
        pytest.skip(f"Landlock ABI {landlock.abi()} has no signal scope (Linux 6.12+)")
    output: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        output.append(chunk)

    outside = _open_dir(shared_dir) / "planted"
    probe = f"kill -0 {os.getpid()} 2>/dev/null && echo reached || echo refused; "
    probe += f"(echo x > {outside}) 2>/dev/null || echo kept"
    spec = runner.RunSpec(job="scoped", attempt=1, command=["sh", "-c", probe])
    run = await runner.start(spec, shared_dir / "work", sink, 4096, runner.Sandbox(confine_writes=True))
    assert await run.wait() == 0
    assert b"".join(output).split() == [b"refused", b"kept"]
    assert not outside.exists()
