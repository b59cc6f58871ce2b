"""``streams-trace demo``: the main job, on one machine, saying what happens.

It starts a real local gateway, a web server under ``streams-run`` on the
tunnel's listener side and a client under ``streams-run`` on its initiator side
(the static busybox wget where the machine has one, else Python), fetches a
file through the tunnel, and checks it arrived intact. Where ptrace is not
permitted, it says so and shows the same path with the in-process client API.
Nothing leaves loopback.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from ..contact import free_port
from ..errors import ExitCode, StreamsTraceError

STREAMS_RUN = [sys.executable, "-c", "from streams_trace.cli.run import main; main()"]
PAYLOAD_BYTES = 1024 * 1024
PYTHON_FETCH = (
    "import sys, urllib.request; "
    "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=30).read())"
)


def is_static(path: str) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
                return False
            phoff, = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            handle.seek(phoff)
            table = handle.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3  # PT_INTERP
               for i in range(phnum))


def _static_busybox() -> str | None:
    path = shutil.which("busybox")
    return path if path and is_static(path) else None


def _wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StreamsTraceError(f"the server ended early: {process.communicate()[1]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise StreamsTraceError(f"the server did not listen on 127.0.0.1:{port}")


def _ptrace_problem() -> str | None:
    from ..trace.probes import ptrace_permitted

    probe = ptrace_permitted()
    return None if probe.ok else probe.detail


def _step(text: str) -> None:
    click.echo(f"  {text}")


def _with_streams_run(tunnel_id: str, folder: Path, listener_port: int, fake_port: int) -> None:
    """Both sides under streams-run: a web server and a (static where possible) client."""
    www = folder / "www"
    www.mkdir()
    payload = secrets.token_bytes(PAYLOAD_BYTES)
    (www / "data.bin").write_bytes(payload)
    server = subprocess.Popen(
        [*STREAMS_RUN, "--config-dir", str(folder / "listener"), tunnel_id, sys.executable,
         "-m", "http.server", "--bind", "127.0.0.1", str(listener_port), "--directory",
         str(www)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(listener_port, server)
        _step(f"2. web server (python3 -m http.server) under streams-run on the listener "
              f"side, at 127.0.0.1:{listener_port}: it only ever sees authenticated connections")
        url = f"http://globus.{tunnel_id}:{fake_port}/data.bin"
        busybox = _static_busybox()
        client = [busybox, "wget", "-q", "-O", "-", url] if busybox else [
            sys.executable, "-c", PYTHON_FETCH, url]
        kind = "static busybox wget" if busybox else "python3 urllib (no static busybox here)"
        started = time.monotonic()
        result = subprocess.run(
            [*STREAMS_RUN, "-d", "--config-dir", str(folder / "initiator"), tunnel_id, *client],
            capture_output=True, timeout=120)
        elapsed = time.monotonic() - started
        diagnostics = result.stderr.decode(errors="replace").splitlines()
        _step(f"3. client ({kind}) under streams-run on the initiator side fetched {url}")
        for line in diagnostics:
            if "connect" in line:
                _step(f"   streams-run -d: {line.removeprefix('streams-run: ')}")
        if result.returncode != 0 or result.stdout != payload:
            raise StreamsTraceError(
                f"the client failed (exit {result.returncode}): {' '.join(diagnostics[-3:])}",
                ExitCode.NETWORK)
        _step(f"4. {len(result.stdout)} bytes arrived in {elapsed:.2f} s, SHA-256 "
              f"{hashlib.sha256(result.stdout).hexdigest()[:16]}... matches the server's file")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _with_client_api(tunnel_id: str, folder: Path) -> None:
    """The same path from Python, without tracing: the client API on both sides."""
    import threading

    from .. import client

    payload = secrets.token_bytes(PAYLOAD_BYTES)
    received: dict[str, bytes] = {}

    def serve(listener: client.Listener) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # timed out, or closed because the client side failed
            return
        with conn:
            data = b""
            while chunk := conn.recv(1 << 16):
                data += chunk
            received["data"] = data
            conn.sendall(hashlib.sha256(data).digest())

    with client.listen(tunnel_id, config_dir=folder / "listener") as listener:
        listener.socket.settimeout(30)  # a failed client must not leave it waiting forever
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        _step("2. listening program (client API) on the listener side")
        with client.connect(tunnel_id, config_dir=folder / "initiator") as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(64):
                answer += chunk
        thread.join(timeout=30)
    if received.get("data") != payload or answer != hashlib.sha256(payload).digest():
        raise StreamsTraceError("the data did not arrive intact", ExitCode.NETWORK)
    _step(f"3. client (client API) sent {len(payload)} bytes through the tunnel; "
          f"the listening program received them intact")


@click.command()
@click.option("--client-api", is_flag=True,
              help="Use the in-process client API instead of streams-run on both sides.")
@click.option("--keep", is_flag=True, help="Leave the gateway running until Ctrl-C.")
def demo(client_api: bool, keep: bool) -> None:
    """Show a tunnel working on this machine, on the local gateway."""
    from .. import conf

    with tempfile.TemporaryDirectory(prefix="streams-trace-demo-") as name:
        folder = Path(name)
        listener_port = free_port()
        click.echo("streams-trace demo: a Globus Streams tunnel on this machine")
        gateway_log = open(folder / "gateway.log", "w+")  # noqa: SIM115 - closed below
        gateway = subprocess.Popen(
            [sys.executable, "-m", "streams_trace", "gateway", "--listener-contact-string",
             f"127.0.0.1:{listener_port}", "--initiator-config-dir", str(folder / "initiator"),
             "--listener-config-dir", str(folder / "listener")],
            # stderr to a file: nobody reads it while the gateway runs (--keep: for hours).
            stdout=subprocess.PIPE, stderr=gateway_log, text=True)
        try:
            assert gateway.stdout is not None
            tunnel_id = gateway.stdout.readline().strip()
            if not tunnel_id:
                gateway.wait(timeout=20)
                gateway_log.seek(0)
                raise StreamsTraceError(f"the gateway did not start: {gateway_log.read().strip()}")
            initiator = conf.load(tunnel_id, folder / "initiator")
            assert initiator.fake_port is not None
            _step(f"1. local gateway up: tunnel {tunnel_id}")
            _step(f"   initiator access point at {initiator.connector_contact_string}; "
                  f"contact string globus.{tunnel_id}:{initiator.fake_port}")
            _step(f"   one LAN secret per side, in 0600 conf files under {folder}")
            problem = None if client_api else _ptrace_problem()
            if problem:
                click.echo(f"  note: ptrace does not work here ({problem}); streams-run cannot "
                           f"run, so the demo uses the in-process client API instead", err=True)
            if client_api or problem:
                _with_client_api(tunnel_id, folder)
            else:
                _with_streams_run(tunnel_id, folder, listener_port, initiator.fake_port)
            click.echo("It works: program -> initiator access point -> listener access point "
                       "-> program, with the LAN handshake on both legs.")
            if keep:
                click.echo(f"The gateway keeps running (tunnel {tunnel_id}, confs in {folder});"
                           f" Ctrl-C stops it.")
                gateway.wait()
        finally:
            if gateway.poll() is None:
                gateway.send_signal(signal.SIGTERM)
                gateway.wait(timeout=20)
            gateway_log.close()
