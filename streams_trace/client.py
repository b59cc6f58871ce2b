"""The in-process client API: use a tunnel from Python without any tracing.

This does in a Python program what the official preload library does inside a
traced one: ``connect`` opens an authenticated connection to a tunnel's
initiator access point, and ``listen`` returns a ``Listener`` whose ``accept``
hands out only connections that passed the LAN handshake. Both read the
tunnel's conf file, as written by ``streams-trace environment initialize`` or
by the local gateway.

    sock = streams_trace.connect(TUNNEL_ID)            # initiator side
    with streams_trace.listen(TUNNEL_ID) as listener:  # listener side
        conn, peer = listener.accept()
"""

from __future__ import annotations

import logging
import os
import socket
from types import TracebackType

from . import conf as confmod
from .errors import NetworkError
from .globus.lookup import current_conf
from .handshake import DEFAULT_TIMEOUT, Acceptor, Connector
from .lan import HandshakeError, handshake_blocking

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def connect(
    tunnel_id: str, *, config_dir: PathLike | None = None, timeout: float = DEFAULT_TIMEOUT
) -> socket.socket:
    """Open an authenticated connection through the tunnel (initiator side).

    Raises ``ConfError`` for a missing, insecure or expired conf and
    ``NetworkError`` when the access point is unreachable or refuses us.
    """
    tunnel = current_conf(tunnel_id, config_dir)  # refreshes a stale contact from Globus
    tunnel.check_not_expired()
    return connect_with_conf(tunnel, timeout=timeout)


def connect_with_conf(
    tunnel: confmod.TunnelConf, *, timeout: float = DEFAULT_TIMEOUT
) -> socket.socket:
    """``connect`` for a conf already loaded (the benchmarks reuse one)."""
    contact = tunnel.require_connector_contact()
    try:
        sock = socket.create_connection(contact.address, timeout=timeout)
    except OSError as exc:
        raise NetworkError(
            f"cannot reach the initiator access point {contact} of tunnel "
            f"{tunnel.tunnel_id}: {exc.strerror or exc}"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tunnel.secret is not None:
        try:
            handshake_blocking(sock, Connector(tunnel.secret, tunnel.tunnel_id, timeout=timeout))
        except BaseException:
            sock.close()
            raise
    sock.settimeout(None)
    return sock


class Listener:
    """A listening socket for the tunnel's listener contact string (listener side).

    ``accept`` returns only connections that passed the LAN handshake; any
    other is closed and logged, and ``accept`` goes on waiting. Handshakes run
    one at a time, each bounded by ``handshake_timeout``.
    """

    def __init__(
        self,
        tunnel: confmod.TunnelConf,
        *,
        address: tuple[str, int] | None = None,
        backlog: int = 128,
        handshake_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.tunnel = tunnel
        self.handshake_timeout = handshake_timeout
        if address is None:
            address = tunnel.require_listener_contact().address
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(backlog)
        except OSError:
            self.socket.close()
            raise
        self.refused = 0  # connections closed because their handshake failed

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return host, port

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        while True:
            conn, peer = self.socket.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tunnel.secret is None:
                return conn, peer
            try:
                handshake_blocking(
                    conn,
                    Acceptor(
                        self.tunnel.secret, self.tunnel.tunnel_id, timeout=self.handshake_timeout
                    ),
                )
            except HandshakeError as exc:
                self.refused += 1
                log.warning("refused a connection from %s:%s: %s", peer[0], peer[1], exc)
                conn.close()
                continue
            conn.settimeout(None)
            return conn, peer

    def fileno(self) -> int:
        return self.socket.fileno()

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def listen(
    tunnel_id: str,
    *,
    config_dir: PathLike | None = None,
    address: tuple[str, int] | None = None,
    backlog: int = 128,
    handshake_timeout: float = DEFAULT_TIMEOUT,
) -> Listener:
    """Listen on the tunnel's listener contact string (or ``address``)."""
    tunnel = confmod.load(tunnel_id, config_dir)
    tunnel.check_not_expired()
    return Listener(tunnel, address=address, backlog=backlog, handshake_timeout=handshake_timeout)
