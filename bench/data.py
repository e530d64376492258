"""Data that follows the job (issue 20, part 4): what jobs' files cost, and that jobs without files
pay nothing for them.

    python bench/data.py                      # --mib 64 --small 30 --rounds 3

Starts a local two-region federation (``aa``, ``bb``; one agent each, and a node in ``bb`` that
declares GPUs, so that a GPU job spills from ``aa`` to ``bb``), then per round, in alternating
order:

* ``--small`` jobs of ``true`` one after another without files, and as many with one 1 KiB input:
  submit-to-start p50 of each (from the job's history), and their ratio (the cost of staging a
  small file on the start path);
* one job with a ``--mib`` input run at home, and one handed to ``bb`` (staged through the hub):
  the upload rate (``Client.upload``), and each staging rate (placed to running, from the job's
  history: staging happens in between);
* one job that writes a ``--mib`` output: the store rate (the job's exit to its record, which
  waits for the outputs) and the read rate of ``Client.get`` at home.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput

from federation.client import Client
from federation.ops.launcher import Federation, Options
from federation.schemas import JobRecord

MiB = 1024**2


def at(record: JobRecord, state: str) -> float:
    """When ``record`` last entered ``state`` (its history)."""
    return max(step.at for step in record.history if step.state == state)


async def start_latency(client: Client, n: int, inputs: list[str]) -> float:
    """Median submit-to-start seconds of ``n`` jobs of ``true`` run one after another."""
    delays = []
    for _ in range(n):
        job = await client.submit(["true"], region="aa", inputs=inputs)
        record = await job.wait(timeout=60)
        assert record.state == "succeeded", record
        delays.append(at(record, "running") - record.submitted_at)
    return statistics.median(delays)


async def big_input(client: Client, path: Path, remote: bool) -> dict[str, float]:
    """Upload ``path`` and run a job that reads it (handed to bb when ``remote``): rates in MiB/s."""
    t0 = time.monotonic()
    refs = await client.upload([str(path)], region="aa")
    uploaded = time.monotonic() - t0
    size = refs[0].size / MiB
    job_id = f"big-{'bb' if remote else 'aa'}-{time.time_ns()}"
    spec = client._submission(
        ["sh", "-c", f"test $(wc -c < {path.name}) -gt 0"],
        job_id=job_id,
        inputs=refs,
        gpu=1 if remote else 0,
    )
    await client._store(spec, "aa")
    record = await client.wait(job_id, timeout=300)
    assert record.state == "succeeded", record
    assert (record.region == "bb") == remote, record
    staged = at(record, "running") - at(record, "placed")
    return {"upload": size / uploaded, "stage": size / staged}


async def big_output(client: Client, mib: int) -> dict[str, float]:
    """A job that writes ``mib`` MiB: the agent's store rate and ``Client.get``'s read rate, MiB/s."""
    job = await client.submit(
        ["sh", "-c", f"head -c {mib * MiB} /dev/urandom > out.bin"], region="aa", outputs=["out.bin"]
    )
    record = await job.wait(timeout=300)
    assert record.state == "succeeded", record
    assert record.usage is not None, record
    stored = record.updated_at - at(record, "running") - record.usage.wall_seconds
    t0 = time.monotonic()
    data = await client.get(job.id, "out.bin")
    read = time.monotonic() - t0
    assert len(data) == mib * MiB
    return {"store": mib / max(stored, 1e-3), "get": mib / read}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=64, help="size of the large input and output")
    parser.add_argument("--small", type=int, default=30, help="jobs per kind in the start-latency run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    throughput.announce()
    base = Path(tempfile.mkdtemp(prefix="fed-bench-data-"))
    federation = Federation(Options(state_dir=base / "fed", regions=("aa", "bb"), agents=1, tour=True))
    try:
        connection = await federation.start()
        small, large = base / "small.txt", base / "large.bin"
        small.write_bytes(os.urandom(1024))
        large.write_bytes(os.urandom(args.mib * MiB))
        async with Client.connect(connection=connection, credentials=federation.credentials) as client:
            await start_latency(client, 3, [])  # warm: connections, the agent's first fork
            for i in range(args.rounds):
                kinds = ("none", "small") if i % 2 == 0 else ("small", "none")
                latency = {
                    k: await start_latency(client, args.small, [str(small)] if k == "small" else [])
                    for k in kinds
                }
                home = await big_input(client, large, remote=False)
                away = await big_input(client, large, remote=True)
                out = await big_output(client, args.mib)
                print(
                    f"  round {i + 1}: submit-to-start p50 {latency['none'] * 1000:.1f} ms without files, "
                    f"{latency['small'] * 1000:.1f} ms with a 1 KiB input (ratio "
                    f"{latency['small'] / latency['none']:.2f}); {args.mib} MiB: upload {home['upload']:.0f} "
                    f"MiB/s, staged at home {home['stage']:.0f} MiB/s, in bb through the hub "
                    f"{away['stage']:.0f} MiB/s; output stored {out['store']:.0f} MiB/s, read back "
                    f"{out['get']:.0f} MiB/s",
                    flush=True,
                )
    finally:
        await federation.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
