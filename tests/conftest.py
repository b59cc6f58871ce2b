"""Shared fixtures: a real local gateway process and helpers to talk through it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams_trace.contact import free_port

from .programs.echo_server import read_line

__all__ = ["free_port"]  # re-exported for the test modules

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _signals_at_their_defaults_for_programs() -> None:
    """Under nohup, or in the background of a script, SIGHUP, SIGINT and SIGQUIT come
    ignored, and streams-run rightly passes that on to its program, which the signal
    tests then cannot reach. A handler of our own stays as deaf for the tests' process,
    while exec gives every child the default back, as an interactive shell would."""
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        if signal.getsignal(number) is signal.SIG_IGN:
            signal.signal(number, lambda *_: None)


def ptrace_problem() -> str | None:
    """Why this process cannot trace a child here, or None when it can."""
    from streams_trace.trace.probes import ptrace_permitted

    probe = ptrace_permitted()
    return None if probe.ok else f"ptrace does not work here ({probe.detail}); streams-run needs it"


def streams_trace_command(*args: str) -> list[str]:
    """Run the CLI of this checkout with this interpreter."""
    return [sys.executable, "-m", "streams_trace", *args]



# Why a test of the native pump skips: one reason, which the compiler-less install test
# (test_native_build.py) accepts.
NATIVE_MISSING = "the native helper is not built (no C compiler when streams-trace was installed)"
NATIVE_CONNECTS_MISSING = ("the native connect path is not built, so the default variant "
                           "already redirects connects in Python")

@dataclass
class Gateway:
    """A running `streams-trace gateway` process and what it wrote."""

    process: subprocess.Popen[str]
    tunnel_id: str
    initiator_dir: Path
    listener_dir: Path
    listener_port: int

    @property
    def listener_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.listener_port)

    def stop(self) -> str:
        """SIGTERM it, wait, and return what it wrote on stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err


def start_gateway(tmp_path: Path, *extra: str, listener_port: int | None = None,
                  env: dict[str, str] | None = None, wrapper: Sequence[str] = ()) -> Gateway:
    """``wrapper``: a command to run the gateway under (such as ip netns exec NAME)."""
    listener_port = listener_port or free_port()
    initiator_dir, listener_dir = tmp_path / "initiator", tmp_path / "listener"
    process = subprocess.Popen(
        [*wrapper, *streams_trace_command(
            "gateway", "--listener-contact-string", f"127.0.0.1:{listener_port}",
            "--initiator-config-dir", str(initiator_dir),
            "--listener-config-dir", str(listener_dir), *extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    line = process.stdout.readline().strip()
    if not line:
        _, err = process.communicate(timeout=10)
        raise AssertionError(f"gateway did not start: {err}")
    assert time.monotonic() < deadline
    return Gateway(process, line, initiator_dir, listener_dir, listener_port)


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One local gateway for a whole test module; its tests take turns on the listener port."""
    running = start_gateway(tmp_path_factory.mktemp("gateway"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A local gateway whose listener side expects a program on a free loopback port."""
    running = start_gateway(tmp_path)
    try:
        yield running
    finally:
        running.stop()


class EchoListener:
    """The listener side as the client API: accept, authenticate, answer "echo:" + line."""

    def __init__(self, tunnel_id: str, config_dir: Path) -> None:
        import streams_trace

        self.listener = streams_trace.listen(tunnel_id, config_dir=config_dir)
        self.served = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"echo:" + read_line(conn))
            except ConnectionResetError:
                return  # the client side was cut (a test that kills the supervisor)
        with self.lock:
            self.served += 1

    def close(self) -> None:
        self.listener.socket.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.fixture
def echo(tunnel: Gateway) -> Iterator[EchoListener]:
    listener = EchoListener(tunnel.tunnel_id, tunnel.listener_dir)
    try:
        yield listener
    finally:
        listener.close()
