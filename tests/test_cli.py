"""The streams-trace command group, run as a user would: a real process."""

from __future__ import annotations

import subprocess

import pytest

from streams_trace import __version__
from streams_trace.errors import EXIT_CODES

from .conftest import REPO, streams_trace_command


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(streams_trace_command(*args), capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"streams-trace, version {__version__}"


def test_help_lists_commands_and_every_exit_code() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "gateway" in result.stdout and "-d, --debug" in result.stdout
    for code, text in EXIT_CODES.items():
        assert f"{int(code):>5}  {text}" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "No such command 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", [[], ["--client-api"]], ids=["streams-run", "client-api"])
def test_demo_shows_the_tunnel_working(mode: list[str]) -> None:
    result = run("demo", *mode)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("with the LAN handshake on both legs.")
    if not mode and "streams-run cannot run" not in result.stderr:
        # Both sides under streams-run: its -d line shows the redirected connect.
        assert "under streams-run on the initiator side" in result.stdout
        assert "-> initiator access point" in result.stdout
        assert "matches the server's file" in result.stdout
    else:
        assert "received them intact" in result.stdout


def test_debug_flag_shows_diagnostics_on_stderr_only(tmp_path) -> None:  # type: ignore
    result = subprocess.run(
        streams_trace_command("-d", "gateway", "--listener-contact-string", "127.0.0.1:9",
                              "--initiator-config-dir", str(tmp_path / "i"),
                              "--listener-config-dir", str(tmp_path / "i")),
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert result.stdout == ""
    # With -d a user error still ends in its one line, preceded by the traceback.
    assert result.stderr.rstrip().splitlines()[-1].startswith("streams-trace: error: ")
    assert "Traceback" in result.stderr
