"""LAN secrets from a GCS Manager: ``POST <gcs_manager_url>/api/lan_secrets``.

Each side of a tunnel has its own secret, made by the GCS endpoint that hosts
that side's stream access point. The request names the tunnel and the access
point; the answer's ``data[0]`` holds ``secret``, ``id`` and ``expires``.

Like the official tool, a side whose secret cannot be had goes on without
one ("the LAN leg is not secured"), because a gateway that does not require
the secret answers with none or with an error. Login, consent and permission
failures are not that case: they stop the command with what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import globus_sdk

from ..errors import StreamsTraceError
from .errors import GlobusAuthError, Subject, translate

DATA_TYPE = "lan_secret_create#1.0.0"


@dataclass(frozen=True)
class LanSecret:
    secret: str
    secret_id: str | None
    expires: str | None

    def __repr__(self) -> str:  # never show the secret in logs or tracebacks
        return f"LanSecret(secret=<hidden>, secret_id={self.secret_id!r}, expires={self.expires!r})"


@dataclass(frozen=True)
class SecretResult:
    """A secret, or why the LAN leg stays unsecured."""

    secret: LanSecret | None
    unsecured_reason: str | None = None


def fetch_lan_secret(
    app: globus_sdk.GlobusApp,
    *,
    gcs_manager_url: str | None,
    endpoint_id: str,
    tunnel_id: str,
    access_point_id: str,
) -> SecretResult:
    if not gcs_manager_url:
        return SecretResult(None, f"endpoint {endpoint_id} has no GCS Manager URL in Globus")
    subject = Subject(
        f"get the LAN secret from the GCS Manager of endpoint {endpoint_id}",
        tunnel_id=tunnel_id,
        endpoint_id=endpoint_id,
    )
    body = {
        "DATA_TYPE": DATA_TYPE,
        "tunnel_id": tunnel_id,
        "stream_access_point_id": access_point_id,
    }
    try:
        client = globus_sdk.GCSClient(
            gcs_manager_url, authorizer=app.get_authorizer(endpoint_id)
        )
        response = client.post("lan_secrets", data=body)
    except Exception as exc:
        translated = translate(exc, subject)
        if translated is None:
            raise
        if isinstance(translated, GlobusAuthError):
            raise translated from exc
        passing = isinstance(exc, globus_sdk.NetworkError) or (
            isinstance(exc, globus_sdk.GlobusAPIError) and (exc.http_status or 0) >= 500)
        if passing:
            # Try again later: a failure that passes must not switch LAN authentication
            # off (the conf written without a secret would replace a good one).
            raise translated from exc
        return SecretResult(None, _reason(translated))
    return _parse(response.data, endpoint_id)


def _reason(error: StreamsTraceError) -> str:
    return str(error).removeprefix("cannot ")


def _parse(document: object, endpoint_id: str) -> SecretResult:
    entries = document.get("data") if isinstance(document, dict) else None
    entry = entries[0] if isinstance(entries, list) and entries else None
    if not isinstance(entry, dict) or not entry.get("secret"):
        return SecretResult(None, f"the GCS Manager of endpoint {endpoint_id} gave no secret")
    return SecretResult(
        LanSecret(
            secret=str(entry["secret"]),
            secret_id=str(entry["id"]) if entry.get("id") else None,
            expires=str(entry["expires"]) if entry.get("expires") else None,
        )
    )
