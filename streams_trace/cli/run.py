"""``streams-run [OPTIONS] TUNNEL_ID [--] COMMAND [ARGS]...`` (also ``streams-trace run``).

Runs COMMAND, static or dynamic, under the supervisor that puts its tunnel
connections on the tunnel, without LD_PRELOAD. Options as
``globus-streams-launch.sh``: they stop at TUNNEL_ID, so everything after it
belongs to COMMAND. streams-run never writes to stdout; its exit status is the
program's own, 128+N when the program dies of signal N, 126/127 when COMMAND
cannot be run / is not found, and 125 when streams-run itself fails.
"""

from __future__ import annotations

import logging
import os
import re
import sys

import click

from ..conf import CONFIG_DIR_ENV
from ..contact import Contact
from ..errors import ExitCode, StreamsTraceError
from ..supervisor import SUPERVISOR_FAILED
from . import DEBUG_ENV
from .options import CONTACT, Seconds, env_flag, one_line

INTERCEPT_PORT_ENV = re.compile(r"^GLOBUS_STREAMS_INTERCEPT_PORT_(\d+)$")
DATA_PATH_ENV = "STREAMS_TRACE_DATA_PATH"

log = logging.getLogger("streams_trace.run")

EPILOG = """\b
Exit status:
    N    the program's own exit status
  128+N  the program died of signal N
   125   streams-run failed (ptrace refused, bad or unknown tunnel conf, bad option)
   126   COMMAND cannot be executed
   127   COMMAND not found
"""


def _setup_logging(debug: bool, quiet: bool, log_file: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("streams-run: %(message)s"))
    root = logging.getLogger("streams_trace")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)
    root.propagate = False


def intercept_ports(tunnel_id: str, environ: dict[str, str]) -> set[int]:
    """Ports named by GLOBUS_STREAMS_INTERCEPT_PORT_<port>=<TUNNEL_ID> (the preload's way)."""
    ports = set()
    for key, value in environ.items():
        match = INTERCEPT_PORT_ENV.match(key)
        if match and value.strip().lower() == tunnel_id and 0 < int(match.group(1)) < 65536:
            ports.add(int(match.group(1)))
    return ports


@click.command(
    "run",
    context_settings={
        "allow_interspersed_args": False,
        "help_option_names": ["-h", "--help"],
    },
    epilog=EPILOG,
)
@click.option("-d", "--debug", is_flag=True, default=lambda: env_flag(DEBUG_ENV),
              help=f"One line per redirected connect/accept on stderr. Also ${DEBUG_ENV}=1.")
@click.option("-l", "--log-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write diagnostics to FILE instead of stderr.")
@click.option("-p", "--port", "ports", type=click.IntRange(1, 65535), multiple=True,
              metavar="PORT",
              help="Authenticate connections accepted on a socket bound to PORT (repeatable).")
@click.option("--config-dir", type=click.Path(file_okay=False), envvar=CONFIG_DIR_ENV,
              help=f"Folder of the tunnel conf files (default ~/.globus/streams; "
                   f"also ${CONFIG_DIR_ENV}).")
@click.option("--globus-contact", "contacts", type=CONTACT, multiple=True,
              help="Also put connections to HOST:PORT on the tunnel (repeatable).")
@click.option("--timeout", type=Seconds(0.1, 3600), default=10.0, show_default=True,
              metavar="SECONDS",
              help="Give up a tunnel connect (TCP and LAN handshake) after SECONDS.")
@click.option("--data-path", type=click.Choice(["auto", "direct", "relay"]), default="auto",
              show_default=True, envvar=DATA_PATH_ENV,
              help="direct: connect the program's own socket (pidfd_getfd); relay: move its "
                   "connect/bind to the supervisor and pump the bytes; auto: direct where "
                   f"pidfd_getfd works. Also ${DATA_PATH_ENV}.")
@click.option("-q", "--quiet", is_flag=True, help="Only print errors.")
@click.argument("tunnel_id", metavar="TUNNEL_ID")
@click.argument(
    "command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="COMMAND [ARGS]..."
)
def run(
    debug: bool,
    log_file: str | None,
    ports: tuple[int, ...],
    config_dir: str | None,
    contacts: tuple[Contact, ...],
    timeout: float,
    data_path: str,
    quiet: bool,
    tunnel_id: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with its connections to the tunnel TUNNEL_ID put on the tunnel."""
    root = click.get_current_context().find_root()
    if isinstance(root.obj, dict) and root.obj.get("debug"):  # streams-trace -d run ...
        debug = True
    try:
        _setup_logging(debug, quiet, log_file)
    except OSError as exc:
        _fail(f"cannot write the log file {log_file}: {exc.strerror}")
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _fail("no COMMAND given; usage: streams-run [OPTIONS] TUNNEL_ID [--] COMMAND [ARGS]...")
    try:
        code = _run(tunnel_id, command, ports, config_dir, contacts, timeout, quiet, data_path)
    except StreamsTraceError as exc:
        if debug:
            log.exception("details")
        _fail(str(exc))
    except OSError as exc:
        if debug:
            log.exception("details")
        _fail(f"the supervisor failed: {exc}")
    except Exception as exc:
        if debug:
            log.exception("details")
        _fail(f"internal error: {exc!r}; rerun with -d and report it")
    sys.exit(code)


def _fail(message: str) -> None:
    click.echo(f"streams-run: error: {message}", err=True)
    sys.exit(SUPERVISOR_FAILED)


def _run(
    tunnel_id: str,
    command: tuple[str, ...],
    ports: tuple[int, ...],
    config_dir: str | None,
    contacts: tuple[Contact, ...],
    timeout: float,
    quiet: bool,
    data_path: str = "auto",
) -> int:
    from ..contact import ContactError, parse_tunnel_id
    from ..globus.lookup import current_conf
    from ..supervisor.redirect import Settings
    from ..supervisor.session import run as run_session

    try:
        tunnel_id = parse_tunnel_id(tunnel_id)
    except ContactError as exc:
        raise StreamsTraceError(f"{exc}; give the tunnel ID that Globus printed") from None
    # Read once at start-up; a stale contact is looked up in Globus (globus_sdk is
    # imported only then).
    tunnel = current_conf(tunnel_id, config_dir)
    listen_ports = set(ports) | intercept_ports(tunnel_id, dict(os.environ))
    if tunnel.listener_contact_string is not None:
        listen_ports.add(tunnel.listener_contact_string.port)
    from ..trace.probes import choose_data_path

    chosen, why = choose_data_path(data_path)
    log.debug("data path: %s (%s)", chosen, why)
    if chosen == "relay":
        from ..relay import pump_choice

        # Checked now, before the program starts: the pump itself starts at the first relay.
        log.debug("relay pump: %s (%s)", *pump_choice())
    settings = Settings(
        tunnel=tunnel,
        contacts=[*contacts, *tunnel.globus_contacts],
        listen_ports=listen_ports,
        timeout=timeout,
        data_path=chosen,
    )
    return run_session(list(command), settings, quiet=quiet)


def main() -> None:
    """The ``streams-run`` entry point."""
    try:
        run.main(prog_name="streams-run", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(one_line(exc, "streams-run"), err=True)
        sys.exit(SUPERVISOR_FAILED)
    except click.exceptions.Abort:  # Ctrl-C before the program started
        sys.exit(ExitCode.INTERRUPTED)
