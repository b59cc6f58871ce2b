"""A local tunnel's identity: its ID, LAN secrets, conf files and TOML state.

What Globus and GCS keep for a real tunnel, the local gateway keeps here: one
LAN secret per side (reused from an existing conf, since a secret lives as long
as its tunnel), the conf files that programs on each side read, and a small
TOML state file that records where the access points listen so a restarted
gateway can keep the same contact strings.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from .. import conf as confmod
from ..contact import Contact
from ..errors import ConfError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SECRET_BYTES = 32


def new_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


def gateway_endpoint_id(tunnel_id: str, side: str) -> str:
    """A stable stand-in for the GCS endpoint ID of each side of a local tunnel."""
    return str(uuid.uuid5(uuid.UUID(tunnel_id), f"streams-trace-gateway-{side}"))


def existing_conf(tunnel_id: str, directory: Path) -> confmod.TunnelConf | None:
    """The conf a previous run left for this tunnel, if any (checked like any conf)."""
    if not confmod.conf_path(tunnel_id, directory).exists():
        return None
    return confmod.load(tunnel_id, directory)


@dataclass
class SideConf:
    """The conf of one side, as the gateway is about to write it."""

    conf: confmod.TunnelConf
    directory: Path

    def save(self) -> Path:
        return confmod.save(self.conf, self.directory)


def initiator_conf(
    tunnel_id: str, directory: Path, contact: Contact, expires: float, secured: bool
) -> SideConf:
    previous = existing_conf(tunnel_id, directory)
    now = time.time()
    conf = confmod.TunnelConf(
        tunnel_id=tunnel_id,
        lankey=_keep_secret(previous, secured),
        lankey_id=(previous.lankey_id if previous and previous.lankey_id else str(uuid.uuid4()))
        if secured
        else None,
        connector_contact_string=contact,
        update_time=float(int(now)),
        # The contact is known locally for the tunnel's whole life: never look it up.
        connector_contact_string_ttl=float(int(expires - now) + 1),
        endpoint_id=gateway_endpoint_id(tunnel_id, "initiator"),
        fake_port=(
            previous.fake_port
            if previous and previous.fake_port
            else random.randint(*confmod.FAKE_PORT_RANGE)
        ),
        tunnel_expiration_time=float(int(expires)),
        globus_contacts=previous.globus_contacts if previous else [],
        extra=previous.extra if previous else {},
    )
    return SideConf(conf, directory)


def listener_conf(
    tunnel_id: str, directory: Path, contact: Contact, expires: float, secured: bool
) -> SideConf:
    previous = existing_conf(tunnel_id, directory)
    conf = confmod.TunnelConf(
        tunnel_id=tunnel_id,
        lankey=_keep_secret(previous, secured),
        lankey_id=(previous.lankey_id if previous and previous.lankey_id else str(uuid.uuid4()))
        if secured
        else None,
        update_time=float(int(time.time())),
        endpoint_id=gateway_endpoint_id(tunnel_id, "listener"),
        tunnel_expiration_time=float(int(expires)),
        listener_contact_string=contact,
        extra=previous.extra if previous else {},
    )
    return SideConf(conf, directory)


def _keep_secret(previous: confmod.TunnelConf | None, secured: bool) -> str | None:
    if not secured:
        return None
    return previous.lankey if previous and previous.lankey else new_secret()


# -- the link secret (two-process mode) ------------------------------------------------


def read_or_create_link_secret(path: Path, create: bool) -> bytes:
    """The secret of the AP-to-AP link, kept in a 0600 file shared by both hosts."""
    try:
        return _link_secret(path, create)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfError(f"{path}: cannot use the link secret file: {reason}") from None


def _link_secret(path: Path, create: bool) -> bytes:
    if path.exists():
        data, st = confmod.read_regular_file(path)
        confmod.check_secure(path, st, has_secret=True)
        text = data.decode("ascii").strip()
        if len(text) < 32:
            raise ConfError(
                f"{path}: the link secret is too short; delete the file and "
                f"start the listener access point again"
            )
        return text.encode()
    if not create:
        raise ConfError(
            f"{path}: no link secret; copy the file that the listener access "
            f"point wrote (keep it mode 0600)"
        )
    text = new_secret()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text + "\n")
    return text.encode()


# -- TOML state ----------------------------------------------------------------------


def state_path(directory: Path, tunnel_id: str) -> Path:
    return directory / f"gateway-{tunnel_id}.toml"


def read_state(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(confmod.read_regular_file(path)[0].decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfError(f"{path}: unreadable gateway state ({exc}); delete the file") from None


def check_state_folder(path: Path) -> None:
    """Raise ConfError now if the state file could not be written later: before the
    gateway writes confs or takes ports it would then have to give back."""
    descriptor, temporary = _temporary_beside(path)
    os.close(descriptor)
    os.unlink(temporary)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, mode 0600 (it names ports and paths, never secrets). Raises
    ConfError when the folder cannot take it."""
    descriptor, temporary = _temporary_beside(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            tomli_w.dump(state, handle)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise _state_error(path, exc) from None
        raise


def _temporary_beside(path: Path) -> tuple[int, str]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A fresh name of mkstemp's (O_EXCL, 0600): a link planted in a shared folder
        # under a name we could be guessed to use is never written through.
        return tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _state_error(path, exc) from None


def _state_error(path: Path, exc: OSError) -> ConfError:
    return ConfError(f"{path}: cannot write the gateway state ({exc.strerror or exc})")
