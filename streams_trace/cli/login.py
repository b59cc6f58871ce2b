"""``streams-trace login | logout | whoami``: the Globus login, as globus-cli has it."""

from __future__ import annotations

import click

from .environment import client_id_option


@click.command()
@client_id_option
@click.option(
    "--endpoint",
    "endpoints",
    metavar="ENDPOINT_ID",
    multiple=True,
    help="Also consent to this GCS endpoint (a stream access point's host), "
    "which hands out LAN secrets. Repeatable.",
)
@click.option("--force", is_flag=True, help="Log in again even when the tokens are valid.")
def login(client_id: str | None, endpoints: tuple[str, ...], force: bool) -> None:
    """Log in to Globus (prints a URL, reads the code: works without a browser here).

    With $STREAMS_TRACE_CLIENT_ID and $STREAMS_TRACE_CLIENT_SECRET set, logs
    in a service account with its client credentials instead.
    """
    import uuid

    from ..errors import UsageError
    from ..globus import auth

    try:
        endpoint_ids = [str(uuid.UUID(endpoint)) for endpoint in endpoints]
    except ValueError:
        raise UsageError(f"--endpoint {' '.join(endpoints)}: an endpoint ID is a UUID") from None
    with auth.make_app(auth.credentials(client_id), endpoints=endpoint_ids) as app:
        if not force and not app.login_required():
            click.echo("You are already logged in to Globus (use --force to log in again).")
            return
        auth.login(app, force=True)
        click.echo("You are logged in to Globus.")
        where = auth.token_file(app)
        if where:
            click.echo(f"Your tokens are kept in {where}")


@click.command()
@client_id_option
def logout(client_id: str | None) -> None:
    """Revoke and forget this tool's Globus tokens."""
    from ..globus import auth

    with auth.make_app(auth.credentials(client_id)) as app:
        held = auth.logout(app)
    if held:
        click.echo(f"You are logged out of Globus (revoked the tokens of {held} services).")
    else:
        click.echo("You were not logged in to Globus; nothing to revoke.")


@click.command()
@client_id_option
@click.option("-v", "--verbose", is_flag=True, help="Also print the identity ID, name, e-mail.")
def whoami(client_id: str | None, verbose: bool) -> None:
    """Print the Globus identity you are logged in as."""
    from ..globus import auth

    with auth.make_app(auth.credentials(client_id)) as app:
        info = auth.whoami(app)
    click.echo(info.get("preferred_username") or info.get("sub") or "unknown")
    if verbose:
        for key, label in (("sub", "ID"), ("name", "Name"), ("email", "Email")):
            if info.get(key):
                click.echo(f"{label}: {info[key]}")
