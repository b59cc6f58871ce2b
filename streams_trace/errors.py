"""Errors a user can cause, and the exit codes they end in.

Every command ends a user-caused failure with one line on stderr and an exit
code from ``EXIT_CODES``; the help text and the man pages show the same table.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    GLOBUS_AUTH = 4
    GLOBUS_TUNNEL = 5
    NETWORK = 6
    UNSUPPORTED = 7
    INTERRUPTED = 130


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "unexpected internal error (rerun with -d and report it)",
    ExitCode.USAGE: "bad option or argument",
    ExitCode.CONFIG: "tunnel conf problem: missing, malformed, insecure or expired",
    ExitCode.GLOBUS_AUTH: "Globus login, consent or permission needed",
    ExitCode.GLOBUS_TUNNEL: "Globus tunnel unknown, stopped or not ready",
    ExitCode.NETWORK: "access point unreachable or LAN handshake refused",
    ExitCode.UNSUPPORTED: "this system cannot trace programs (ptrace refused; see doctor)",
    ExitCode.INTERRUPTED: "interrupted by SIGINT",
}


def exit_code_table() -> str:
    """The exit-code table as plain text, for --help output."""
    return "\n".join(f"{int(code):>5}  {text}" for code, text in EXIT_CODES.items())


class StreamsTraceError(Exception):
    """A failure the user can act on: one line of text and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfError(StreamsTraceError):
    """A tunnel conf file is missing, malformed, insecure or expired."""

    exit_code = ExitCode.CONFIG


class UsageError(StreamsTraceError):
    exit_code = ExitCode.USAGE


class NetworkError(StreamsTraceError):
    """An access point or listening program could not be reached or refused us."""

    exit_code = ExitCode.NETWORK
