"""The man pages render cleanly and document every option of the commands they cover."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest

from streams_trace.cli import cli

from .conftest import REPO

MAN = REPO / "man"


@pytest.mark.parametrize("page", sorted(MAN.glob("*.1")), ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page: Path) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (Debian package groff-base)")
    result = subprocess.run(["groff", "-t", "-man", "-ww", "-z", str(page)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def documented_options(page: Path) -> str:
    return page.read_text().replace("\\-", "-")


@pytest.mark.parametrize("command", ["gateway", "demo"])
def test_every_option_is_in_the_man_page(command: str) -> None:
    text = documented_options(MAN / "streams-trace.1")
    ctx = click.Context(cli)
    sub = cli.get_command(ctx, command)
    assert sub is not None
    for param in sub.params:
        for option in param.opts:
            if option.startswith("--"):
                assert option in text, f"{command} {option} is not in man/streams-trace.1"
