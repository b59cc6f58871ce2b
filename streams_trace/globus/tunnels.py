"""Tunnels and stream access points, through ``globus_sdk.TransferClient``.

A tunnel document (JSON:API, ``/v2/tunnels/<ID>``) says its ``state``, where
the initiator access point accepts programs (``initiator_ip_address`` and
``initiator_port``, known once the listener side registered) and which stream
access points it joins. An access point names its host GCS endpoint, whose
Transfer document holds the ``gcs_manager_url`` that hands out LAN secrets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import globus_sdk

from ..conf import parse_time
from ..contact import Contact, ContactError, parse_contact
from .errors import TUNNEL_CREATE_HINT, GlobusTunnelError, Subject, globus_errors

AWAITING_LISTENER = "AWAITING_LISTENER"
ACTIVE = "ACTIVE"
STOPPED_STATES = ("STOPPING", "STOPPED")


@dataclass(frozen=True)
class Tunnel:
    """What this tool needs from a tunnel document."""

    tunnel_id: str
    state: str
    status: str | None
    initiator_access_point: str | None
    listener_access_point: str | None
    initiator_contact: Contact | None
    listener_contact: Contact | None
    expiration_time: float | None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Tunnel:
        data = document.get("data") or {}
        attributes = data.get("attributes") or {}
        relationships = data.get("relationships") or {}
        return cls(
            tunnel_id=str(data.get("id")),
            state=str(attributes.get("state") or "UNKNOWN"),
            status=attributes.get("status"),
            initiator_access_point=_related_id(relationships, "initiator"),
            listener_access_point=_related_id(relationships, "listener"),
            initiator_contact=_contact(
                attributes.get("initiator_ip_address"), attributes.get("initiator_port")
            ),
            listener_contact=_contact(
                attributes.get("listener_ip_address"), attributes.get("listener_port")
            ),
            expiration_time=_expiration(
                attributes.get("created_time"), attributes.get("lifetime_mins")
            ),
        )

    @property
    def is_stopped(self) -> bool:
        return self.state in STOPPED_STATES

    def check_usable(self) -> None:
        """Raise GlobusTunnelError for a stopped tunnel (Globus stops it when its lifetime ends).

        The state Globus reports decides, not created_time + lifetime_mins,
        which only estimates the expiration written to the conf.
        """
        if self.is_stopped:
            because = f" ({self.status})" if self.status else ""
            raise GlobusTunnelError(
                f"tunnel {self.tunnel_id} is {self.state.lower()}{because}; "
                f"{TUNNEL_CREATE_HINT} and initialize the environment again"
            )


def _related_id(relationships: dict[str, Any], name: str) -> str | None:
    related = (relationships.get(name) or {}).get("data") or {}
    return str(related["id"]) if related.get("id") else None


def _contact(ip: object, port: object) -> Contact | None:
    if not ip or not port:
        return None
    host = str(ip)
    try:
        return parse_contact(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except ContactError:
        return None


def _expiration(created: object, lifetime_minutes: object) -> float | None:
    """created_time + lifetime_mins; Globus writes UTC times without a zone."""
    if not created or not isinstance(lifetime_minutes, int):
        return None
    try:
        return parse_time(str(created)) + 60 * lifetime_minutes
    except ValueError:
        return None


def transfer_client(app: globus_sdk.GlobusApp) -> globus_sdk.TransferClient:
    return globus_sdk.TransferClient(app=app)


def get_tunnel(client: globus_sdk.TransferClient, tunnel_id: str) -> Tunnel:
    with globus_errors(Subject(f"read tunnel {tunnel_id}", tunnel_id=tunnel_id)):
        return Tunnel.from_document(client.get_tunnel(tunnel_id).data)


def wait_for_initiator_contact(
    client: globus_sdk.TransferClient,
    tunnel_id: str,
    *,
    timeout: float,
    poll_interval: float,
    progress: Callable[[Tunnel, float], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Tunnel:
    """Read the tunnel until its initiator contact is known (the listener registered).

    ``progress(tunnel, waited_seconds)`` is called before each wait, so the
    user sees why nothing happens. Raises GlobusTunnelError on a stopped tunnel
    or when ``timeout`` passes.
    """
    started = clock()
    while True:
        tunnel = get_tunnel(client, tunnel_id)
        tunnel.check_usable()
        if tunnel.initiator_contact is not None:
            return tunnel
        waited = clock() - started
        if waited >= timeout:
            raise GlobusTunnelError(
                f"tunnel {tunnel_id} is still {tunnel.state} after {int(waited)} s: the "
                f"listener side has not registered; run 'streams-trace environment initialize "
                f"--listener-contact-string IP:PORT {tunnel_id}' there, then try again "
                f"(or wait longer with --wait)"
            )
        progress(tunnel, waited)
        sleep(min(poll_interval, max(timeout - waited, 0.0)))


def register_listener(
    client: globus_sdk.TransferClient, tunnel_id: str, contact: Contact
) -> Tunnel:
    """Tell Globus where the listening program accepts connections."""
    document = {
        "data": {
            "type": "Tunnel",
            "attributes": {"listener_ip_address": contact.host, "listener_port": contact.port},
        }
    }
    subject = Subject(f"register the listener contact of tunnel {tunnel_id}", tunnel_id=tunnel_id)
    with globus_errors(subject):
        return Tunnel.from_document(client.update_tunnel(tunnel_id, document).data)


def host_endpoint(client: globus_sdk.TransferClient, access_point_id: str) -> str:
    """The ID of the GCS endpoint that hosts a stream access point."""
    subject = Subject(f"read stream access point {access_point_id}")
    with globus_errors(subject):
        document = client.get_stream_access_point(access_point_id).data
    endpoint_id = _related_id((document.get("data") or {}).get("relationships") or {},
                              "host_endpoint")
    if endpoint_id is None:
        raise GlobusTunnelError(
            f"stream access point {access_point_id} names no host endpoint; "
            f"ask its administrators to check it"
        )
    return endpoint_id


def gcs_manager_url(client: globus_sdk.TransferClient, endpoint_id: str) -> str | None:
    """The endpoint's GCS Manager URL, or None when its document has none."""
    subject = Subject(f"read endpoint {endpoint_id}", endpoint_id=endpoint_id)
    with globus_errors(subject):
        document = client.get_endpoint(endpoint_id).data
    url = document.get("gcs_manager_url")
    return str(url) if url else None
