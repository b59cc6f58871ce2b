"""``streams-trace gateway``: run a local pair of stream access points."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ..conf import config_dir
from .options import CONTACT, TUNNEL_ID


@click.command()
@click.option(
    "--listener-contact-string",
    "listener_contact",
    type=CONTACT,
    help="Where the listening program accepts connections (listener side).",
)
@click.option(
    "--initiator-config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the initiator side's conf (default: the conf folder).",
)
@click.option(
    "--listener-config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the listener side's conf (default: the conf folder).",
)
@click.option(
    "--tunnel-id",
    type=TUNNEL_ID,
    help="Serve this tunnel (reusing its confs and ports); default: a new one.",
)
@click.option(
    "--role",
    type=click.Choice(["both", "initiator", "listener"]),
    default="both",
    show_default=True,
    help="Which access points this process runs.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the initiator access point listens on.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Port of the initiator access point (default: the last run's, else any).",
)
@click.option(
    "--link",
    type=CONTACT,
    help="The listener access point's link address: where it listens "
    "(--role listener) or where to reach it (--role initiator).",
)
@click.option(
    "--link-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Secret of the access-point link, the same file on both hosts "
    "(written by --role listener when missing).",
)
@click.option(
    "--lifetime",
    "lifetime_minutes",
    # Ten years at most: the confs' expiry times stay ones any reader accepts.
    type=click.IntRange(1, 10 * 366 * 24 * 60),
    default=360,
    show_default=True,
    help="Minutes until the tunnel stops (at most ten years).",
)
@click.option(
    "--no-lan-secret",
    is_flag=True,
    help="Do not secure the LAN legs (as a gateway with lan_secret_required off).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the TOML state file (default: the conf folder of the side).",
)
def gateway(
    listener_contact,
    initiator_config_dir,
    listener_config_dir,
    tunnel_id,
    role,
    host,
    port,
    link,
    link_secret_file,
    lifetime_minutes,
    no_lan_secret,
    state_dir,
) -> None:
    """Run a local pair of stream access points (initiator and listener).

    The gateway creates a tunnel (or serves --tunnel-id), makes one LAN secret
    per side, writes the initiator's and the listener's conf files, prints the
    tunnel ID as the first line on stdout once the access points accept
    connections, and serves until SIGINT or SIGTERM.
    """
    from ..gateway.service import GatewayOptions, RunningGateway, run

    options = GatewayOptions(
        initiator_config_dir=config_dir(initiator_config_dir),
        listener_config_dir=config_dir(listener_config_dir),
        listener_contact=listener_contact,
        role=role,
        tunnel_id=tunnel_id,
        host=host,
        port=port,
        link=link,
        link_secret_file=link_secret_file,
        lifetime_minutes=lifetime_minutes,
        lan_secret=not no_lan_secret,
        state_dir=state_dir,
    )

    def ready(running: RunningGateway) -> None:
        click.echo(running.tunnel_id)  # the first line on stdout: scripts read it
        for ap in running.access_points:
            click.echo(
                f"streams-trace: {ap.name} for tunnel {running.tunnel_id} is up, "
                f"going on to {ap.onward}",
                err=True,
            )

    asyncio.run(run(options, ready))
