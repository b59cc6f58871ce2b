"""The relay data path: the native splice helper against direct loopback and the Python relays.

    python benchmarks/bench_relay.py [--seconds 2] [--connections 2000] [--runs 3] [--idle 1000]

In one run, with the same load for every path, measured in rounds that visit the
paths in turn (so drift hits all alike; medians reported):

- bulk throughput of one TCP connection (iperf3, 3 s by default) direct, through
  the native helper, through the Python splice pump and through a Python asyncio relay;
- small connections per second (open, one byte each way, close) direct and through
  each relay;
- the helper's resident memory with ``--idle`` idle pairs joined.

The relays run in this process (the native one in its helper process); the load
(iperf3; a Python echo server and client for small connections) runs outside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams_trace.contact import free_port  # noqa: E402
from streams_trace.relay import Pump  # noqa: E402
from streams_trace.relay.native import NativePump, helper_path  # noqa: E402
from streams_trace.relay.pump import SplicePump  # noqa: E402

# The small-connection load, in two processes of their own: an echo server that answers
# one byte per connection, and a client that opens COUNT connections one after the other
# through HOST:PORT and prints connections per second.
ECHO_SERVER = """
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        data = conn.recv(1)
        if data:
            conn.sendall(data)
"""
RATE_CLIENT = """
import socket, sys, time
target_port, count = int(sys.argv[1]), int(sys.argv[2])
def once():
    with socket.create_connection(("127.0.0.1", target_port)) as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
for _ in range(50):  # warm up
    once()
started = time.perf_counter()
for _ in range(count):
    once()
print(count / (time.perf_counter() - started))
"""


class PumpRelay:
    """Accepts on a loopback port, connects onward, hands each pair to a pump."""

    def __init__(self, pump: Pump, target_port: int) -> None:
        self.pump, self.target_port = pump, target_port
        self.server = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                inbound, _ = self.server.accept()
            except OSError:
                return
            try:
                outbound = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                inbound.close()
                continue
            for sock in (inbound, outbound):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pump.add(inbound, outbound)

    def close(self) -> None:
        self.server.close()


class AsyncioRelay:
    """The plain asyncio relay: a stream pair copying 64 KiB chunks each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024), self.loop
        ).result()
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            onward_reader, onward_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
                if sink.can_write_eof():
                    sink.write_eof()
            except OSError:
                pass

        await asyncio.gather(copy(reader, onward_writer), copy(onward_reader, writer))
        writer.close()
        onward_writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def iperf_bulk(port: int, seconds: float) -> float:
    """MB/s received by the iperf3 server, one TCP stream to 127.0.0.1:port."""
    result = subprocess.run(
        ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
        capture_output=True, text=True, timeout=seconds + 30)
    report = json.loads(result.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"]) / 8 / 1e6


def connection_rate(target_port: int, count: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", RATE_CLIENT, str(target_port), str(count)],
        capture_output=True, text=True, timeout=300, check=True)
    return float(result.stdout)


def helper_rss_with_idle_pairs(count: int) -> tuple[float, float, int]:
    """(RSS MiB before, RSS MiB with ``count`` idle pairs, descriptors held) of the helper."""
    pump = NativePump()
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    outer: list[socket.socket] = []

    def rss_mib() -> float:
        for line in Path(f"/proc/{pump.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    try:
        time.sleep(0.2)
        before = rss_mib()
        for _ in range(count):
            ends = []
            for _ in range(2):
                client = socket.create_connection(server.getsockname())
                accepted, _ = server.accept()
                outer.append(client)
                ends.append(accepted)
            pump.add(ends[0], ends[1])
        time.sleep(0.5)
        with_pairs = rss_mib()
        descriptors = len(list(Path(f"/proc/{pump.pid}/fd").iterdir()))
    finally:
        for sock in outer:
            sock.close()
        pump.close()
        server.close()
    return before, with_pairs, descriptors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="iperf3 time per bulk run")
    parser.add_argument("--connections", type=int, default=2000, help="per rate run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=int, default=1000, help="idle pairs for the RSS figure")
    args = parser.parse_args()
    if shutil.which("iperf3") is None:
        print("bench_relay: needs iperf3 (apt-get install iperf3)", file=sys.stderr)
        return 2
    if helper_path() is None:
        print("bench_relay: the native helper is not built (pip install -e . with a C compiler)",
              file=sys.stderr)
        return 2

    iperf_port, echo_port = free_port(), free_port()
    iperf = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(echo_port)],
                            stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
    native, python = NativePump(), SplicePump()
    relays: dict[str, Callable[[int], int]] = {}
    made: list[PumpRelay | AsyncioRelay] = []

    def through(factory: Callable[[int], PumpRelay | AsyncioRelay]) -> Callable[[int], int]:
        by_target: dict[int, int] = {}

        def port_for(target: int) -> int:
            if target not in by_target:
                relay = factory(target)
                made.append(relay)
                by_target[target] = relay.port
            return by_target[target]

        return port_for

    relays["direct"] = lambda target: target
    relays["native splice helper"] = through(lambda target: PumpRelay(native, target))
    relays["python splice pump"] = through(lambda target: PumpRelay(python, target))
    relays["python asyncio relay"] = through(AsyncioRelay)
    bulk: dict[str, list[float]] = {name: [] for name in relays}
    rate: dict[str, list[float]] = {name: [] for name in relays}
    try:
        time.sleep(0.3)  # iperf3 listening
        for _ in range(args.runs):
            for name, port_for in relays.items():
                bulk[name].append(iperf_bulk(port_for(iperf_port), args.seconds))
                time.sleep(0.2)
            for name, port_for in relays.items():
                rate[name].append(connection_rate(port_for(echo_port), args.connections))
        rss_before, rss_idle, descriptors = helper_rss_with_idle_pairs(args.idle)
    finally:
        for relay in made:
            relay.close()
        native.close()
        python.close()
        for process in (iperf, echo):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)

    direct_bulk, direct_rate = statistics.median(bulk["direct"]), statistics.median(rate["direct"])
    native_bulk = statistics.median(bulk["native splice helper"])
    print(f"# bulk: one iperf3 stream for {args.seconds:g} s; rate: {args.connections} "
          f"connections one after another; median of {args.runs} rounds")
    print(f"{'path':<24}{'bulk MB/s':>11}{'vs direct':>11}{'conns/s':>10}{'vs direct':>11}")
    for name in relays:
        b, r = statistics.median(bulk[name]), statistics.median(rate[name])
        print(f"{name:<24}{b:>11.0f}{b / direct_bulk:>11.2f}{r:>10.0f}{r / direct_rate:>11.2f}")
    print()
    asyncio_bulk = statistics.median(bulk["python asyncio relay"])
    python_bulk = statistics.median(bulk["python splice pump"])
    native_rate = statistics.median(rate["native splice helper"])
    print(f"{'target':<52}{'measured':>10}{'goal':>8}")
    for label, value, goal in (
        ("native relay bulk / direct", native_bulk / direct_bulk, ">= 0.65"),
        ("native relay bulk / asyncio relay", native_bulk / asyncio_bulk, ">= 1.5"),
        ("native relay bulk / python splice pump", native_bulk / python_bulk, ""),
        ("native relay small conns/s / direct", native_rate / direct_rate, ">= 0.4"),
    ):
        print(f"{label:<52}{value:>10.2f}{goal:>8}")
    print(f"{'helper RSS with no pairs, MiB':<52}{rss_before:>10.1f}")
    print(f"{f'helper RSS with {args.idle} idle pairs, MiB':<52}{rss_idle:>10.1f}{'<= 8':>8}")
    print(f"{f'helper descriptors with {args.idle} idle pairs':<52}{descriptors:>10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
