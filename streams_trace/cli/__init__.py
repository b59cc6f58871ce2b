"""The ``streams-trace`` command group.

Subcommands live in their own modules and are imported only when invoked, so
``streams-trace --help`` and commands that never talk to Globus do not import
globus_sdk (a test guards this).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from .. import __version__
from ..errors import ExitCode, StreamsTraceError, exit_code_table
from ..supervisor import SUPERVISOR_FAILED
from .options import env_flag, one_line

DEBUG_ENV = "STREAMS_TRACE_DEBUG"

# name -> "module:attribute", loaded on first use.
SUBCOMMANDS = {
    "run": "streams_trace.cli.run:run",
    "gateway": "streams_trace.cli.gateway:gateway",
    "demo": "streams_trace.cli.demo:demo",
    "environment": "streams_trace.cli.environment:environment",
    "login": "streams_trace.cli.login:login",
    "logout": "streams_trace.cli.login:logout",
    "whoami": "streams_trace.cli.login:whoami",
    "doctor": "streams_trace.cli.doctor:doctor",
}

log = logging.getLogger("streams_trace")

# Set by the group callback; read when an error escapes, to decide on a traceback.
_session = {"debug": False}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when they run."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attribute = self.lazy[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attribute)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the docstring's first line without importing each module.
        rows = [(name, SUMMARIES.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


SUMMARIES = {
    "run": "Run a program with its connections put on a tunnel (streams-run).",
    "gateway": "Run a local pair of stream access points (initiator and listener).",
    "demo": "Show a tunnel working on this machine, on the local gateway.",
    "environment": "Initialize, look up, show and clean up tunnel conf files (Globus).",
    "login": "Log in to Globus (prints a URL, reads the code).",
    "logout": "Revoke and forget this tool's Globus tokens.",
    "whoami": "Print the Globus identity you are logged in as.",
    "doctor": "Check kernel features, data path and pump; a tunnel's conf and access point.",
}


def setup_logging(debug: bool, log_file: str | None = None) -> None:
    """Diagnostics go to stderr (or a file), never stdout: stdout belongs to programs."""
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("streams-trace: %(message)s"))
    root = logging.getLogger("streams_trace")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    root.propagate = False


def fail(message: str, code: int) -> None:
    """End the command with one line on stderr and a documented exit code."""
    click.echo(f"streams-trace: error: {message}", err=True)
    sys.exit(code)


@click.group(
    cls=LazyGroup,
    lazy=SUBCOMMANDS,
    epilog="Exit codes:\n\n\b\n" + exit_code_table(),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "-V", "--version", prog_name="streams-trace")
@click.option(
    "-d",
    "--debug",
    is_flag=True,
    default=lambda: env_flag(DEBUG_ENV),
    help=f"Print diagnostics (and tracebacks) on stderr. Also ${DEBUG_ENV}=1.",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Put any Linux program on a Globus Streams tunnel, without LD_PRELOAD."""
    ctx.obj = {"debug": debug}
    _session["debug"] = debug
    setup_logging(debug)


def main() -> None:
    """Entry point: run the group, mapping errors to one line and an exit code."""
    try:
        cli.main(standalone_mode=False, prog_name="streams-trace")
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(one_line(exc, "streams-trace"), err=True)
        if not isinstance(exc, click.UsageError):
            sys.exit(exc.exit_code)
        in_run = exc.ctx is not None and exc.ctx.command.name == "run"
        # streams-trace run is streams-run, whose own failures are 125.
        sys.exit(SUPERVISOR_FAILED if in_run else ExitCode.USAGE)
    except click.exceptions.Abort:
        fail("interrupted", int(ExitCode.INTERRUPTED))
    except StreamsTraceError as exc:
        if _session["debug"]:
            log.exception("details")
        fail(str(exc), int(exc.exit_code))
    except KeyboardInterrupt:
        fail("interrupted", int(ExitCode.INTERRUPTED))
    except Exception as exc:
        if _session["debug"]:
            raise
        fail(f"internal error: {exc!r}; rerun with -d for details", int(ExitCode.INTERNAL))
