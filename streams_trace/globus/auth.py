"""Globus login with globus-sdk's app model: the client ID, the app, its tokens.

A person logs in with a *native app* (``UserApp``): the login prints a URL on
stderr and reads the authorization code from stdin, so it works on a headless
login node. A service account sets a client ID *and* secret in the environment
and logs in with client credentials (``ClientApp``), without a prompt.

The client ID comes from ``--client-id`` or ``$STREAMS_TRACE_CLIENT_ID``; the
project ships none, so users register their own (the error says how). Tokens
are kept where globus-sdk keeps them for an app:
``~/.globus/app/<CLIENT_ID>/streams-trace/tokens.json`` (refresh tokens are
requested, so a login lasts until unused for six months).

Scopes: Transfer (tunnels) and Auth (``whoami``) always; each stream access
point's GCS endpoint ``manage_collections`` scope when a LAN secret is asked for.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import click
import globus_sdk
from globus_sdk.login_flows import CommandLineLoginFlowManager

from .errors import GlobusAuthError, Subject, globus_errors, login_command

APP_NAME = "streams-trace"
CLIENT_ID_ENV = "STREAMS_TRACE_CLIENT_ID"
CLIENT_SECRET_ENV = "STREAMS_TRACE_CLIENT_SECRET"
REGISTER_URL = "https://app.globus.org/settings/developers"

TRANSFER_RESOURCE_SERVER = "transfer.api.globus.org"
TRANSFER_SCOPE = "urn:globus:auth:scope:transfer.api.globus.org:all"
AUTH_RESOURCE_SERVER = "auth.globus.org"
AUTH_SCOPES = ["openid", "profile", "email"]


def gcs_scope(endpoint_id: str) -> str:
    """The scope a GCS Manager wants for its API, ``lan_secrets`` included."""
    return f"urn:globus:auth:scope:{endpoint_id}:manage_collections"


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str | None = field(default=None, repr=False)  # never shown


def credentials(client_id: str | None = None) -> Credentials:
    """The client ID (option, else environment) and, for service accounts, the secret."""
    client_id = client_id or os.environ.get(CLIENT_ID_ENV) or None
    secret = os.environ.get(CLIENT_SECRET_ENV) or None
    if not client_id:
        raise GlobusAuthError(
            f"no Globus client ID: register a native app ('thick client') at {REGISTER_URL}, "
            f"then set {CLIENT_ID_ENV}=ID (streams-trace commands also take --client-id ID; "
            f"a service account sets {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV} to its client "
            f"credentials)"
        )
    try:
        client_id = str(uuid.UUID(client_id.strip()))
    except ValueError:
        raise GlobusAuthError(
            f"{client_id!r} is not a Globus client ID (a UUID); copy the Client UUID "
            f"shown at {REGISTER_URL}"
        ) from None
    return Credentials(client_id, secret)


class TerminalLoginFlow(CommandLineLoginFlowManager):
    """The command-line login, talking on stderr: stdout belongs to the tool's output."""

    def print_authorize_url(self, authorize_url: str) -> None:
        click.echo(
            "Log in to Globus: open this URL in any browser, log in, and paste the "
            f"authorization code it shows.\n\n  {authorize_url}\n",
            err=True,
        )

    def prompt_for_code(self) -> str:
        with self._handle_input_errors():
            click.echo("Authorization code: ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line:
                click.echo(err=True)  # end the prompt's line: the error gets its own
                raise EOFError
            return line.strip()


def make_app(creds: Credentials, *, endpoints: Iterable[str] = ()) -> globus_sdk.GlobusApp:
    """A UserApp (native app) or, with a client secret, a ClientApp."""
    scopes: dict[str, list[str]] = {
        TRANSFER_RESOURCE_SERVER: [TRANSFER_SCOPE],
        AUTH_RESOURCE_SERVER: list(AUTH_SCOPES),
    }
    for endpoint_id in endpoints:
        scopes[endpoint_id] = [gcs_scope(endpoint_id)]
    # Never start a login behind the user's back: commands decide (ensure_logged_in).
    with globus_errors(Subject("set up the Globus login")):
        if creds.client_secret is not None:
            return globus_sdk.ClientApp(
                APP_NAME,
                client_id=creds.client_id,
                client_secret=creds.client_secret,
                scope_requirements=scopes,
                config=globus_sdk.GlobusAppConfig(token_validation_error_handler=None),
            )
        config = globus_sdk.GlobusAppConfig(
            login_flow_manager=TerminalLoginFlow,
            request_refresh_tokens=True,
            token_validation_error_handler=None,
        )
        return globus_sdk.UserApp(
            APP_NAME, client_id=creds.client_id, scope_requirements=scopes, config=config
        )


def token_file(app: globus_sdk.GlobusApp) -> str | None:
    """Where the app keeps its tokens, when that is a file."""
    inner = app.token_storage.token_storage
    path = getattr(inner, "filepath", None)
    return str(path) if path else None


def ensure_logged_in(
    app: globus_sdk.GlobusApp, *, interactive: bool, endpoint_id: str | None = None
) -> None:
    """Make sure the app holds every token it needs (adding the endpoint's scope).

    A service account logs in silently. A person is asked to log in only when
    ``interactive`` (stdin is a terminal); otherwise the error says what to run.
    """
    subject = Subject("log in to Globus", endpoint_id=endpoint_id)
    with globus_errors(subject):
        if endpoint_id is not None:
            app.add_scope_requirements({endpoint_id: [gcs_scope(endpoint_id)]})
        if not app.login_required():
            return
        if isinstance(app, globus_sdk.ClientApp) or interactive:
            app.login()
            return
    if endpoint_id is not None and _has_token(app, TRANSFER_RESOURCE_SERVER):
        raise GlobusAuthError(
            f"Globus needs your consent for endpoint {endpoint_id} (to fetch the LAN "
            f"secret); run '{login_command(endpoint_id)}'"
        )
    raise GlobusAuthError(f"not logged in to Globus; run '{login_command(endpoint_id)}'")


def _has_token(app: globus_sdk.GlobusApp, resource_server: str) -> bool:
    return app.token_storage.token_storage.get_token_data(resource_server) is not None


def login(app: globus_sdk.GlobusApp, *, force: bool = False) -> None:
    with globus_errors(Subject("log in to Globus")):
        app.login(force=force)


def logout(app: globus_sdk.GlobusApp) -> int:
    """Revoke and forget every token of this app; return how many resource servers had one."""
    with globus_errors(Subject("log out of Globus")):
        held = len(app.token_storage.token_storage.get_token_data_by_resource_server())
        app.logout(sweep=True)
    return held


def whoami(app: globus_sdk.GlobusApp) -> dict[str, Any]:
    """The logged-in identity, from Globus Auth's userinfo."""
    ensure_logged_in(app, interactive=False)
    with globus_errors(Subject("ask Globus Auth who you are")):
        info = globus_sdk.AuthClient(app=app).userinfo()
    return dict(info.data)
