"""Per-tunnel conf files, in the official ``globus-streams`` format.

``~/.globus/streams/<TUNNEL_ID>.conf`` holds ``key=value`` lines (split on the
first ``=``, values stripped, an empty value means "none"). The official keys
come first, in the official writer's order; this project adds
``listener_contact_string`` and ``globus_contacts`` for what the public format
does not show. Unknown keys are kept and written back, so a file passes through
this tool unchanged in meaning.

The file holds a LAN secret: it is written atomically with mode 0600 in a 0700
folder, and, like ssh, a conf readable by others or owned by another user is
refused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .contact import Contact, ContactError, parse_contact, parse_port, parse_tunnel_id
from .errors import ConfError

CONFIG_DIR_ENV = "STREAMS_TRACE_CONFIG_DIR"
DEFAULT_CONFIG_DIR = Path("~/.globus/streams")
DEFAULT_CONTACT_TTL = 10.0
FAKE_PORT_RANGE = (1024, 65535)  # where a fake_port (globus.<TUNNEL_ID>:<port>) is drawn from
SECRET_MASK = "******** (hidden)"

# Official keys, in the order the official writer uses; then this project's own.
OFFICIAL_KEYS = (
    "lankey",
    "lankey_id",
    "connector_contact_string",
    "update_time",
    "connector_contact_string_ttl",
    "endpoint_id",
    "fake_port",
    "tunnel_expiration_time",
)
OWN_KEYS = ("listener_contact_string", "globus_contacts")


def config_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The conf folder: the option, else $STREAMS_TRACE_CONFIG_DIR, else ~/.globus/streams."""
    chosen = override or os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR
    return Path(chosen).expanduser().absolute()


def conf_path(tunnel_id: str, directory: str | os.PathLike[str] | None = None) -> Path:
    try:
        tunnel_id = parse_tunnel_id(tunnel_id)
    except ContactError as exc:
        raise ConfError(f"{exc}; give the tunnel ID that Globus printed") from None
    return config_dir(directory) / f"{tunnel_id}.conf"


@dataclass
class TunnelConf:
    """What one tunnel's conf file says. Field names follow the file's keys."""

    tunnel_id: str
    lankey: str | None = field(default=None, repr=False)  # the LAN secret: never shown
    lankey_id: str | None = None
    connector_contact_string: Contact | None = None
    update_time: float | None = None
    connector_contact_string_ttl: float = DEFAULT_CONTACT_TTL
    endpoint_id: str | None = None
    fake_port: int | None = None
    tunnel_expiration_time: float | None = None
    listener_contact_string: Contact | None = None
    globus_contacts: list[Contact] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)
    # Line of each key in the file it was read from, so errors can point at it.
    line_of: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    # -- questions the tools ask -------------------------------------------------

    def contact_is_stale(self, now: float | None = None) -> bool:
        """True when the connector contact must be looked up in Globus again."""
        if self.connector_contact_string is None or self.update_time is None:
            return True
        now = time.time() if now is None else now
        return now > self.update_time + self.connector_contact_string_ttl

    def is_expired(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.tunnel_expiration_time is not None and now >= self.tunnel_expiration_time

    def check_not_expired(self, now: float | None = None) -> None:
        if self.is_expired(now):
            assert self.tunnel_expiration_time is not None
            when = format_time(self.tunnel_expiration_time)
            raise ConfError(
                f"{self._where('tunnel_expiration_time')}: tunnel {self.tunnel_id} expired "
                f"at {when}; create a new tunnel and initialize its environment again"
            )

    def require_connector_contact(self) -> Contact:
        if self.connector_contact_string is None:
            raise ConfError(
                f"{self._where()}: no connector_contact_string; run "
                f"'streams-trace environment contact-lookup {self.tunnel_id}'"
            )
        return self.connector_contact_string

    def require_listener_contact(self) -> Contact:
        if self.listener_contact_string is None:
            raise ConfError(
                f"{self._where()}: no listener_contact_string; run 'streams-trace environment "
                f"initialize --listener-contact-string IP:PORT {self.tunnel_id}'"
            )
        return self.listener_contact_string

    @property
    def secret(self) -> bytes | None:
        """The LAN secret as the handshake key, or None when the LAN leg is not secured."""
        return self.lankey.encode() if self.lankey else None

    def _where(self, key: str | None = None) -> str:
        where = str(self.path) if self.path else f"conf of tunnel {self.tunnel_id}"
        return f"{where}:{self.line_of[key]}" if key in self.line_of else where

    # -- the file format -----------------------------------------------------------

    def masked_lines(self) -> list[str]:
        """``to_lines`` with the LAN secret hidden, for showing a conf to a person."""
        return [f"lankey={SECRET_MASK}" if line.startswith("lankey=") else line
                for line in self.to_lines()]

    def to_lines(self) -> list[str]:
        values = {name: _format_value(getattr(self, name)) for name in OFFICIAL_KEYS + OWN_KEYS}
        lines = [f"{key}={value}" for key, value in values.items() if value is not None]
        lines += [f"{key}={value}" for key, value in self.extra.items()]
        return lines


_FIELD_NAMES = set(OFFICIAL_KEYS + OWN_KEYS)


def _format_value(value: object) -> str | None:
    if value is None or value == []:
        return None
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def format_time(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# Times a conf may hold: 1970 to the year 9999, what datetime and every later use can take
# (a millisecond timestamp by mistake, nan or inf would fail far from the conf).
_LATEST_TIME = 253402300799.0  # 9999-12-31 23:59:59 UTC


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 timestamp as Globus prints them."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is neither unix seconds nor an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_dt.timezone.utc)
        value = moment.timestamp()
    if not 0 <= value <= _LATEST_TIME:  # nan fails this too
        raise ValueError(f"{text!r} is not a time between 1970 and 9999")
    return value


def _parse_seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= _LATEST_TIME:  # nan and inf fail this too
        raise ValueError(f"{text!r} is not a number of seconds from 0 to {_LATEST_TIME:.0f}")
    return value


_PARSERS = {
    "update_time": parse_time,
    "tunnel_expiration_time": parse_time,
    "connector_contact_string_ttl": _parse_seconds,
    "fake_port": parse_port,
    "connector_contact_string": parse_contact,
    "listener_contact_string": parse_contact,
    "globus_contacts": lambda text: [parse_contact(part) for part in text.split(",") if part],
}


def parse(text: str, tunnel_id: str, path: Path | None = None) -> TunnelConf:
    """Parse a conf file's text; a bad line raises ConfError naming file and line."""
    where = str(path) if path else f"conf of tunnel {tunnel_id}"
    conf = TunnelConf(tunnel_id=tunnel_id, path=path)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            # The line itself is not shown: it may be a mistyped secret.
            raise ConfError(
                f"{where}:{number}: expected key=value; "
                f"fix or delete the line, or initialize the environment again"
            )
        if key not in _FIELD_NAMES:
            conf.extra[key] = value
            continue
        if not value:
            continue
        parser = _PARSERS.get(key)
        try:
            parsed = parser(value) if parser else value
        except ValueError as exc:
            raise ConfError(
                f"{where}:{number}: bad {key}: {exc}; "
                f"fix the line or initialize the environment again"
            ) from None
        setattr(conf, key, parsed)
        conf.line_of[key] = number
    return conf


def check_secure(path: Path, st: os.stat_result, has_secret: bool) -> None:
    """Refuse, like ssh, a conf that another user owns or, holding a secret, others may read."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfError(f"{path}: not a regular file")
    if st.st_uid != os.geteuid():
        raise ConfError(
            f"{path}: owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
            f"refusing to use another user's LAN secret"
        )
    if has_secret and st.st_mode & 0o077:
        raise ConfError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open for a file "
            f"holding a LAN secret; run: chmod 600 {path}"
        )


MAX_FILE_BYTES = 1 << 20  # far more than any conf or secret file holds


def read_regular_file(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of ``path`` and its status, refusing before any read what is not a
    regular file (a FIFO would hang the read, /dev/zero never end it). Raises OSError
    or ConfError."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as handle:
        st = os.fstat(descriptor)
        if not stat.S_ISREG(st.st_mode):
            raise ConfError(f"{path}: not a regular file")
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ConfError(f"{path}: larger than {MAX_FILE_BYTES} bytes, not a conf")
    return data, st


def load(tunnel_id: str, directory: str | os.PathLike[str] | None = None) -> TunnelConf:
    """Read and check one tunnel's conf."""
    path = conf_path(tunnel_id, directory)
    tunnel_id = path.stem
    try:
        data, st = read_regular_file(path)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfError(
            f"{path}: no conf for tunnel {tunnel_id}; run 'streams-trace environment initialize "
            f"{tunnel_id}' (or start 'streams-trace gateway') first"
        ) from None
    except UnicodeDecodeError:
        raise ConfError(f"{path}: not a text file; initialize the environment again") from None
    except OSError as exc:
        raise ConfError(f"{path}: cannot read: {exc.strerror}") from None
    conf = parse(text, tunnel_id, path)
    check_secure(path, st, has_secret=conf.lankey is not None)
    return conf


def save(conf: TunnelConf, directory: str | os.PathLike[str] | None = None) -> Path:
    """Write the conf atomically: 0700 folder, 0600 file, then rename into place."""
    path = conf_path(conf.tunnel_id, directory)
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(folder.stat().st_mode)
    except OSError as exc:
        raise ConfError(f"{folder}: cannot write the conf folder: {exc.strerror}") from None
    if mode & 0o077:
        # Never loosen or tighten a folder we did not make (it may be $HOME): refuse, like ssh.
        raise ConfError(f"{folder}: permissions {mode:04o} let others in to a folder of LAN "
                        f"secrets; run: chmod 700 {folder} (or choose another folder)")
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise ConfError(f"{folder}: cannot write the conf folder: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("\n".join(conf.to_lines()) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    conf.path = path
    return path
