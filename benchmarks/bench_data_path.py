"""streams-run's two data paths against each other and against a Python asyncio relay.

    python benchmarks/bench_data_path.py [--megabytes 500] [--connections 300] [--runs 3]

One Python worker program (the one bench_run.py uses) goes through a real local
gateway, in one run and in interleaved rounds (so drift hits every path alike):

- under ``streams-run --data-path direct`` (the program's own socket is the tunnel
  connection);
- under ``streams-run --data-path relay`` (loopback hop, the supervisor's handshake,
  the pump: the native helper where built, else the Python splice pump);
- untraced, through a Python asyncio relay (its own process) that does the same job as
  relay mode (accept on loopback, connect to the access point, LAN handshake, copy
  bytes with asyncio streams): the baseline a pure-Python relay would give.

It reports medians: bulk throughput relay/direct (target >= 0.65), relay/asyncio
(target >= 1.5) and small connections per second relay/direct (target >= 0.4).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_run import STREAMS_RUN, WORKER, serve, start_gateway  # noqa: E402

from streams_trace import conf  # noqa: E402
from streams_trace.client import Listener  # noqa: E402
from streams_trace.conf import TunnelConf  # noqa: E402

COPY_CHUNK = 256 * 1024


class AsyncioRelay:
    """A Python asyncio relay in front of the initiator access point, on its own thread."""

    def __init__(self, tunnel: TunnelConf) -> None:
        self.tunnel = tunnel
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _serve(self, program_reader: asyncio.StreamReader,
                     program_writer: asyncio.StreamWriter) -> None:
        import socket

        from streams_trace.handshake import Connector
        from streams_trace.lan import handshake_async

        contact = self.tunnel.connector_contact_string
        assert contact is not None
        sock = socket.socket()
        sock.setblocking(False)
        await self.loop.sock_connect(sock, contact.address)
        secret = self.tunnel.secret
        if secret is not None:
            await handshake_async(sock, Connector(secret, self.tunnel.tunnel_id))
        ap_reader, ap_writer = await asyncio.open_connection(sock=sock)

        async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(COPY_CHUNK):
                    writer.write(data)
                    await writer.drain()
                writer.write_eof()
            except OSError:
                writer.close()

        await asyncio.gather(copy(program_reader, ap_writer), copy(ap_reader, program_writer))
        program_writer.close()
        ap_writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def asyncio_relay_child(tunnel_id: str, initiator: str) -> None:
    """Run the asyncio relay as its own process (its own interpreter, its own GIL)."""
    relay = AsyncioRelay(conf.load(tunnel_id, initiator))
    print(relay.port, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    relay.close()


def start_asyncio_relay(tunnel_id: str, initiator: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, __file__, "--asyncio-relay-child", tunnel_id,
                                str(initiator)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def run_worker(path: str, tunnel_id: str, initiator: Path, what: str, amount: int,
               script: Path, relay_port: int) -> list[float]:
    tunnel = conf.load(tunnel_id, initiator)
    if path == "asyncio":
        command = [sys.executable, str(script), "by-name", tunnel_id, str(initiator),
                   "127.0.0.1", str(relay_port), what, str(amount)]
    else:
        command = [*STREAMS_RUN, "--config-dir", str(initiator), "--data-path", path,
                   tunnel_id, sys.executable, str(script), "by-name", tunnel_id,
                   str(initiator), f"globus.{tunnel_id}", str(tunnel.fake_port), what,
                   str(amount)]
    env = {**os.environ, "STREAMS_TRACE_REPO": str(REPO)}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    return [float(value) for value in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--asyncio-relay-child", nargs=2, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.asyncio_relay_child:
        asyncio_relay_child(*options.asyncio_relay_child)
        return

    from streams_trace.relay import pump_choice

    workdir = Path(tempfile.mkdtemp(prefix="bench-data-path-"))
    script = workdir / "worker.py"
    script.write_text(WORKER)
    gateway, tunnel_id, initiator, listener_dir, _ = start_gateway(workdir)
    listener = Listener(conf.load(tunnel_id, listener_dir))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    relay, relay_port = start_asyncio_relay(tunnel_id, initiator)
    paths = ("direct", "relay", "asyncio")
    bulk: dict[str, list[float]] = {path: [] for path in paths}
    rate: dict[str, list[float]] = {path: [] for path in paths}
    try:
        for _ in range(options.runs):  # interleaved rounds
            for path in paths:
                bulk[path].append(run_worker(path, tunnel_id, initiator, "bulk",
                                             options.megabytes, script, relay_port)[0])
                rate[path].append(run_worker(path, tunnel_id, initiator, "conns",
                                             options.connections, script, relay_port)[0])
    finally:
        relay.communicate("", timeout=20)
        listener.close()
        gateway.terminate()
        gateway.wait(timeout=20)
        shutil.rmtree(workdir, ignore_errors=True)

    b = {path: statistics.median(values) for path, values in bulk.items()}
    r = {path: statistics.median(values) for path, values in rate.items()}
    rows = [
        ("bulk throughput (MB/s): relay vs direct", f"{b['direct']:.0f}", f"{b['relay']:.0f}",
         f"{b['relay'] / b['direct']:.2f}", ">= 0.65"),
        ("bulk throughput (MB/s): relay vs Python asyncio relay", f"{b['asyncio']:.0f}",
         f"{b['relay']:.0f}", f"{b['relay'] / b['asyncio']:.2f}", ">= 1.5"),
        ("small connections per second: relay vs direct", f"{r['direct']:.0f}",
         f"{r['relay']:.0f}", f"{r['relay'] / r['direct']:.2f}", ">= 0.4"),
        ("small connections per second: relay vs Python asyncio relay", f"{r['asyncio']:.0f}",
         f"{r['relay']:.0f}", f"{r['relay'] / r['asyncio']:.2f}", "-"),
    ]
    header = ("figure", "baseline", "relay", "ratio", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    pump, why = pump_choice()
    print(f"streams-run data paths, medians of {options.runs} interleaved rounds "
          f"({options.megabytes} MB bulk, {options.connections} connections; "
          f"relay pump: {pump}, {why})")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
