"""Option types shared by the commands."""

from __future__ import annotations

import math
import os

import click

from ..contact import Contact, ContactError, parse_contact, parse_tunnel_id


class ContactType(click.ParamType):
    """A HOST:PORT contact string."""

    name = "HOST:PORT"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Contact:
        if isinstance(value, Contact):
            return value
        try:
            return parse_contact(str(value))
        except ContactError as exc:
            self.fail(str(exc), param, ctx)


class TunnelIdType(click.ParamType):
    """A tunnel ID (UUID), normalised to lower case."""

    name = "TUNNEL_ID"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        try:
            return parse_tunnel_id(str(value))
        except ContactError as exc:
            self.fail(str(exc), param, ctx)


class Seconds(click.FloatRange):
    """A number of seconds in a range; never NaN or infinite, which compare false with
    both bounds and would slip through a plain FloatRange."""

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        super().__init__(min, max)
        self.name = "SECONDS"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        seconds: float = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


def env_flag(name: str) -> bool:
    """An on/off environment variable read leniently: unset, empty, 0, false, no, off mean
    off, anything else on (a typo must not stop the command it only makes verbose)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def one_line(exc: click.ClickException, prog: str) -> str:
    """A click error as the one line every other error is: what, and where to look."""
    hint = ""
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        hint = f"; see '{exc.ctx.command_path} --help'"
    return f"{prog}: error: {exc.format_message().rstrip('.')}{hint}"


CONTACT = ContactType()
TUNNEL_ID = TunnelIdType()
