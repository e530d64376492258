"""What an acknowledged JetStream publish costs the client: the bus's own (``Bus.store``: answers on
one subscription, decoded by msgspec) against nats-py's ``JetStreamContext.publish``, on one
connection to one server, each way in turn.

    python bench/publish.py            # --count 20000 --window 64 --rounds 3

Publishes are pipelined ``--window`` at a time (as the scheduler gathers its writes), 200-byte
payloads over 100 subjects of one stream. Printed per round: the client's CPU per publish and the
publishes per second, each way, and the ratio of CPU (bus / nats-py).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import throughput

from federation.bus import Bus
from federation.bus.layout import StreamSpec
from federation.ops.launcher import nats_server_binary

Publish = Callable[[str, bytes], Awaitable[object]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(store: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [nats_server_binary(), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def measure(publish: Publish, count: int, window: int) -> tuple[float, float]:
    """Client CPU microseconds per publish, and publishes per second."""
    payload = b"x" * 200
    cpu, began = time.process_time(), time.perf_counter()
    for start in range(0, count, window):
        await asyncio.gather(*(publish(f"bench.{i % 100}", payload) for i in range(start, start + window)))
    return (time.process_time() - cpu) / count * 1e6, count / (time.perf_counter() - began)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    throughput.announce()
    store = Path(tempfile.mkdtemp(prefix="fed-bench-publish-"))
    port = free_port()
    server = start_server(store, port)
    try:
        bus = await Bus.connect(f"nats://127.0.0.1:{port}", "bench-publish", retry_forever=True)
        await bus.ensure_stream(StreamSpec(name="BENCH", subjects=("bench.>",), max_age=600.0))

        async def ours(subject: str, data: bytes) -> object:
            return await bus.store(subject, data)

        async def theirs(subject: str, data: bytes) -> object:
            return await bus.js.publish(subject, data)

        for round_ in range(1, args.rounds + 1):
            nats_cpu, nats_rate = await measure(theirs, args.count, args.window)
            bus_cpu, bus_rate = await measure(ours, args.count, args.window)
            print(
                f"round {round_}: nats-py {nats_cpu:.1f} us/publish ({nats_rate:,.0f}/s); "
                f"bus {bus_cpu:.1f} us/publish ({bus_rate:,.0f}/s); "
                f"CPU bus / nats-py {bus_cpu / nats_cpu:.2f}"
            )
        await bus.close()
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
