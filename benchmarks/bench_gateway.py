"""The local gateway's bulk throughput and connections per second, against direct loopback.

    python benchmarks/bench_gateway.py [--megabytes 2000] [--connections 500] [--runs 3]

Both figures are measured in the same run with the same harness, once over a direct
loopback TCP connection and once through a real `streams-trace gateway` process
(initiator AP, link, listener AP, both LAN handshakes) with the client API on both
ends; the table shows medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import streams_trace  # noqa: E402
from streams_trace import conf  # noqa: E402
from streams_trace.client import Listener, connect_with_conf  # noqa: E402
from streams_trace.contact import free_port  # noqa: E402
from streams_trace.gateway.tunnel import read_state  # noqa: E402

BLOCK = 1 << 20


def sink(conn: socket.socket) -> None:
    """Read to EOF, then answer one byte (so the sender can time the whole transfer)."""
    buffer = bytearray(BLOCK)
    with conn:
        while conn.recv_into(buffer):
            pass
        conn.sendall(b"k")


def echo_once(conn: socket.socket) -> None:
    with conn:
        data = conn.recv(1)
        if data:
            conn.sendall(data)


def bulk(open_connection: Callable[[], socket.socket], megabytes: int) -> float:
    """MB/s for ``megabytes`` sent over one connection."""
    payload = memoryview(os.urandom(BLOCK))
    started = time.perf_counter()
    with open_connection() as sock:
        for _ in range(megabytes):
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b"k"
    return megabytes / (time.perf_counter() - started)


def connection_rate(open_connection: Callable[[], socket.socket], count: int) -> float:
    """Connections per second: open, one byte each way, close."""
    started = time.perf_counter()
    for _ in range(count):
        with open_connection() as sock:
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
    return count / (time.perf_counter() - started)


class Server:
    """A listening socket (plain, or the client API's Listener) served by threads."""

    def __init__(self, accept: Callable[[], socket.socket], close: Callable[[], None]):
        self.accept, self.close_listener = accept, close
        self.handler: Callable[[socket.socket], None] = sink
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.accept()
            except OSError:
                return
            threading.Thread(target=self.handler, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.close_listener()


def measure(open_connection: Callable[[], socket.socket], server: Server,
            args: argparse.Namespace) -> dict[str, float]:
    rates, throughputs = [], []
    for _ in range(args.runs):
        server.handler = sink
        throughputs.append(bulk(open_connection, args.megabytes))
        server.handler = echo_once
        rates.append(connection_rate(open_connection, args.connections))
    return {"bulk": statistics.median(throughputs), "rate": statistics.median(rates)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    # Direct loopback: the baseline.
    plain = socket.create_server(("127.0.0.1", 0), backlog=1024)
    plain_address = plain.getsockname()
    direct_server = Server(lambda: plain.accept()[0], plain.close)
    direct = measure(lambda: socket.create_connection(plain_address), direct_server,
                     args)
    direct_server.close()

    # Through the gateway.
    with tempfile.TemporaryDirectory() as folder:
        listener_port = free_port()
        gateway = subprocess.Popen(
            [sys.executable, "-m", "streams_trace", "gateway", "--listener-contact-string",
             f"127.0.0.1:{listener_port}", "--initiator-config-dir", f"{folder}/i",
             "--listener-config-dir", f"{folder}/l"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        assert gateway.stdout is not None
        tunnel_id = gateway.stdout.readline().strip()
        try:
            listener = streams_trace.listen(tunnel_id, config_dir=f"{folder}/l")
            assert isinstance(listener, Listener)
            tunnel_server = Server(lambda: listener.accept()[0], listener.close)
            initiator = conf.load(tunnel_id, f"{folder}/i")
            pump = read_state(Path(folder, "i", f"gateway-{tunnel_id}.toml"))["pump"]
            through = measure(lambda: connect_with_conf(initiator), tunnel_server,
                              args)
            tunnel_server.close()
        finally:
            gateway.terminate()
            gateway.wait(timeout=20)

    print(f"# {args.megabytes} MB per bulk run, {args.connections} connections per rate run, "
          f"median of {args.runs} runs; gateway data pump: {pump}")
    print(f"{'figure':<32}{'direct':>12}{'gateway':>12}{'ratio':>8}")
    for key, label in (("bulk", "bulk throughput (MB/s)"), ("rate", "connections per second")):
        print(f"{label:<32}{direct[key]:>12.0f}{through[key]:>12.0f}"
              f"{through[key] / direct[key]:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
