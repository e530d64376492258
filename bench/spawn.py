"""What confining a workload costs the agent per start: agent CPU and starts/s, six ways.

    python bench/spawn.py              # 300 sequential starts of `true` each way (root, for the user switch)

1. unconfined: asyncio's subprocess with no preexec_fn, which CPython starts with a vfork;
2. preexec: the limits set in a ``preexec_fn`` (a full fork of the agent, Python run in the child);
3. preexec + user: the same plus the switch to ``nobody``;
4. tools: util-linux ``setpriv`` (user) and ``prlimit`` (limits) in front of the command, started
   with a vfork (what ``agents/runner.py`` does when both tools are installed);
5. tools + landlock: the same, plus ``confine_writes`` (Landlock applied in a ``preexec_fn``, so a
   full fork again);
6. posix_spawn: what the agent does now where nothing runs between fork and exec
   (``agents.spawning.start``: ``posix_spawn``, its output pipe read to the end, reaped through a
   pidfd; the executable found once per ``PATH``), against 1, asyncio's own subprocess.

The process first allocates an agent-sized heap (30 MiB), since a fork costs by the parent's size.
"""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300


async def start(argv: list[str], **options: object) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        **options,
    )  # type: ignore[arg-type]
    await process.wait()


async def measure(name: str, argv: list[str], **options: object) -> None:
    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(N):
        await start(argv, **options)
    rate = N / (time.perf_counter() - began)
    per_start = 1000 * (time.process_time() - cpu) / N
    print(f"{name:<15} {rate:6.0f} starts/s   agent CPU {per_start:.2f} ms per start")


def limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    resource.setrlimit(resource.RLIMIT_NPROC, (512, 512))


async def main() -> None:
    if sys.version_info < (3, 12):
        watcher = asyncio.PidfdChildWatcher()  # as the agent does on 3.11
        asyncio.set_child_watcher(watcher)
        watcher.attach_loop(asyncio.get_running_loop())
    heap = [bytearray(1 << 20) for _ in range(30)]
    system = f"{platform.system()} {platform.release()}"
    print(f"machine: {system}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: python bench/spawn.py {N}")
    await measure("unconfined", ["true"])
    await measure("preexec", ["true"], preexec_fn=limits)
    if os.geteuid() == 0:
        await measure("preexec + user", ["true"], preexec_fn=limits, user=65534, group=65534, extra_groups=[])
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if setpriv and prlimit and os.geteuid() == 0:
        tools = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        tools += [prlimit, f"--as={2 << 30}", "--nproc=512", "--"]
        await measure("tools", [*tools, "true"])
        from agents import landlock

        if landlock.abi() > 0:
            workdir = os.getcwd()
            confine = lambda: landlock.confine_writes(workdir)  # noqa: E731 - one line, one use
            await measure("tools+landlock", [*tools, "true"], preexec_fn=confine)
    await measure_spawning()
    del heap


async def measure_spawning() -> None:
    """Way 6: the agent's own start (agents.spawning), waited for through a pidfd."""
    from agents import spawning

    found = spawning.Executables()
    loop = asyncio.get_running_loop()
    env = dict(os.environ)
    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(N):
        executable = found.find("true", env.get("PATH"), os.getcwd())
        assert executable is not None
        started = spawning.start(["true"], executable, cwd=os.getcwd(), env=env, stdin=None)
        pidfd, exited = os.pidfd_open(started.pid), loop.create_future()
        loop.add_reader(pidfd, exited.set_result, None)
        await exited
        loop.remove_reader(pidfd)
        os.close(pidfd)
        os.waitpid(started.pid, 0)  # noqa: ASYNC222 - the pidfd said it exited: returns at once
        while os.read(started.output, 65536):  # its output to the end (it exited: no wait)
            pass
        os.close(started.output)
    rate = N / (time.perf_counter() - began)
    per_start = 1000 * (time.process_time() - cpu) / N
    print(f"{'posix_spawn':<15} {rate:6.0f} starts/s   agent CPU {per_start:.2f} ms per start")


if __name__ == "__main__":
    asyncio.run(main())
