"""``streams-trace environment``: conf files filled from Globus, shown and cleaned up.

``initialize`` and ``contact-lookup`` talk to Globus and import globus_sdk
when they run; ``show``, ``cleanup`` and ``--help`` never do.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import conf as confmod
from ..contact import Contact, globus_name
from ..errors import ConfError
from .options import CONTACT, TUNNEL_ID, Seconds

CLIENT_ID_HELP = "Globus client ID of your registered native app. Also $STREAMS_TRACE_CLIENT_ID."


def config_dir_option(function: Any) -> Any:
    return click.option(
        "--config-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder of the conf files. Default: $STREAMS_TRACE_CONFIG_DIR, "
        "else ~/.globus/streams.",
    )(function)


def client_id_option(function: Any) -> Any:
    return click.option("--client-id", metavar="ID", help=CLIENT_ID_HELP)(function)


@click.group()
def environment() -> None:
    """Initialize and inspect the per-tunnel conf files (talks to Globus).

    Run 'initialize' on each side of a tunnel created with 'globus streams
    tunnel create': on the listener side with --listener-contact-string, on
    the initiator side without it.
    """


@environment.command()
@click.option(
    "--listener-contact-string",
    "listener_contact",
    type=CONTACT,
    metavar="IP:PORT",
    help="Listener side: where the listening program accepts connections.",
)
@click.option(
    "--globus-contact",
    "globus_contacts",
    type=CONTACT,
    multiple=True,
    help="Initiator side: also send connections to this real HOST:PORT through the "
    "tunnel (so TLS names match). Repeatable.",
)
@click.option(
    "--wait",
    "wait_seconds",
    type=Seconds(0),
    metavar="SECONDS",
    default=300,
    show_default=True,
    help="Initiator side: seconds to wait for the listener side to register.",
)
@click.option(
    "--poll-interval",
    type=Seconds(0),
    default=5,
    hidden=True,
    help="Seconds between two reads of a tunnel that awaits its listener.",
)
@config_dir_option
@client_id_option
@click.argument("tunnel_id", type=TUNNEL_ID)
def initialize(
    listener_contact: Contact | None,
    globus_contacts: tuple[Contact, ...],
    wait_seconds: float,
    poll_interval: float,
    config_dir: Path | None,
    client_id: str | None,
    tunnel_id: str,
) -> None:
    """Fill this side's conf of TUNNEL_ID from Globus (contact, LAN secret)."""
    from ..globus.auth import credentials, make_app
    from ..globus.environment import InitializeRequest, initialize

    creds = credentials(client_id)
    directory = confmod.config_dir(config_dir)
    request = InitializeRequest(
        tunnel_id=tunnel_id,
        directory=directory,
        listener_contact=listener_contact,
        globus_contacts=list(globus_contacts),
        wait_timeout=wait_seconds,
        poll_interval=poll_interval,
        interactive=sys.stdin.isatty(),
    )
    click.echo(f"Initializing the environment for tunnel: {tunnel_id}")
    progress = _Progress(tunnel_id, wait_seconds)
    with make_app(creds) as app:
        try:
            result = initialize(app, request, progress)
        finally:
            progress.end()
    if result.unsecured_reason:
        click.echo(
            f"streams-trace: warning: the LAN leg of the {result.side} side is not secured "
            f"({result.unsecured_reason}); connections on it carry no LAN authentication",
            err=True,
        )
    click.echo(f"The environment is initialized for use with tunnel {tunnel_id}")
    click.echo(f"Your application key file base directory is {directory}/")
    conf = result.conf
    if conf.listener_contact_string is not None:
        click.echo(
            f"The listener access point will connect to {conf.listener_contact_string}: "
            f"start the listening program there"
        )
    else:
        click.echo(f"Your contact string is: {globus_name(tunnel_id)}:{conf.fake_port}")
        for contact in conf.globus_contacts:
            click.echo(f"Connections to {contact} also go through the tunnel")


class _Progress:
    """One line on stderr while a tunnel awaits its listener, rewritten on a terminal."""

    def __init__(self, tunnel_id: str, timeout: float) -> None:
        self.tunnel_id = tunnel_id
        self.timeout = timeout
        self.rewriting = sys.stderr.isatty()
        self.shown = False

    def __call__(self, tunnel: Any, waited: float) -> None:
        line = (
            f"streams-trace: tunnel {self.tunnel_id} is {tunnel.state}: waiting for its "
            f"listener side to register ({int(waited)} s of {int(self.timeout)} s)"
        )
        if self.rewriting:
            click.echo("\r" + line, nl=False, err=True)
        else:
            click.echo(line, err=True)
        self.shown = True

    def end(self) -> None:
        if self.rewriting and self.shown:
            click.echo(err=True)


@environment.command("contact-lookup")
@config_dir_option
@client_id_option
@click.argument("tunnel_id", type=TUNNEL_ID)
def contact_lookup(config_dir: Path | None, client_id: str | None, tunnel_id: str) -> None:
    """Print the initiator access point's contact, refreshed from Globus when stale."""
    from functools import partial

    from ..globus.lookup import current_conf, refresh_from_globus

    conf = current_conf(tunnel_id, config_dir, refresh=partial(refresh_from_globus,
                                                                client_id=client_id))
    if conf.listener_contact_string is not None:
        raise ConfError(
            f"{conf.path}: this is the listener side's conf (listener_contact_string="
            f"{conf.listener_contact_string}); contact-lookup is for the initiator side"
        )
    click.echo(str(conf.require_connector_contact()))


@environment.command()
@config_dir_option
@click.argument("tunnel_id", type=TUNNEL_ID)
def show(config_dir: Path | None, tunnel_id: str) -> None:
    """Print what the conf of TUNNEL_ID says (the LAN secret masked)."""
    conf = confmod.load(tunnel_id, config_dir)
    click.echo(f"# {conf.path}")
    for line in conf.masked_lines():
        click.echo(line)
    for note in _notes(conf, time.time()):
        click.echo(f"# {note}")


def _notes(conf: confmod.TunnelConf, now: float) -> list[str]:
    side = "listener" if conf.listener_contact_string is not None else "initiator"
    notes = [f"side: {side}"]
    if conf.lankey is None:
        notes.append("LAN leg: not secured (no lankey)")
    if side == "initiator":
        if conf.fake_port:
            notes.append(f"contact string: {globus_name(conf.tunnel_id)}:{conf.fake_port}")
        if conf.contact_is_stale(now):
            notes.append("contact: stale, the next use looks it up in Globus")
        else:
            assert conf.update_time is not None
            left = conf.update_time + conf.connector_contact_string_ttl - now
            notes.append(f"contact: fresh for {int(left)} s more")
    if conf.tunnel_expiration_time is not None:
        when = confmod.format_time(conf.tunnel_expiration_time)
        state = "expired" if conf.is_expired(now) else "expires"
        notes.append(f"tunnel: {state} {when}")
    return notes


@environment.command()
@config_dir_option
@click.option("--dry-run", is_flag=True, help="Only list the confs that would be removed.")
def cleanup(config_dir: Path | None, dry_run: bool) -> None:
    """Remove the conf files of expired tunnels."""
    from ..contact import ContactError, parse_tunnel_id

    directory = confmod.config_dir(config_dir)
    removed = kept = 0
    now = time.time()
    try:
        paths = sorted(directory.glob("*.conf")) if directory.is_dir() else []
    except OSError as exc:
        raise ConfError(f"{directory}: cannot list it ({exc.strerror or exc})") from None
    for path in paths:
        try:
            tunnel_id = parse_tunnel_id(path.stem)
            if tunnel_id != path.stem:
                continue  # not the name the conf of that tunnel has (load reads that one)
            conf = confmod.load(tunnel_id, directory)
        except ContactError:
            continue  # not a tunnel conf
        except ConfError as exc:
            click.echo(f"streams-trace: warning: skipped: {exc}", err=True)
            kept += 1
            continue
        if not conf.is_expired(now):
            kept += 1
            continue
        if not dry_run:
            path.unlink(missing_ok=True)
        click.echo(f"{'would remove' if dry_run else 'removed'} {path} (tunnel expired)")
        removed += 1
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {removed} expired conf(s), kept {kept}, in {directory}")
