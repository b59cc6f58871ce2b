"""``streams-trace demo``: show a tunnel carrying a connection on this machine.

It starts a real local gateway process, a listening program on the tunnel's
listener side and a client on its initiator side, sends data through the
tunnel, and says what happened at each step. Nothing leaves loopback.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from ..errors import ExitCode, StreamsTraceError

PAYLOAD_BYTES = 4 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_checksum(listener: object, result: dict[str, object]) -> None:
    """The listening program: read to EOF, answer with the SHA-256 of what arrived."""
    from ..client import Listener

    assert isinstance(listener, Listener)
    try:
        conn, peer = listener.accept()
        with conn:
            digest, count = hashlib.sha256(), 0
            while data := conn.recv(1 << 16):
                digest.update(data)
                count += len(data)
            conn.sendall(digest.hexdigest().encode())
        result.update(received=count, peer=f"{peer[0]}:{peer[1]}")
    except OSError as exc:
        result["error"] = str(exc)


def _step(text: str) -> None:
    click.echo(f"  {text}")


@click.command()
@click.option("--keep", is_flag=True, help="Leave the gateway running until Ctrl-C.")
def demo(keep: bool) -> None:
    """Show a tunnel working on this machine, on the local gateway."""
    from .. import client, conf

    with tempfile.TemporaryDirectory(prefix="streams-trace-demo-") as folder:
        initiator_dir, listener_dir = Path(folder, "initiator"), Path(folder, "listener")
        listener_port = _free_port()
        click.echo("streams-trace demo: a Globus Streams tunnel on one machine")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "streams_trace", "gateway", "--listener-contact-string",
             f"127.0.0.1:{listener_port}", "--initiator-config-dir", str(initiator_dir),
             "--listener-config-dir", str(listener_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert gateway.stdout is not None
            tunnel_id = gateway.stdout.readline().strip()
            if not tunnel_id:
                raise StreamsTraceError(f"the gateway did not start: {gateway.stderr.read()}"
                                        if gateway.stderr else "the gateway did not start")
            initiator = conf.load(tunnel_id, initiator_dir)
            _step(f"1. gateway up: tunnel {tunnel_id}")
            _step(f"   initiator access point at {initiator.connector_contact_string}, "
                  f"contact string globus.{tunnel_id}:{initiator.fake_port}")
            _step(f"   confs (mode 0600, one LAN secret per side) in {folder}")

            result: dict[str, object] = {}
            with client.listen(tunnel_id, config_dir=listener_dir) as listener:
                server = threading.Thread(target=_serve_checksum, args=(listener, result))
                server.start()
                _step(f"2. listening program on 127.0.0.1:{listener_port} (the listener "
                      f"contact string), accepting only authenticated connections")
                started = time.monotonic()
                payload = os.urandom(PAYLOAD_BYTES)
                with client.connect(tunnel_id, config_dir=initiator_dir) as sock:
                    connected = time.monotonic()
                    _step(f"3. client connected through the tunnel in "
                          f"{(connected - started) * 1000:.1f} ms, handshake with the "
                          f"initiator access point done")
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                    answer = b""
                    while data := sock.recv(128):
                        answer += data
                server.join(timeout=30)
            if "error" in result or answer.decode() != hashlib.sha256(payload).hexdigest():
                raise StreamsTraceError(f"the data did not arrive intact: {result}",
                                        ExitCode.NETWORK)
            _step(f"4. the listening program received {result['received']} bytes from the "
                  f"listener access point ({result['peer']}), SHA-256 matches")
            click.echo("It works: the connection went program -> initiator AP -> listener AP "
                       "-> program, authenticated on each leg.")
            if keep:
                click.echo(f"The gateway keeps running; tunnel {tunnel_id}, confs in {folder}. "
                           f"Ctrl-C stops it.")
                gateway.wait()
        finally:
            if gateway.poll() is None:
                gateway.send_signal(signal.SIGTERM)
                gateway.wait(timeout=20)
