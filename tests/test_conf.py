"""Per-tunnel conf files: the official format, round trips, permissions, clear errors."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams_trace import conf
from streams_trace.contact import Contact, ContactError, free_port, parse_contact
from streams_trace.errors import ConfError

TUNNEL = "0e8a675b-6b84-4220-89e4-a6a7a0d823fb"

# As the official `globus-streams environment initialize` writes it (REFERENCE.md section 2):
# key=value lines, official key order, an empty value meaning "none".
OFFICIAL_INITIATOR = """\
lankey=Zm9vYmFyYmF6cXV1eA
lankey_id=4c2b1c8e-3f0a-4d55-9e8b-7d1e2f3a4b5c
connector_contact_string=198.51.100.7:50123
update_time=1763800000
connector_contact_string_ttl=10
endpoint_id=9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d
fake_port=3664
tunnel_expiration_time=1763821600
"""


def write(directory: Path, text: str, mode: int = 0o600) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{TUNNEL}.conf"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_reads_a_conf_in_the_official_format(tmp_path: Path) -> None:
    write(tmp_path, OFFICIAL_INITIATOR)
    tunnel = conf.load(TUNNEL, tmp_path)
    assert tunnel.lankey == "Zm9vYmFyYmF6cXV1eA"
    assert tunnel.secret == b"Zm9vYmFyYmF6cXV1eA"
    assert tunnel.connector_contact_string == Contact("198.51.100.7", 50123)
    assert tunnel.update_time == 1763800000
    assert tunnel.connector_contact_string_ttl == 10
    assert tunnel.fake_port == 3664
    assert tunnel.tunnel_expiration_time == 1763821600
    assert tunnel.endpoint_id == "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
    assert tunnel.extra == {}


def test_tolerates_what_other_writers_produce(tmp_path: Path) -> None:
    """Spaces around '=', empty values, comments, unknown keys and ISO times."""
    write(tmp_path, "# written by hand\n lankey =  \nfake_port = 4000\nfuture_key=a=b\n\n"
                    "tunnel_expiration_time=2030-01-01T00:00:00Z\n")
    tunnel = conf.load(TUNNEL, tmp_path)
    assert tunnel.lankey is None and tunnel.secret is None
    assert tunnel.fake_port == 4000
    assert tunnel.extra == {"future_key": "a=b"}
    assert tunnel.tunnel_expiration_time == 1893456000


def test_what_we_write_reads_back_the_same_and_keeps_unknown_keys(tmp_path: Path) -> None:
    write(tmp_path, OFFICIAL_INITIATOR + "future_key=kept\n")
    original = conf.load(TUNNEL, tmp_path)
    original.globus_contacts = [Contact("tiled.example.org", 443), Contact("::1", 8443)]
    original.listener_contact_string = Contact("10.0.2.164", 8888)
    out = tmp_path / "out"
    conf.save(original, out)
    again = conf.load(TUNNEL, out)
    assert again == original
    assert again.extra == {"future_key": "kept"}
    text = (out / f"{TUNNEL}.conf").read_text()
    # Official keys first, in the official order, so the official tools read it too.
    assert text.startswith(OFFICIAL_INITIATOR)
    assert "globus_contacts=tiled.example.org:443,[::1]:8443\n" in text


def test_writes_are_private_and_atomic(tmp_path: Path) -> None:
    folder = tmp_path / "streams"
    path = conf.save(conf.TunnelConf(TUNNEL, lankey="s"), folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [f"{TUNNEL}.conf"]  # no temp files
    conf.save(conf.TunnelConf(TUNNEL, lankey="t"), folder)
    assert conf.load(TUNNEL, folder).lankey == "t"


def test_folder_from_option_then_environment_then_home(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(conf.CONFIG_DIR_ENV, raising=False)
    assert conf.config_dir() == tmp_path / "home" / ".globus" / "streams"
    monkeypatch.setenv(conf.CONFIG_DIR_ENV, str(tmp_path / "env"))
    assert conf.config_dir() == tmp_path / "env"
    assert conf.config_dir(tmp_path / "option") == tmp_path / "option"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_a_secret_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, OFFICIAL_INITIATOR, mode)
    with pytest.raises(ConfError) as caught:
        conf.load(TUNNEL, tmp_path)
    message = str(caught.value)
    assert f"{mode:04o} are too open" in message
    assert f"chmod 600 {path}" in message
    assert "\n" not in message


def test_accepts_open_permissions_when_there_is_no_secret(tmp_path: Path) -> None:
    write(tmp_path, "fake_port=3664\n", 0o644)
    assert conf.load(TUNNEL, tmp_path).fake_port == 3664


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_refuses_a_conf_owned_by_another_user(tmp_path: Path) -> None:
    path = write(tmp_path, OFFICIAL_INITIATOR)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfError, match="owned by uid 65534, not by you"):
        conf.load(TUNNEL, tmp_path)


def test_missing_conf_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfError) as caught:
        conf.load(TUNNEL, tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}/{TUNNEL}.conf: no conf for tunnel {TUNNEL}; run 'streams-trace environment "
        f"initialize {TUNNEL}' (or start 'streams-trace gateway') first")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("this line has no equals sign", ":3: expected key=value"),
        ("connector_contact_string=198.51.100.7", ":3: bad connector_contact_string"),
        ("connector_contact_string=host:99999", "port '99999' is not a number from 1 to 65535"),
        ("listener_contact_string=::1:80", "write an IPv6 address in brackets"),
        ("fake_port=http", ":3: bad fake_port"),
        ("update_time=yesterday", "neither unix seconds nor an ISO 8601 time"),
        ("connector_contact_string_ttl=-5", ":3: bad connector_contact_string_ttl"),
        ("connector_contact_string_ttl=inf", ":3: bad connector_contact_string_ttl"),
        ("update_time=nan", "is not a time between 1970 and 9999"),
        ("tunnel_expiration_time=-1e20", "is not a time between 1970 and 9999"),
        ("tunnel_expiration_time=1763821600000", "is not a time between 1970 and 9999"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, f"lankey=x\nlankey_id=y\n{line}\n")
    with pytest.raises(ConfError) as caught:
        conf.load(TUNNEL, tmp_path)
    assert str(caught.value).startswith(str(path))
    assert expected in str(caught.value)


def test_a_line_without_equals_is_not_shown_for_it_may_be_a_secret(tmp_path: Path) -> None:
    write(tmp_path, "lankey_id=y\nlankey: 4f1c9a7e0b2d\n")
    with pytest.raises(ConfError) as caught:
        conf.load(TUNNEL, tmp_path)
    assert ":2: expected key=value" in str(caught.value)
    assert "4f1c9a7e0b2d" not in str(caught.value)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_conf_that_is_not_a_regular_file_is_refused_before_any_read(
        tmp_path: Path, kind: str) -> None:
    """A FIFO would hang the read, /dev/zero never end it."""
    path = tmp_path / f"{TUNNEL}.conf"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(ConfError) as caught:
        conf.load(TUNNEL, tmp_path)
    assert str(caught.value) == f"{path}: not a regular file"


def test_expired_tunnel_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, OFFICIAL_INITIATOR)
    tunnel = conf.load(TUNNEL, tmp_path)
    tunnel.check_not_expired(now=1763821599)
    with pytest.raises(ConfError) as caught:
        tunnel.check_not_expired(now=1763821600)
    assert str(caught.value).startswith(f"{path}:8: tunnel {TUNNEL} expired at 2025-11-22")


def test_contact_staleness_follows_update_time_and_ttl(tmp_path: Path) -> None:
    write(tmp_path, OFFICIAL_INITIATOR)
    tunnel = conf.load(TUNNEL, tmp_path)
    assert not tunnel.contact_is_stale(now=1763800010)
    assert tunnel.contact_is_stale(now=1763800011)
    assert conf.TunnelConf(TUNNEL).contact_is_stale(now=0)


def test_bad_tunnel_id_is_refused_before_touching_the_disk(tmp_path: Path) -> None:
    with pytest.raises(ConfError, match="is not a tunnel ID"):
        conf.load("../../etc/passwd", tmp_path)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.2.164:8888", Contact("10.0.2.164", 8888)),
        ("Tiled.Example.org:443", Contact("tiled.example.org", 443)),
        ("[::1]:80", Contact("::1", 80)),
        (f"globus.{TUNNEL}:3664", Contact(f"globus.{TUNNEL}", 3664)),
    ],
)
def test_contact_strings(text: str, parsed: Contact) -> None:
    assert parse_contact(text) == parsed
    assert parse_contact(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["", "host", ":80", "host:", "host:0", "a b:80", "[::1]80",
                                  "[nothost]:80", "host:-1"])
def test_bad_contact_strings(text: str) -> None:
    with pytest.raises(ContactError):
        parse_contact(text)


@pytest.mark.parametrize(("one", "other", "overlap"), [
    ("127.0.0.1:9", "127.0.0.1:9", True),
    ("0.0.0.0:9", "10.0.0.5:9", True),  # a wildcard listener takes every address's
    ("[::]:9", "127.0.0.1:9", True),
    ("localhost:9", "[::1]:9", True),
    ("[0::1]:9", "[::1]:9", True),
    ("127.0.0.2:9", "127.0.0.1:9", False),
    ("10.0.0.5:9", "10.0.0.6:9", False),
    ("127.0.0.1:9", "127.0.0.1:10", False),
    ("facility.example.org:9", "127.0.0.1:9", False),  # telling would take a lookup
])
def test_contacts_overlap_where_one_listener_would_take_the_others(one: str, other: str,
                                                                   overlap: bool) -> None:
    assert parse_contact(one).overlaps(parse_contact(other)) is overlap
    assert parse_contact(other).overlaps(parse_contact(one)) is overlap


def test_free_ports_come_from_outside_the_range_the_kernel_hands_out() -> None:
    """So no bind to port 0 or outgoing connection takes one before its user binds it; and
    never one handed out before, which may be free only until its user binds it."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if low <= 10000 and high >= 65535:
        pytest.skip(f"the ephemeral range {low}-{high} leaves no room outside it")
    ports = []
    for host in ("127.0.0.1", "::1"):
        for _ in range(50):
            port = free_port(host)
            ports.append(port)
            assert not low <= port <= high
            with socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                      else socket.AF_INET):
                pass
    assert len(set(ports)) == len(ports)


hosts = st.from_regex(r"[a-z]([a-z0-9-]{0,18}[a-z0-9])?(\.[a-z][a-z0-9]{0,10}){0,3}",
                      fullmatch=True)
contacts = st.builds(Contact, hosts, st.integers(1, 65535))
values = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#"),
                 min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    lankey=st.none() | values,
    contact=st.none() | contacts,
    listener=st.none() | contacts,
    fake_port=st.none() | st.integers(1, 65535),
    ttl=st.integers(0, 10**6).map(float),
    update_time=st.none() | st.integers(0, 2**33).map(float),
    globus_contacts=st.lists(contacts, max_size=3),
    extra=st.dictionaries(st.from_regex(r"x_[a-z_]{1,10}", fullmatch=True), values, max_size=3),
)
def test_any_conf_round_trips(lankey: str | None, contact: Contact | None,
                              listener: Contact | None, fake_port: int | None, ttl: float,
                              update_time: float | None, globus_contacts: list[Contact],
                              extra: dict[str, str]) -> None:
    original = conf.TunnelConf(
        TUNNEL, lankey=lankey, connector_contact_string=contact, fake_port=fake_port,
        connector_contact_string_ttl=ttl, update_time=update_time,
        listener_contact_string=listener, globus_contacts=globus_contacts, extra=extra)
    text = "\n".join(original.to_lines())
    assert conf.parse(text, TUNNEL) == original


def test_cli_reports_a_bad_conf_in_one_line(tmp_path: Path) -> None:
    """A user-caused error through the real CLI: one line on stderr, the documented code."""
    folder = tmp_path / "listener"
    write(folder, "lankey=x\nlistener_contact_string=nonsense\n")
    result = subprocess.run(
        [sys.executable, "-m", "streams_trace", "gateway", "--listener-contact-string",
         "127.0.0.1:9", "--initiator-config-dir", str(tmp_path / "initiator"),
         "--listener-config-dir", str(folder), "--tunnel-id", TUNNEL],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"streams-trace: error: {folder}/{TUNNEL}.conf:2: bad "
                               "listener_contact_string")


def test_secrets_never_show_in_reprs() -> None:
    """Secrets stay out of reprs, so no log line, %r or test failure can print them."""
    from streams_trace.globus.auth import Credentials

    tunnel = conf.TunnelConf(TUNNEL, lankey="LAN-SECRET-VALUE")
    assert "LAN-SECRET-VALUE" not in repr(tunnel)
    assert "CLIENT-SECRET" not in repr(Credentials("client-id", "CLIENT-SECRET"))


def test_refuses_to_write_into_a_folder_others_can_enter(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(ConfError, match=r"permissions 0755 let others in .* chmod 700"):
        conf.save(conf.TunnelConf(TUNNEL, lankey="s"), folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # left as it was
    assert list(folder.iterdir()) == []
