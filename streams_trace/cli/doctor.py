"""``streams-trace doctor [TUNNEL_ID]``: what streams-run can do here, and a tunnel's state.

Human-readable by default, ``--json`` for scripts. Exit status: 0 when all is
well, 7 when ptrace is not permitted (streams-run cannot work here), 3 when the
tunnel's conf cannot be read or the tunnel has expired, 6 when its access point
does not answer.
"""

from __future__ import annotations

import json
import sys

import click

from .options import TUNNEL_ID, Seconds


@click.command("doctor")
@click.option("--config-dir", type=click.Path(file_okay=False), envvar="STREAMS_TRACE_CONFIG_DIR",
              help="Folder of the tunnel conf files (default ~/.globus/streams; "
                   "also $STREAMS_TRACE_CONFIG_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-handshake", is_flag=True,
              help="Only check that the access point accepts TCP connections.")
@click.option("--timeout", type=Seconds(0.1, 60), default=3.0, show_default=True,
              metavar="SECONDS", help="Give up on the access point after SECONDS.")
@click.argument("tunnel_id", type=TUNNEL_ID, required=False)
def doctor(config_dir: str | None, as_json: bool, no_handshake: bool, timeout: float,
           tunnel_id: str | None) -> None:
    """Check the kernel features streams-run uses, its data path and pump, and a tunnel."""
    from .. import doctor as checks

    report = checks.system_report()
    if tunnel_id is not None:
        report["tunnel"] = checks.tunnel_report(tunnel_id, config_dir, not no_handshake, timeout)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(checks.format_text(report))
    sys.exit(checks.verdict(report))
