"""Option types shared by the commands."""

from __future__ import annotations

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


CONTACT = ContactType()
TUNNEL_ID = TunnelIdType()
