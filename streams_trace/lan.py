"""Run the LAN handshake (``handshake.py``) over real sockets.

Two thin drivers around the one protocol implementation: a blocking one for
the client API and an asyncio one for the gateway. Both read exactly
``bytes_needed`` so no application byte is consumed by the handshake.
"""

from __future__ import annotations

import socket
import time

from .errors import NetworkError
from .handshake import Failure, Handshake, State


class HandshakeError(NetworkError):
    """The LAN handshake failed; ``failure`` says why."""

    def __init__(self, message: str, failure: Failure | None) -> None:
        super().__init__(message)
        self.failure = failure


def _raise_failure(machine: Handshake, peer: str) -> None:
    raise HandshakeError(
        f"LAN handshake with {peer} failed: {machine.failure_text}", machine.failure
    )


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "peer"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def handshake_blocking(sock: socket.socket, machine: Handshake) -> None:
    """Drive ``machine`` to completion on a blocking socket; raise HandshakeError on failure."""
    peer = _peer_name(sock)
    previous_timeout = sock.gettimeout()
    try:
        out = machine.start()
        while True:
            if out:
                sock.sendall(out)
            if machine.done:
                break
            remaining = machine.deadline - time.monotonic()
            if remaining <= 0:
                machine.check_deadline()
                break
            sock.settimeout(remaining)
            try:
                data = sock.recv(machine.bytes_needed)
            except TimeoutError:
                machine.check_deadline(machine.deadline)
                break
            out = machine.receive(data)
    except OSError as exc:
        raise HandshakeError(f"LAN handshake with {peer} failed: {exc}", None) from None
    finally:
        sock.settimeout(previous_timeout)
    if machine.state is not State.AUTHENTICATED:
        _raise_failure(machine, peer)


async def handshake_async(sock: socket.socket, machine: Handshake) -> None:
    """Drive ``machine`` on a non-blocking socket inside asyncio; raise HandshakeError."""
    import asyncio  # only the gateway needs it; blocking users of the client API do not

    loop = asyncio.get_running_loop()
    peer = _peer_name(sock)

    async def run() -> None:
        out = machine.start()
        while True:
            if out:
                await loop.sock_sendall(sock, out)
            if machine.state is not State.IN_PROGRESS:
                return
            out = machine.receive(await loop.sock_recv(sock, machine.bytes_needed))

    try:
        await asyncio.wait_for(run(), timeout=max(machine.deadline - time.monotonic(), 0))
    except asyncio.TimeoutError:
        machine.check_deadline(machine.deadline)
    except OSError as exc:
        raise HandshakeError(f"LAN handshake with {peer} failed: {exc}", None) from None
    if machine.state is not State.AUTHENTICATED:
        _raise_failure(machine, peer)
