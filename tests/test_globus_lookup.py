"""The shared contact lookup, confs written by `initialize` on a real gateway, lazy imports."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams_trace import client
from streams_trace import conf as confmod
from streams_trace.contact import Contact
from streams_trace.errors import NetworkError
from streams_trace.globus.errors import GlobusTunnelError
from streams_trace.globus.lookup import current_conf, needs_lookup

from .conftest import REPO, Gateway, ptrace_problem, start_gateway
from .test_environment import (
    INITIATOR_ENDPOINT,
    INITIATOR_SECRET,
    LISTENER_ENDPOINT,
    Globus,
    globus,
    log_in,
    run_cli,
    serve_access_points,
    serve_endpoints,
    serve_lan_secret,
    serve_listener_update,
    serve_tunnel,
    write_initiator_conf,
)

__all__ = ["globus"]  # the fixture, shared with test_environment

TUNNEL_ID = "0e8a675b-6b84-4220-89e4-a6a7a0d823fb"


def refuse(conf: confmod.TunnelConf) -> confmod.TunnelConf:
    raise AssertionError(f"looked up {conf.tunnel_id} in Globus")


def initiator_conf(directory: Path, *, looked_up_ago: float, ttl: float = 10) -> None:
    now = time.time()
    confmod.save(confmod.TunnelConf(
        tunnel_id=TUNNEL_ID, lankey="secret", connector_contact_string=Contact("127.0.0.1", 9),
        update_time=float(int(now - looked_up_ago)), connector_contact_string_ttl=ttl,
        fake_port=3425, tunnel_expiration_time=float(int(now + 3600))), directory)


# -- current_conf ------------------------------------------------------------------------


def test_a_fresh_contact_is_returned_as_loaded(tmp_path: Path) -> None:
    initiator_conf(tmp_path, looked_up_ago=3)
    conf = current_conf(TUNNEL_ID, tmp_path, refresh=refuse)
    assert conf == confmod.load(TUNNEL_ID, tmp_path)


def test_a_stale_contact_is_refreshed_and_saved(tmp_path: Path) -> None:
    initiator_conf(tmp_path, looked_up_ago=30)
    seen: list[confmod.TunnelConf] = []

    def refresh(conf: confmod.TunnelConf) -> confmod.TunnelConf:
        seen.append(conf)
        return dataclasses.replace(conf, connector_contact_string=Contact("127.0.0.2", 7000),
                                   update_time=float(int(time.time())))

    conf = current_conf(TUNNEL_ID, tmp_path, refresh=refresh)
    assert len(seen) == 1 and conf.connector_contact_string == Contact("127.0.0.2", 7000)
    assert confmod.load(TUNNEL_ID, tmp_path).connector_contact_string == Contact("127.0.0.2",
                                                                                  7000)
    # Fresh now: no second lookup.
    current_conf(TUNNEL_ID, tmp_path, refresh=refuse)


def test_staleness_follows_the_ttl_and_the_clock(tmp_path: Path) -> None:
    initiator_conf(tmp_path, looked_up_ago=0, ttl=60)
    loaded = confmod.load(TUNNEL_ID, tmp_path)
    assert not needs_lookup(loaded, time.time() + 30)
    assert needs_lookup(loaded, time.time() + 90)
    with pytest.raises(AssertionError, match="looked up"):
        current_conf(TUNNEL_ID, tmp_path, now=time.time() + 90, refresh=refuse)


def test_a_listener_side_conf_is_never_looked_up(tmp_path: Path) -> None:
    confmod.save(confmod.TunnelConf(tunnel_id=TUNNEL_ID, lankey="secret", update_time=1.0,
                                    listener_contact_string=Contact("127.0.0.1", 8888)),
                 tmp_path)
    assert current_conf(TUNNEL_ID, tmp_path, refresh=refuse).listener_contact_string


def test_a_refresh_that_finds_the_tunnel_stopped_leaves_the_conf(globus: Globus) -> None:
    log_in()
    write_initiator_conf(globus, looked_up_ago=60)
    serve_tunnel(globus, "STOPPED", status="stopped by its owner")
    with pytest.raises(GlobusTunnelError, match="is stopped"):
        current_conf(globus.tunnel_id)
    assert globus.load_conf().connector_contact_string == Contact("198.51.100.7", 50123)


# -- the real gateway ----------------------------------------------------------------------


def test_gateway_confs_never_trigger_a_lookup(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path)
    try:
        in_an_hour = time.time() + 3600
        for directory in (gateway.initiator_dir, gateway.listener_dir):
            conf = current_conf(gateway.tunnel_id, directory, now=in_an_hour, refresh=refuse)
            assert not needs_lookup(conf, in_an_hour)
    finally:
        gateway.stop()


def echo_once(listener: client.Listener) -> None:
    conn, _ = listener.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


@dataclasses.dataclass
class InitializedSides:
    """A real gateway, and the confs `initialize` wrote for its tunnel on each side."""

    gateway: Gateway
    initiator_dir: Path
    listener_dir: Path


@pytest.fixture
def initialized(globus: Globus, tmp_path: Path) -> Iterator[InitializedSides]:
    """The gateway stands in for both GCS endpoints: Globus (mocked) hands out its
    access point's contact and its LAN secrets, as real Globus hands out GCS's."""
    gateway = start_gateway(tmp_path / "gateway")
    try:
        made_by_gateway = {
            side: confmod.load(gateway.tunnel_id, directory)
            for side, directory in (("initiator", gateway.initiator_dir),
                                    ("listener", gateway.listener_dir))
        }
        g = dataclasses.replace(globus, tunnel_id=gateway.tunnel_id)
        access_point = made_by_gateway["initiator"].require_connector_contact()
        listener_contact = made_by_gateway["listener"].require_listener_contact()
        log_in(INITIATOR_ENDPOINT, LISTENER_ENDPOINT)
        serve_tunnel(g, "AWAITING_LISTENER")
        serve_listener_update(g, listener_contact)
        serve_tunnel(g, "ACTIVE", initiator=(access_point.host, access_point.port))
        serve_access_points(g)
        serve_endpoints()
        for side in ("listener", "initiator"):
            serve_lan_secret(g, side, secret=made_by_gateway[side].lankey)

        listener_dir, initiator_dir = tmp_path / "listener-side", tmp_path / "initiator-side"
        result = run_cli("environment", "initialize", "--config-dir", str(listener_dir),
                         "--listener-contact-string", str(listener_contact), g.tunnel_id)
        assert result.code == 0, result
        result = run_cli("environment", "initialize", "--config-dir", str(initiator_dir),
                         g.tunnel_id)
        assert result.code == 0, result
        yield InitializedSides(gateway, initiator_dir, listener_dir)
    finally:
        gateway.stop()


def test_confs_written_by_initialize_work_unchanged_with_the_client_api(
    initialized: InitializedSides,
) -> None:
    tunnel_id = initialized.gateway.tunnel_id
    with client.listen(tunnel_id, config_dir=initialized.listener_dir) as listener:
        server = threading.Thread(target=echo_once, args=(listener,), daemon=True)
        server.start()
        with client.connect(tunnel_id, config_dir=initialized.initiator_dir) as sock:
            payload = os.urandom(1 << 20)
            sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
            sender.start()
            received = bytearray()
            while len(received) < len(payload):
                chunk = sock.recv(65536)
                assert chunk, "the tunnel closed early"
                received += chunk
            sender.join(10)
        server.join(10)
        assert bytes(received) == payload and listener.refused == 0

    # The secrets matter: a conf holding another secret is refused by the access point.
    wrong = confmod.load(tunnel_id, initialized.initiator_dir)
    wrong.lankey = INITIATOR_SECRET
    with pytest.raises(NetworkError):
        client.connect_with_conf(wrong).close()


SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("listening", flush=True)
conn, _ = server.accept()
line = conn.makefile("rb").readline()
conn.sendall(b"echo:" + line)
conn.close()
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as conn:
    conn.sendall(b"hello through globus\\n")
    print(conn.makefile("rb").readline().decode(), end="")
"""


def test_confs_written_by_initialize_work_unchanged_with_streams_run(
    initialized: InitializedSides,
) -> None:
    problem = ptrace_problem()
    if problem:
        pytest.skip(problem)
    tunnel_id = initialized.gateway.tunnel_id
    listener_conf = confmod.load(tunnel_id, initialized.listener_dir)
    initiator_conf = confmod.load(tunnel_id, initialized.initiator_dir)
    streams_run = [sys.executable, "-c", "from streams_trace.cli.run import main; main()"]
    server = subprocess.Popen(
        [*streams_run, "--config-dir", str(initialized.listener_dir), tunnel_id,
         sys.executable, "-c", SERVER, str(listener_conf.require_listener_contact().port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "listening\n", server.stderr
        result = subprocess.run(
            [*streams_run, "--config-dir", str(initialized.initiator_dir), tunnel_id,
             sys.executable, "-c", CLIENT, f"globus.{tunnel_id}", str(initiator_conf.fake_port)],
            capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout) == (0, "echo:hello through globus\n"), (
            result.stderr)
        server.wait(timeout=30)
        assert server.returncode == 0, server.stderr
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()


# -- globus_sdk stays out of what does not talk to Globus ------------------------------------


@pytest.mark.parametrize("args", [
    ["streams-trace", "--help"], ["streams-trace", "gateway", "--help"],
    ["streams-trace", "environment", "--help"],
    ["streams-trace", "environment", "initialize", "--help"],
    ["streams-trace", "environment", "show", TUNNEL_ID],
    ["streams-trace", "environment", "contact-lookup", TUNNEL_ID],
    ["streams-trace", "environment", "cleanup"], ["streams-trace", "login", "--help"],
    ["streams-run", "--help"],
], ids=" ".join)
def test_commands_that_do_not_talk_to_globus_never_import_it(
    args: list[str], tmp_path: Path
) -> None:
    initiator_conf(tmp_path, looked_up_ago=0, ttl=600)  # fresh: contact-lookup asks nobody
    module = "streams_trace.cli.run" if args[0] == "streams-run" else "streams_trace.cli"
    code = (
        "import sys\n"
        f"from {module} import main\n"
        f"sys.argv = {args!r}\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('IMPORTED' if 'globus_sdk' in sys.modules else 'CLEAN', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 confmod.CONFIG_DIR_ENV: str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "CLEAN", result.stderr


def test_the_client_api_never_imports_globus_sdk() -> None:
    code = ("import sys, streams_trace, streams_trace.client, streams_trace.conf, "
            "streams_trace.globus.lookup, streams_trace.globus.errors\n"
            "streams_trace.connect\n"
            "print('globus_sdk' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
