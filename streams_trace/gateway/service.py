"""Run the local gateway: one or both access points of a tunnel, until a signal.

``role="both"`` runs the initiator and the listener access point in one process,
linked over loopback. ``role="initiator"`` and ``role="listener"`` run one each,
so the two can sit on two hosts, joined by the link address and a shared link
secret file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import secrets
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..contact import Contact, globus_name
from ..errors import ConfError, NetworkError, UsageError
from ..relay import best_pump
from . import tunnel as tunnelmod
from .accesspoint import AccessPoint, Stats, listening_socket

log = logging.getLogger(__name__)

ROLES = ("both", "initiator", "listener")


@dataclass
class GatewayOptions:
    initiator_config_dir: Path
    listener_config_dir: Path
    listener_contact: Contact | None = None
    role: str = "both"
    tunnel_id: str | None = None
    host: str = "127.0.0.1"  # where the initiator access point listens
    port: int = 0  # its port; 0 reuses the last run's port, else any free one
    link: Contact | None = None  # the listener AP's link address
    link_secret_file: Path | None = None
    lifetime_minutes: int = 360
    lan_secret: bool = True
    state_dir: Path | None = None

    def check(self) -> None:
        if self.role not in ROLES:
            raise UsageError(f"--role must be one of {', '.join(ROLES)}")
        if self.role in ("both", "listener") and self.listener_contact is None:
            raise UsageError(
                "--listener-contact-string HOST:PORT is required: where the "
                "listening program accepts connections"
            )
        if self.role == "initiator" and (self.link is None or self.tunnel_id is None):
            raise UsageError(
                "--role initiator needs --link HOST:PORT (the listener access "
                "point) and --tunnel-id"
            )
        if self.listener_contact is not None and self.role in ("both", "listener"):
            own = [("--link", self.link)]
            if self.role == "both" and self.port:
                own.append(("--port", Contact(self.host, self.port)))
            for option, contact in own:
                if contact is not None and contact.overlaps(self.listener_contact):
                    raise UsageError(
                        f"{option} {contact} takes the listener contact string "
                        f"{self.listener_contact}: the gateway would listen where it "
                        "should deliver; give another port"
                    )
        if self.role != "both" and self.link_secret_file is None:
            raise UsageError(
                f"--role {self.role} needs --link-secret-file FILE (the same file on both hosts)"
            )
        if (
            self.role == "both"
            and self.initiator_config_dir.resolve() == self.listener_config_dir.resolve()
        ):
            raise UsageError(
                "the initiator and listener confs of one tunnel have the same "
                "file name: give different --initiator-config-dir and "
                "--listener-config-dir"
            )
        if self.lifetime_minutes <= 0:
            raise UsageError("--lifetime must be a positive number of minutes")
        for option, folder in (("--initiator-config-dir", self.initiator_config_dir),
                               ("--listener-config-dir", self.listener_config_dir),
                               ("--state-dir", self.state_dir)):
            try:  # the state file names them, in UTF-8 TOML
                str(folder).encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"{option} {os.fsencode(str(folder))!r} is not UTF-8; "
                                 "choose a folder whose path is") from None


@dataclass
class RunningGateway:
    tunnel_id: str
    state_file: Path
    access_points: list[AccessPoint] = field(default_factory=list)
    servers: list[socket.socket] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, Stats]:
        return {ap.name: ap.stats for ap in self.access_points}


def _raise_descriptor_limit() -> None:
    """Each stream holds four descriptors here, each handshake one or two: the common soft
    limit of 1024 is a few hundred streams. Take what the hard limit allows (the
    gateway's own processes only; the native helper does the same for itself)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20),
                                hard))


def _bind_preferring(host: str, wanted: int, previous: int | None,
                     avoid: int | None = None) -> socket.socket:
    """Listen on ``wanted``; with 0, try the previous run's port first, then any but
    ``avoid``: the listener contact's port, free until its program starts, which the
    kernel could otherwise hand to an access point that would then talk to itself."""
    try:
        if wanted != 0:
            return listening_socket(host, wanted)
        if previous and previous != avoid:
            with contextlib.suppress(OSError):
                return listening_socket(host, previous)
        return _any_port_but(host, avoid)
    except OSError as exc:
        hint = " (already in use)" if exc.errno == errno.EADDRINUSE else ""
        raise NetworkError(
            f"cannot listen on {Contact(host, wanted)}{hint}: {exc.strerror}"
        ) from None


def _any_port_but(host: str, avoid: int | None) -> socket.socket:
    """Listen on a port the kernel picks, other than ``avoid``."""
    refused: list[socket.socket] = []  # held open so the kernel picks another port
    try:
        while True:
            try:
                server = listening_socket(host, 0)
            except OSError:
                if refused:
                    raise NetworkError(f"cannot listen on {host}: the only free port is "
                                       f"the listener contact string's, {avoid}") from None
                raise
            if server.getsockname()[1] != avoid:
                return server
            refused.append(server)
    finally:
        for server in refused:
            server.close()


async def run(
    options: GatewayOptions,
    ready: Callable[[RunningGateway], None],
    stop: asyncio.Event | None = None,
) -> RunningGateway:
    """Serve until ``stop`` is set, SIGINT/SIGTERM arrive, or the tunnel expires."""
    options.check()
    _raise_descriptor_limit()
    tunnel_id = options.tunnel_id or str(uuid.uuid4())
    state_dir = options.state_dir or (
        options.listener_config_dir if options.role == "listener" else options.initiator_config_dir
    )
    state_file = tunnelmod.state_path(state_dir, tunnel_id)
    previous = tunnelmod.read_state(state_file)
    tunnelmod.check_state_folder(state_file)
    expires = time.time() + options.lifetime_minutes * 60
    gateway = RunningGateway(tunnel_id, state_file)
    pump = best_pump()
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    serving: list[asyncio.Task[None]] = []
    try:
        if options.link_secret_file is not None:
            link_secret = tunnelmod.read_or_create_link_secret(
                options.link_secret_file, create=options.role == "listener"
            )
        else:
            link_secret = secrets.token_hex(32).encode()
        state: dict[str, object] = {
            "tunnel_id": tunnel_id,
            "role": options.role,
            "pid": os.getpid(),
            "started": int(time.time()),
            "expires": int(expires),
            "lan_secret_required": options.lan_secret,
            "pump": pump.name,
        }

        # Every port first: a start that fails on one leaves no conf behind.
        listener_port = options.listener_contact.port if options.listener_contact else None
        link = options.link
        link_server: socket.socket | None = None
        if options.role in ("both", "listener"):
            link_host = link.host if link else "127.0.0.1"
            link_server = _bind_preferring(
                link_host, link.port if link else 0, _previous_port(previous, "link"),
                avoid=listener_port,
            )
            gateway.servers.append(link_server)
            link = Contact(link_host, link_server.getsockname()[1])
        server = None
        if options.role in ("both", "initiator"):
            server = _bind_preferring(
                options.host, options.port, _previous_port(previous, "initiator_contact_string"),
                avoid=listener_port,
            )
            gateway.servers.append(server)
        assert link is not None
        state["link"] = str(link)

        if link_server is not None:
            assert options.listener_contact is not None
            side = tunnelmod.listener_conf(
                tunnel_id,
                options.listener_config_dir,
                options.listener_contact,
                expires,
                options.lan_secret,
            )
            side.save()
            listener_ap = AccessPoint(
                "listener AP",
                tunnel_id,
                link_secret,
                options.listener_contact,
                side.conf.secret,
                pump,
            )
            gateway.access_points.append(listener_ap)
            serving.append(asyncio.create_task(listener_ap.serve(link_server)))
            state["listener_contact_string"] = str(options.listener_contact)
            state["listener_conf"] = str(side.conf.path)

        if server is not None:
            contact = Contact(options.host, server.getsockname()[1])
            side = tunnelmod.initiator_conf(
                tunnel_id, options.initiator_config_dir, contact, expires, options.lan_secret
            )
            side.save()
            initiator_ap = AccessPoint(
                "initiator AP", tunnel_id, side.conf.secret, link, link_secret, pump
            )
            gateway.access_points.append(initiator_ap)
            serving.append(asyncio.create_task(initiator_ap.serve(server)))
            state["initiator_contact_string"] = str(contact)
            state["fake_port"] = side.conf.fake_port
            state["contact_string"] = f"{globus_name(tunnel_id)}:{side.conf.fake_port}"
            state["initiator_conf"] = str(side.conf.path)

        tunnelmod.write_state(state_file, state)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError, ValueError):  # not the main thread
                loop.add_signal_handler(signum, stop.set)
        ready(gateway)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(expires - time.time(), 0))
        if not stop.is_set():
            log.warning("tunnel %s reached the end of its lifetime; stopping", tunnel_id)
    finally:
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
        for ap in gateway.access_points:
            await ap.stop()
        for server in gateway.servers:
            server.close()
        pump.close()
        for name, stats in gateway.stats.items():
            log.info("%s: %s", name, stats)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
    return gateway


def _previous_port(state: dict[str, object], key: str) -> int | None:
    value = state.get(key)
    if not isinstance(value, str):
        return None
    try:
        return int(value.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise ConfError(
            f"gateway state has a bad {key}: {value!r}; delete the state file"
        ) from None
