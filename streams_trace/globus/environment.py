"""``environment initialize``: fill one side's conf file from Globus.

Initiator side: read the tunnel, wait while its listener has not registered,
take ``initiator_ip_address:initiator_port`` as the connector contact, get the
initiator access point's LAN secret, write the conf.

Listener side (a listener contact is given): register that contact with the
tunnel, get the listener access point's LAN secret, write the conf.

Either side, a LAN secret that cannot be had (the GCS Manager answers that there is
none, or there is no GCS Manager URL) leaves that leg unsecured; the result says why,
and the command says it plainly. A failure that may pass (network, 5xx) fails instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import globus_sdk

from .. import conf as confmod
from ..contact import Contact
from ..errors import ConfError, UsageError
from . import tunnels
from .auth import ensure_logged_in
from .errors import GlobusTunnelError
from .lansecrets import SecretResult, fetch_lan_secret


@dataclass
class InitializeRequest:
    tunnel_id: str
    directory: Path
    listener_contact: Contact | None = None
    globus_contacts: list[Contact] = field(default_factory=list)
    wait_timeout: float = 300.0
    poll_interval: float = 5.0
    interactive: bool = False

    @property
    def side(self) -> str:
        return "listener" if self.listener_contact else "initiator"


@dataclass
class InitializeResult:
    conf: confmod.TunnelConf
    path: Path
    side: str
    unsecured_reason: str | None


Progress = Callable[[tunnels.Tunnel, float], None]


def initialize(
    app: globus_sdk.GlobusApp, request: InitializeRequest, progress: Progress
) -> InitializeResult:
    if request.listener_contact and request.globus_contacts:
        raise UsageError(
            "--globus-contact is for the initiator side; leave out "
            "--listener-contact-string, or run the two sides separately"
        )
    if request.listener_contact and not request.listener_contact.is_ip:
        raise UsageError(
            f"--listener-contact-string {request.listener_contact}: give an IP address "
            f"(Globus keeps listener_ip_address), for example 10.0.2.164:8888"
        )
    ensure_logged_in(app, interactive=request.interactive)
    client = tunnels.transfer_client(app)
    if request.listener_contact is not None:
        tunnel = tunnels.get_tunnel(client, request.tunnel_id)
        tunnel.check_usable()
        tunnels.register_listener(client, request.tunnel_id, request.listener_contact)
        access_point = tunnel.listener_access_point
    else:
        tunnel = tunnels.wait_for_initiator_contact(
            client,
            request.tunnel_id,
            timeout=request.wait_timeout,
            poll_interval=request.poll_interval,
            progress=progress,
        )
        access_point = tunnel.initiator_access_point
    if access_point is None:
        raise GlobusTunnelError(
            f"tunnel {request.tunnel_id} names no {request.side} stream access point; "
            f"look at it with 'globus streams tunnel show {request.tunnel_id}'"
        )
    endpoint_id = tunnels.host_endpoint(client, access_point)
    secret = _lan_secret(app, client, request, endpoint_id, access_point)
    conf = _conf(request, tunnel, endpoint_id, secret)
    path = confmod.save(conf, request.directory)
    return InitializeResult(conf, path, request.side, secret.unsecured_reason)


def _lan_secret(
    app: globus_sdk.GlobusApp,
    client: globus_sdk.TransferClient,
    request: InitializeRequest,
    endpoint_id: str,
    access_point: str,
) -> SecretResult:
    url = tunnels.gcs_manager_url(client, endpoint_id)
    if url:
        ensure_logged_in(app, interactive=request.interactive, endpoint_id=endpoint_id)
    return fetch_lan_secret(
        app,
        gcs_manager_url=url,
        endpoint_id=endpoint_id,
        tunnel_id=request.tunnel_id,
        access_point_id=access_point,
    )


def _previous(request: InitializeRequest) -> confmod.TunnelConf | None:
    """The conf a previous initialize left, to keep its fake port and unknown keys."""
    try:
        return confmod.load(request.tunnel_id, request.directory)
    except ConfError:
        return None  # missing or unusable: this run writes a fresh one


def _conf(
    request: InitializeRequest,
    tunnel: tunnels.Tunnel,
    endpoint_id: str,
    secret: SecretResult,
) -> confmod.TunnelConf:
    previous = _previous(request)
    now = float(int(time.time()))
    conf = confmod.TunnelConf(
        tunnel_id=request.tunnel_id,
        lankey=secret.secret.secret if secret.secret else None,
        lankey_id=secret.secret.secret_id if secret.secret else None,
        update_time=now,
        endpoint_id=endpoint_id,
        tunnel_expiration_time=tunnel.expiration_time,
        extra=dict(previous.extra) if previous else {},
    )
    if request.listener_contact is not None:
        conf.listener_contact_string = request.listener_contact
        return conf
    conf.connector_contact_string = tunnel.initiator_contact
    conf.connector_contact_string_ttl = confmod.DEFAULT_CONTACT_TTL
    conf.fake_port = (
        previous.fake_port
        if previous and previous.fake_port
        else random.randint(*confmod.FAKE_PORT_RANGE)
    )
    conf.globus_contacts = list(request.globus_contacts) or (
        previous.globus_contacts if previous else []
    )
    return conf
