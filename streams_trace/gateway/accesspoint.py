"""A stream access point: accept, authenticate, connect onward, authenticate, pump.

Both access points of a tunnel do the same thing with different parties:

    initiator AP:  program --LAN leg 1--> AP --link--> listener AP
    listener AP:   initiator AP --link--> AP --LAN leg 3--> listening program

Each accepted connection must pass the handshake as acceptor (with the LAN
secret on the initiator side, the link secret on the listener side) before
anything is done on its behalf; then the access point connects onward, runs the
handshake as connector, and hands the pair to the data pump.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

from ..contact import Contact
from ..handshake import DEFAULT_TIMEOUT, Acceptor, Connector
from ..lan import HandshakeError, handshake_async
from ..relay import Pump
from ..relay.pump import DoneCallback, close_with_reset

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
BACKLOG = 4096
# A party of an idle stream that vanishes without a reset (a rebooted node, a cut link)
# is found out after KEEPALIVE_IDLE s of silence and KEEPALIVE_COUNT unanswered probes,
# and its stream is ended; without keep-alive the other side would wait for it forever.
# (Bytes in flight to it are the kernel's retransmission limit's business.)
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 10, 6


@dataclass
class Stats:
    accepted: int = 0
    refused: int = 0  # inbound handshakes that failed
    failed_onward: int = 0  # onward connections that could not be made or authenticated
    carried: int = 0  # pairs handed to the pump
    bytes_in: int = 0
    bytes_out: int = 0
    resets: int = 0


@dataclass
class AccessPoint:
    """One access point. ``inbound_secret`` None means the inbound leg is not secured."""

    name: str
    tunnel_id: str
    inbound_secret: bytes | None = field(repr=False)
    onward: Contact
    onward_secret: bytes | None = field(repr=False)
    pump: Pump
    handshake_timeout: float = DEFAULT_TIMEOUT
    stats: Stats = field(default_factory=Stats)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    async def serve(self, server: socket.socket) -> None:
        """Accept connections on ``server`` (listening, non-blocking) until cancelled."""
        loop = asyncio.get_running_loop()
        failures, last_said = 0, 0.0
        while True:
            try:
                conn, peer = await loop.sock_accept(server)
            except OSError as exc:
                # Out of descriptors or a connection aborted before accept: keep serving,
                # saying so at most every 10 s (this can repeat 20 times a second).
                failures += 1
                if time.monotonic() - last_said >= 10:
                    log.warning("%s: accept failed: %s (%d times since the last report)",
                                self.name, exc, failures)
                    failures, last_said = 0, time.monotonic()
                await asyncio.sleep(0.05)
                continue
            self.stats.accepted += 1
            task = asyncio.create_task(self._bridge(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _bridge(self, inbound: socket.socket, peer: tuple[str, int]) -> None:
        started = time.monotonic()
        source = f"{peer[0]}:{peer[1]}"
        outbound: socket.socket | None = None
        try:
            outbound = await self._open(inbound, source)
        finally:
            if outbound is None:  # refused, failed or cancelled: nothing to carry
                inbound.close()  # (reset already, by _open, once its handshake passed)
        if outbound is None:
            return
        self.stats.carried += 1
        log.debug(
            "%s: %s -> %s connected in %.1f ms",
            self.name,
            source,
            self.onward,
            (time.monotonic() - started) * 1000,
        )
        self.pump.add(inbound, outbound, on_done=self._on_done(source))

    async def _open(self, inbound: socket.socket, source: str) -> socket.socket | None:
        """Authenticate ``inbound``, then connect and authenticate onward; None on failure."""
        inbound.setblocking(False)
        _tune(inbound)
        if self.inbound_secret is not None:
            try:
                await handshake_async(
                    inbound,
                    Acceptor(self.inbound_secret, self.tunnel_id, timeout=self.handshake_timeout),
                )
            except HandshakeError as exc:
                self.stats.refused += 1
                log.warning(
                    "%s: refused connection from %s: %s",
                    self.name,
                    source,
                    exc.failure.text if exc.failure else exc,
                )
                return None
        outbound: socket.socket | None = None
        try:
            outbound = await self._connect_onward()
            if self.onward_secret is not None:
                await handshake_async(
                    outbound,
                    Connector(self.onward_secret, self.tunnel_id, timeout=self.handshake_timeout),
                )
        except (HandshakeError, OSError, asyncio.TimeoutError) as exc:
            self.stats.failed_onward += 1
            log.warning(
                "%s: connection from %s: cannot go on to %s: %s",
                self.name,
                source,
                self.onward,
                _describe(exc),
            )
            if outbound is not None:
                outbound.close()
            # The peer has its ACCEPT and takes the stream as open: a plain close would
            # look like an empty, complete reply. A reset says it failed.
            close_with_reset(inbound)
            return None
        except BaseException:
            if outbound is not None:
                outbound.close()
            close_with_reset(inbound)
            raise
        return outbound

    def _on_done(self, source: str) -> DoneCallback:
        def done(forward: int, backward: int, reset: bool) -> None:
            self.stats.bytes_in += forward
            self.stats.bytes_out += backward
            self.stats.resets += reset
            log.debug(
                "%s: %s closed%s, %d bytes in, %d bytes out",
                self.name,
                source,
                " by a reset" if reset else "",
                forward,
                backward,
            )

        return done

    async def _connect_onward(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        if self.onward.is_ip:
            # Numeric, as local contacts are: asyncio's getaddrinfo would take a trip
            # through its thread pool for every connection.
            family = socket.AF_INET6 if ":" in self.onward.host else socket.AF_INET
            address: tuple = self.onward.address
        else:
            infos = await loop.getaddrinfo(self.onward.host, self.onward.port,
                                           type=socket.SOCK_STREAM)
            family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            _tune(sock)
            await asyncio.wait_for(loop.sock_connect(sock, address), CONNECT_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        return sock


def _tune(sock: socket.socket) -> None:
    """Options for both sockets of a stream: no Nagle delay, and keep-alive."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen(BACKLOG)
        server.setblocking(False)
    except BaseException:
        server.close()
        raise
    return server
