"""The contact lookup: a tunnel's conf, refreshed from Globus only when stale.

    current_conf(tunnel_id, config_dir=None, *, now=None, refresh=None) -> TunnelConf

Loads ``<config_dir>/<TUNNEL_ID>.conf`` with :func:`streams_trace.conf.load`
and refuses an expired tunnel (``ConfError``, exit 3). On the initiator side
(no ``listener_contact_string``) whose ``connector_contact_string`` is missing
or older than ``update_time + connector_contact_string_ttl``, it calls
``refresh(conf) -> TunnelConf`` (default :func:`refresh_from_globus`: read the
tunnel with globus-sdk, never prompting for a login), saves the result in the
same file and returns it. Otherwise it returns the conf as loaded, without
importing globus_sdk: confs written by ``streams-trace gateway`` have a TTL as
long as their tunnel, so they never reach Globus.

``streams-trace environment contact-lookup``, ``streams-run`` and
:func:`streams_trace.client.connect` all go through here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import conf as confmod
from .errors import GlobusTunnelError

if TYPE_CHECKING:
    from .tunnels import Tunnel

Refresh = Callable[[confmod.TunnelConf], confmod.TunnelConf]


def needs_lookup(conf: confmod.TunnelConf, now: float | None = None) -> bool:
    """Only an initiator-side conf has a contact to look up."""
    return conf.listener_contact_string is None and conf.contact_is_stale(now)


def current_conf(
    tunnel_id: str,
    config_dir: str | os.PathLike[str] | None = None,
    *,
    now: float | None = None,
    refresh: Refresh | None = None,
) -> confmod.TunnelConf:
    """The tunnel's conf with a usable contact (see the module docstring)."""
    conf = confmod.load(tunnel_id, config_dir)
    conf.check_not_expired(now)
    if not needs_lookup(conf, now):
        return conf
    fresh = (refresh or refresh_from_globus)(conf)
    confmod.save(fresh, config_dir)
    return fresh


def refresh_from_globus(
    conf: confmod.TunnelConf, *, client_id: str | None = None, now: float | None = None
) -> confmod.TunnelConf:
    """Read the tunnel from Globus and put its current initiator contact in the conf."""
    from .auth import credentials, ensure_logged_in, make_app
    from .tunnels import get_tunnel, transfer_client

    app = make_app(credentials(client_id))
    ensure_logged_in(app, interactive=False)
    tunnel = get_tunnel(transfer_client(app), conf.tunnel_id)
    return with_tunnel_contact(conf, tunnel, now)


def with_tunnel_contact(
    conf: confmod.TunnelConf, tunnel: Tunnel, now: float | None = None
) -> confmod.TunnelConf:
    """A copy of the conf holding the tunnel's initiator contact, stamped ``now``."""
    now = time.time() if now is None else now
    tunnel.check_usable()
    if tunnel.initiator_contact is None:
        raise GlobusTunnelError(
            f"tunnel {conf.tunnel_id} has no initiator contact yet (it is {tunnel.state}): "
            f"its listener side has not registered; run 'streams-trace environment "
            f"initialize --listener-contact-string IP:PORT {conf.tunnel_id}' there first"
        )
    return dataclasses.replace(
        conf,
        connector_contact_string=tunnel.initiator_contact,
        update_time=float(int(now)),
        tunnel_expiration_time=tunnel.expiration_time or conf.tunnel_expiration_time,
        line_of={},
    )
