"""`streams-trace environment` against globus-sdk's own registered responses.

Every command runs through click's CliRunner (its isolated stdin/stdout/stderr)
and the real `main()`, so exit codes and the one-line errors are the real ones.
Globus answers come from `globus_sdk.testing` (tunnel, access point and
endpoint documents, used as templates where a test needs another state) and
from responses registered here for the GCS Manager's `lan_secrets` call, all
through the `responses` library: an unregistered request fails, so no test
touches the network.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from click.testing import CliRunner
from globus_sdk.testing import RegisteredResponse, get_response_set, load_response
from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData
from responses import matchers

from streams_trace import conf as confmod
from streams_trace.cli import main
from streams_trace.contact import Contact
from streams_trace.globus.auth import APP_NAME, CLIENT_ID_ENV, CLIENT_SECRET_ENV, REGISTER_URL

CLIENT_ID = "6a2b1f0e-5c4d-4e3f-9a8b-7c6d5e4f3a2b"
IDENTITY_ID = "4d443580-012d-4954-816f-e0592bd356e1"
TRANSFER = "transfer.api.globus.org"
TRANSFER_SCOPE = "urn:globus:auth:scope:transfer.api.globus.org:all"
AUTH = "auth.globus.org"
INITIATOR_ENDPOINT = "d6428474-c308-4a2d-8a86-d377915d978b"
LISTENER_ENDPOINT = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
INITIATOR_GCS = "https://initiator.e7d5e.data.globus.org"
LISTENER_GCS = "https://listener.a1b2c.data.globus.org"
INITIATOR_SECRET = "initiator-lan-secret-" + "7" * 43
LISTENER_SECRET = "listener-lan-secret-" + "3" * 44


# -- running the CLI -----------------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, input: str | None = None) -> Result:
    """Run `streams-trace ARGS` through CliRunner's isolation and the real main()."""
    runner = CliRunner()
    saved_argv = sys.argv
    with runner.isolation(input=input) as (out, err, _):
        sys.argv = ["streams-trace", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            sys.argv = saved_argv
        return Result(code, out.getvalue().decode(), err.getvalue().decode())


def assert_one_line_error(result: Result, code: int, *fragments: str) -> str:
    assert result.code == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streams-trace: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


# -- the Globus side --------------------------------------------------------------------


@dataclass
class Globus:
    """One tunnel as the SDK's registered get_tunnel response describes it."""

    home: Path
    config_dir: Path
    tunnel_id: str
    initiator_ap: str
    listener_ap: str

    def conf_path(self) -> Path:
        return self.config_dir / f"{self.tunnel_id}.conf"

    def load_conf(self) -> confmod.TunnelConf:
        return confmod.load(self.tunnel_id, self.config_dir)


@pytest.fixture
def globus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Globus]:
    """A home folder, a client ID, and `responses` answering in place of Globus."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(CLIENT_ID_ENV, CLIENT_ID)
    monkeypatch.delenv(CLIENT_SECRET_ENV, raising=False)
    monkeypatch.delenv("GLOBUS_SDK_ENVIRONMENT", raising=False)
    config_dir = tmp_path / "streams"
    monkeypatch.setenv(confmod.CONFIG_DIR_ENV, str(config_dir))
    tunnel = get_response_set(globus_sdk.TransferClient.get_tunnel).lookup("default").metadata
    # The initiator side uses the SDK's stream access point unchanged (its host endpoint
    # is INITIATOR_ENDPOINT); the listener side a copy of it.
    access_point = get_response_set(globus_sdk.TransferClient.get_stream_access_point).lookup(
        "default").metadata
    responses.start()
    try:
        yield Globus(home, config_dir, tunnel["tunnel_id"], access_point["access_point_id"],
                     tunnel["listener_ap"])
    finally:
        responses.stop()
        responses.reset()


def token_storage() -> JSONTokenStorage:
    """The storage the app uses: globus-sdk's JSON file under ~/.globus/app/."""
    storage = JSONTokenStorage.for_globus_app(
        client_id=CLIENT_ID, app_name=APP_NAME, config=globus_sdk.GlobusAppConfig(),
        namespace="DEFAULT")
    assert isinstance(storage, JSONTokenStorage)
    return storage


def log_in(*endpoints: str, identity: str | None = IDENTITY_ID) -> None:
    """Store valid tokens, as a finished `streams-trace login` would have."""
    scopes = {TRANSFER: TRANSFER_SCOPE, AUTH: "openid profile email"}
    scopes.update({e: f"urn:globus:auth:scope:{e}:manage_collections" for e in endpoints})
    expires = int(time.time()) + 3600
    storage = token_storage()
    storage.store_token_data_by_resource_server({
        server: TokenStorageData(resource_server=server, identity_id=identity, scope=scope,
                                 access_token=f"{server}-access", refresh_token=f"{server}-refresh",
                                 expires_at_seconds=expires, token_type="Bearer")
        for server, scope in scopes.items()
    })
    storage.close()


def utc_now_text(offset_minutes: float = 0) -> str:
    """A time as Globus writes created_time: ISO 8601, UTC, no zone."""
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=offset_minutes)
    return moment.replace(tzinfo=None).isoformat()


def tunnel_document(g: Globus, state: str, *, initiator: tuple[str, int] | None = None,
                    status: str | None = None, created: str | None = None) -> dict[str, Any]:
    """The SDK's registered tunnel document, in the state a test needs."""
    template = get_response_set(globus_sdk.TransferClient.get_tunnel).lookup("default")
    document: dict[str, Any] = copy.deepcopy(template.json)  # type: ignore[arg-type]
    document["data"]["id"] = g.tunnel_id
    document["data"]["relationships"]["initiator"]["data"]["id"] = g.initiator_ap
    attributes = document["data"]["attributes"]
    attributes["state"] = state
    attributes["created_time"] = created or utc_now_text(-5)
    if status:
        attributes["status"] = status
    if initiator:
        attributes["initiator_ip_address"], attributes["initiator_port"] = initiator
    return document


def serve_tunnel(g: Globus, state: str = "ACTIVE", **kwargs: Any) -> None:
    RegisteredResponse(service="transfer", path=f"/v2/tunnels/{g.tunnel_id}",
                       json=tunnel_document(g, state, **kwargs)).add()


def serve_tunnel_error(g: Globus, status: int, code: str, detail: str) -> None:
    RegisteredResponse(service="transfer", path=f"/v2/tunnels/{g.tunnel_id}", status=status,
                       json={"errors": [{"status": str(status), "code": code,
                                         "detail": detail}]}).add()


def serve_access_points(g: Globus) -> None:
    """The SDK's stream access point document as is, and a copy for the listener's."""
    template = load_response(globus_sdk.TransferClient.get_stream_access_point)
    document: dict[str, Any] = copy.deepcopy(template.json)  # type: ignore[arg-type]
    assert document["data"]["relationships"]["host_endpoint"]["data"]["id"] == INITIATOR_ENDPOINT
    document["data"]["id"] = g.listener_ap
    document["data"]["relationships"]["host_endpoint"]["data"]["id"] = LISTENER_ENDPOINT
    RegisteredResponse(service="transfer", path=f"/v2/stream_access_points/{g.listener_ap}",
                       json=document).add()


def serve_endpoints(*, with_gcs_url: bool = True) -> None:
    """The SDK's endpoint document, as a GCSv5 endpoint with its GCS Manager URL."""
    from globus_sdk.testing.data.transfer.get_endpoint import ENDPOINT_DOC

    for endpoint, url in ((INITIATOR_ENDPOINT, INITIATOR_GCS), (LISTENER_ENDPOINT, LISTENER_GCS)):
        document = dict(ENDPOINT_DOC, id=endpoint, entity_type="GCSv5_endpoint", DATA=[],
                        gcs_manager_url=url if with_gcs_url else None)
        RegisteredResponse(service="transfer", path=f"/v0.10/endpoint/{endpoint}",
                           json=document).add()


def serve_lan_secret(g: Globus, side: str, *, status: int = 200,
                     body: dict[str, Any] | None = None, secret: str | None = None) -> None:
    """The GCS Manager's answer to POST /api/lan_secrets, for the request of that side."""
    url, default_secret, ap = {
        "initiator": (INITIATOR_GCS, INITIATOR_SECRET, g.initiator_ap),
        "listener": (LISTENER_GCS, LISTENER_SECRET, g.listener_ap),
    }[side]
    secret = secret or default_secret
    if body is None:
        body = {"DATA_TYPE": "result#1.0.0", "code": "success", "http_response_code": 200,
                "data": [{"DATA_TYPE": "lan_secret#1.0.0", "id": f"{side}-secret-id",
                          "secret": secret, "expires": utc_now_text(600)}]}
    expected = {"DATA_TYPE": "lan_secret_create#1.0.0", "tunnel_id": g.tunnel_id,
                "stream_access_point_id": ap}
    responses.add(responses.POST, f"{url}/api/lan_secrets", json=body, status=status,
                  match=[matchers.json_params_matcher(expected)])


def serve_listener_update(g: Globus, contact: Contact) -> None:
    """The SDK's registered update_tunnel answer, for this tunnel and this contact."""
    template = get_response_set(globus_sdk.TransferClient.update_tunnel).lookup("default")
    document: dict[str, Any] = copy.deepcopy(template.json)  # type: ignore[arg-type]
    document["data"]["id"] = g.tunnel_id
    document["data"]["attributes"].update(state="ACTIVE", listener_ip_address=contact.host,
                                          listener_port=contact.port)
    expected = {"data": {"type": "Tunnel", "attributes": {
        "listener_ip_address": contact.host, "listener_port": contact.port}}}
    RegisteredResponse(service="transfer", method="PATCH", path=f"/v2/tunnels/{g.tunnel_id}",
                       json=document, match=[matchers.json_params_matcher(expected)]).add()


def calls_to(fragment: str) -> list[Any]:
    return [call for call in responses.calls if fragment in call.request.url]


def bearer(call: Any) -> str:
    return str(call.request.headers.get("Authorization", ""))


# -- initialize: the initiator side --------------------------------------------------------


def test_initiator_side_writes_the_official_conf(globus: Globus) -> None:
    log_in(INITIATOR_ENDPOINT)
    serve_tunnel(globus, initiator=("198.51.100.7", 50123), created=utc_now_text(-60))
    serve_access_points(globus)
    serve_endpoints()
    serve_lan_secret(globus, "initiator")

    before = time.time()
    result = run_cli("environment", "initialize", "--globus-contact", "myhost.example.org:443",
                     globus.tunnel_id)
    assert result.code == 0, result
    conf = globus.load_conf()
    assert result.stdout.splitlines() == [
        f"Initializing the environment for tunnel: {globus.tunnel_id}",
        f"The environment is initialized for use with tunnel {globus.tunnel_id}",
        f"Your application key file base directory is {globus.config_dir}/",
        f"Your contact string is: globus.{globus.tunnel_id}:{conf.fake_port}",
        "Connections to myhost.example.org:443 also go through the tunnel",
    ]
    assert result.stderr == ""
    assert conf.lankey == INITIATOR_SECRET and conf.lankey_id == "initiator-secret-id"
    assert conf.connector_contact_string == Contact("198.51.100.7", 50123)
    assert conf.connector_contact_string_ttl == confmod.DEFAULT_CONTACT_TTL
    assert conf.update_time is not None and before - 1 <= conf.update_time <= time.time()
    assert conf.endpoint_id == INITIATOR_ENDPOINT
    assert conf.globus_contacts == [Contact("myhost.example.org", 443)]
    assert conf.listener_contact_string is None
    # created an hour ago with the SDK document's 360 minutes of lifetime: 300 minutes left
    assert conf.tunnel_expiration_time is not None
    assert abs(conf.tunnel_expiration_time - (time.time() + 300 * 60)) < 5
    # The official file: official keys first, in order; secure modes.
    keys = [line.partition("=")[0] for line in globus.conf_path().read_text().splitlines()]
    assert keys[:8] == list(confmod.OFFICIAL_KEYS)
    assert stat.S_IMODE(globus.conf_path().stat().st_mode) == 0o600
    assert stat.S_IMODE(globus.config_dir.stat().st_mode) == 0o700
    # Each service got its own token: Transfer's, and the endpoint's for the GCS Manager.
    assert all(bearer(c) == f"Bearer {TRANSFER}-access" for c in calls_to("transfer.api"))
    (secret_call,) = calls_to("/api/lan_secrets")
    assert bearer(secret_call) == f"Bearer {INITIATOR_ENDPOINT}-access"


def initialize_initiator(globus: Globus) -> None:
    """A logged-in user initializes the initiator side of a ready tunnel."""
    log_in(INITIATOR_ENDPOINT)
    serve_tunnel(globus, initiator=("198.51.100.7", 50123))
    serve_access_points(globus)
    serve_endpoints()
    serve_lan_secret(globus, "initiator")
    assert run_cli("environment", "initialize", globus.tunnel_id).code == 0


def test_initialize_again_keeps_the_fake_port(globus: Globus) -> None:
    initialize_initiator(globus)
    first = globus.load_conf()
    assert run_cli("environment", "initialize", globus.tunnel_id).code == 0
    assert globus.load_conf().fake_port == first.fake_port


def test_initiator_waits_while_the_tunnel_awaits_its_listener(globus: Globus) -> None:
    log_in(INITIATOR_ENDPOINT)
    serve_tunnel(globus, "AWAITING_LISTENER")  # the SDK's own state for a new tunnel
    serve_tunnel(globus, "AWAITING_LISTENER")
    serve_tunnel(globus, "ACTIVE", initiator=("198.51.100.7", 50200))
    serve_access_points(globus)
    serve_endpoints()
    serve_lan_secret(globus, "initiator")

    result = run_cli("environment", "initialize", "--poll-interval", "0.01", globus.tunnel_id)
    assert result.code == 0, result
    progress = result.stderr.strip().splitlines()
    assert len(progress) == 2
    assert all("is AWAITING_LISTENER: waiting for its listener side to register" in line
               and "of 300 s" in line for line in progress)
    assert len(calls_to(f"/v2/tunnels/{globus.tunnel_id}")) == 3
    assert globus.load_conf().connector_contact_string == Contact("198.51.100.7", 50200)


def test_initiator_gives_up_when_the_listener_never_registers(globus: Globus) -> None:
    log_in(INITIATOR_ENDPOINT)
    serve_tunnel(globus, "AWAITING_LISTENER")
    result = run_cli("environment", "initialize", "--wait", "0.2", "--poll-interval", "0.05",
                     globus.tunnel_id)
    assert result.code == 5
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("streams-trace: error: ")
    assert "still AWAITING_LISTENER" in error and "--listener-contact-string" in error
    assert not globus.conf_path().exists()


# -- initialize: the listener side -------------------------------------------------------


def test_listener_side_registers_its_contact(globus: Globus) -> None:
    log_in(LISTENER_ENDPOINT)
    serve_tunnel(globus, "AWAITING_LISTENER")
    contact = Contact("10.0.2.164", 8888)
    serve_listener_update(globus, contact)
    serve_access_points(globus)
    serve_endpoints()
    serve_lan_secret(globus, "listener")

    result = run_cli("environment", "initialize", "--listener-contact-string", "10.0.2.164:8888",
                     globus.tunnel_id)
    assert result.code == 0, result
    assert "The listener access point will connect to 10.0.2.164:8888" in result.stdout
    assert "Your contact string" not in result.stdout
    conf = globus.load_conf()
    assert conf.listener_contact_string == contact
    assert conf.lankey == LISTENER_SECRET and conf.endpoint_id == LISTENER_ENDPOINT
    assert conf.connector_contact_string is None and conf.fake_port is None
    (patch,) = [c for c in responses.calls if c.request.method == "PATCH"]
    assert json.loads(patch.request.body)["data"]["attributes"] == {
        "listener_ip_address": "10.0.2.164", "listener_port": 8888}
    assert not calls_to(INITIATOR_GCS)


def test_listener_contact_must_be_an_ip_address(globus: Globus) -> None:
    log_in()
    serve_tunnel(globus, "AWAITING_LISTENER")
    result = run_cli("environment", "initialize", "--listener-contact-string",
                     "listener.example.org:8888", globus.tunnel_id)
    assert_one_line_error(result, 2, "give an IP address")


# -- the LAN leg not secured --------------------------------------------------------------


def test_a_passing_gcs_manager_failure_fails_and_keeps_the_secret(globus: Globus) -> None:
    """A 5xx from the GCS Manager is no answer: initialize fails, and the conf (with the LAN
    secret it has) stays; it must not be rewritten without one."""
    initialize_initiator(globus)
    before = globus.conf_path().read_bytes()
    serve_lan_secret(globus, "initiator", status=503, body={
        "DATA_TYPE": "result#1.0.0", "code": "unavailable", "http_response_code": 503,
        "detail": "try again later"})
    # (responses answers with its registrations for one URL in order, so this one is next.)
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert result.code != 0 and len(result.stderr.strip().splitlines()) == 1, result
    assert "503" in result.stderr
    assert globus.conf_path().read_bytes() == before


@pytest.mark.parametrize("answer", ["conflict", "no secret", "no GCS Manager URL"])
def test_lan_leg_not_secured_is_said_plainly(globus: Globus, answer: str) -> None:
    log_in(INITIATOR_ENDPOINT)
    serve_tunnel(globus, initiator=("198.51.100.7", 50123))
    serve_access_points(globus)
    serve_endpoints(with_gcs_url=answer != "no GCS Manager URL")
    if answer == "conflict":
        serve_lan_secret(globus, "initiator", status=409, body={
            "DATA_TYPE": "result#1.0.0", "code": "conflict", "http_response_code": 409,
            "detail": "LAN secrets are not enabled on this gateway"})
    elif answer == "no secret":
        serve_lan_secret(globus, "initiator", body={"DATA_TYPE": "result#1.0.0", "data": []})

    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert result.code == 0, result
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("streams-trace: warning: the LAN leg of the initiator side "
                              "is not secured (")
    conf = globus.load_conf()
    assert conf.lankey is None and conf.secret is None
    assert conf.connector_contact_string == Contact("198.51.100.7", 50123)
    assert "Your contact string is:" in result.stdout


# -- Globus errors ---------------------------------------------------------------------------


def test_unknown_tunnel(globus: Globus) -> None:
    log_in()
    serve_tunnel_error(globus, 404, "NOT_FOUND", "Tunnel not found")
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert_one_line_error(result, 5, f"Globus knows no tunnel {globus.tunnel_id}",
                          "globus streams tunnel list")


@pytest.mark.parametrize("state", ["STOPPED", "STOPPING"])
def test_stopped_tunnel(globus: Globus, state: str) -> None:
    log_in()
    serve_tunnel(globus, state, status="The tunnel has reached the end of its lifetime")
    for side in ([], ["--listener-contact-string", "10.0.2.164:8888"]):
        result = run_cli("environment", "initialize", *side, globus.tunnel_id)
        assert_one_line_error(result, 5, f"is {state.lower()}", "end of its lifetime",
                              "globus streams tunnel create")
    assert not [c for c in responses.calls if c.request.method == "PATCH"]


def test_no_permission_on_the_tunnel(globus: Globus) -> None:
    log_in()
    serve_tunnel_error(globus, 403, "FORBIDDEN", "You do not own this tunnel")
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert_one_line_error(result, 4, "permission denied", "You do not own this tunnel")


def test_no_permission_on_the_endpoint(globus: Globus) -> None:
    log_in(INITIATOR_ENDPOINT)
    serve_tunnel(globus, initiator=("198.51.100.7", 50123))
    serve_access_points(globus)
    serve_endpoints()
    serve_lan_secret(globus, "initiator", status=403, body={
        "DATA_TYPE": "result#1.0.0", "code": "permission_denied", "http_response_code": 403,
        "detail": "You do not have permission to use this stream access point"})
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert_one_line_error(result, 4, f"no permission on endpoint {INITIATOR_ENDPOINT}",
                          "ask its administrators")
    assert not globus.conf_path().exists()


def test_missing_consent_reported_by_the_gcs_manager(globus: Globus) -> None:
    log_in(INITIATOR_ENDPOINT)
    serve_tunnel(globus, initiator=("198.51.100.7", 50123))
    serve_access_points(globus)
    serve_endpoints()
    scope = f"urn:globus:auth:scope:{INITIATOR_ENDPOINT}:manage_collections"
    serve_lan_secret(globus, "initiator", status=403, body={
        "code": "ConsentRequired", "message": "Missing required consent",
        "required_scopes": [scope], "authorization_parameters": {"required_scopes": [scope]}})
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert_one_line_error(result, 4, "needs your consent",
                          f"streams-trace login --endpoint {INITIATOR_ENDPOINT}")


def test_missing_consent_for_the_endpoint_without_a_terminal(globus: Globus) -> None:
    log_in()  # Transfer only: the endpoint's scope was never consented to
    serve_tunnel(globus, initiator=("198.51.100.7", 50123))
    serve_access_points(globus)
    serve_endpoints()
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert_one_line_error(result, 4, f"needs your consent for endpoint {INITIATOR_ENDPOINT}",
                          f"run 'streams-trace login --endpoint {INITIATOR_ENDPOINT}'")
    assert not calls_to("/api/lan_secrets")


def test_not_logged_in(globus: Globus) -> None:
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert_one_line_error(result, 4, "not logged in to Globus", "run 'streams-trace login'")
    assert not responses.calls


def test_no_client_id_says_how_to_register_one(globus: Globus,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLIENT_ID_ENV)
    for args in (["environment", "initialize", globus.tunnel_id], ["login"], ["whoami"]):
        result = run_cli(*args)
        assert_one_line_error(result, 4, "no Globus client ID", REGISTER_URL, "--client-id",
                              CLIENT_ID_ENV)
        assert result.stdout == ""


def test_client_id_option_wins_and_is_checked(globus: Globus,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLIENT_ID_ENV)
    result = run_cli("environment", "initialize", "--client-id", "not-a-uuid", globus.tunnel_id)
    assert_one_line_error(result, 4, "'not-a-uuid' is not a Globus client ID")
    log_in()
    serve_tunnel_error(globus, 404, "NOT_FOUND", "Tunnel not found")
    result = run_cli("environment", "initialize", "--client-id", CLIENT_ID, globus.tunnel_id)
    assert_one_line_error(result, 5, "Globus knows no tunnel")


def test_globus_unreachable_is_a_network_error(globus: Globus) -> None:
    log_in()  # nothing registered: `responses` refuses the connection
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert_one_line_error(result, 6, "Globus is unreachable")


# -- contact-lookup ----------------------------------------------------------------------------


def write_initiator_conf(g: Globus, *, looked_up_ago: float, contact: str = "198.51.100.7:50123",
                         ttl: float = 10, expires_in: float = 3600) -> confmod.TunnelConf:
    now = time.time()
    conf = confmod.parse(
        f"lankey={INITIATOR_SECRET}\nlankey_id=initiator-secret-id\n"
        f"connector_contact_string={contact}\nupdate_time={int(now - looked_up_ago)}\n"
        f"connector_contact_string_ttl={ttl:g}\nendpoint_id={INITIATOR_ENDPOINT}\n"
        f"fake_port=3425\ntunnel_expiration_time={int(now + expires_in)}\n"
        f"globus_contacts=myhost.example.org:443\nsite_key=kept\n", g.tunnel_id)
    confmod.save(conf, g.config_dir)
    return conf


def test_contact_lookup_of_a_fresh_contact_asks_nobody(globus: Globus) -> None:
    write_initiator_conf(globus, looked_up_ago=2)
    result = run_cli("environment", "contact-lookup", globus.tunnel_id)
    assert (result.code, result.stdout, result.stderr) == (0, "198.51.100.7:50123\n", "")
    assert not responses.calls


def test_contact_lookup_refreshes_an_expired_contact(globus: Globus) -> None:
    log_in()
    old = write_initiator_conf(globus, looked_up_ago=60)
    serve_tunnel(globus, initiator=("203.0.113.9", 50999))  # the tunnel restarted elsewhere
    result = run_cli("environment", "contact-lookup", globus.tunnel_id)
    assert (result.code, result.stdout, result.stderr) == (0, "203.0.113.9:50999\n", ""), result
    conf = globus.load_conf()
    assert conf.connector_contact_string == Contact("203.0.113.9", 50999)
    assert conf.update_time is not None and time.time() - conf.update_time < 5
    # Everything else is kept, the unknown key included; the file stays private.
    assert (conf.lankey, conf.lankey_id, conf.fake_port, conf.globus_contacts, conf.extra) == (
        old.lankey, old.lankey_id, old.fake_port, old.globus_contacts, {"site_key": "kept"})
    assert stat.S_IMODE(globus.conf_path().stat().st_mode) == 0o600
    # Looked up once; the next call within the TTL asks nobody.
    assert run_cli("environment", "contact-lookup", globus.tunnel_id).code == 0
    assert len(responses.calls) == 1


def test_contact_lookup_of_a_stopped_tunnel(globus: Globus) -> None:
    log_in()
    write_initiator_conf(globus, looked_up_ago=60)
    serve_tunnel(globus, "STOPPED", initiator=("203.0.113.9", 50999),
                 status="Stopped by its owner")
    result = run_cli("environment", "contact-lookup", globus.tunnel_id)
    assert_one_line_error(result, 5, "is stopped (Stopped by its owner)")
    assert globus.load_conf().connector_contact_string == Contact("198.51.100.7", 50123)


def test_contact_lookup_of_an_expired_conf_asks_nobody(globus: Globus) -> None:
    write_initiator_conf(globus, looked_up_ago=60, expires_in=-10)
    result = run_cli("environment", "contact-lookup", globus.tunnel_id)
    assert_one_line_error(result, 3, "expired", "create a new tunnel")
    assert not responses.calls


def test_contact_lookup_not_logged_in(globus: Globus) -> None:
    write_initiator_conf(globus, looked_up_ago=60)
    result = run_cli("environment", "contact-lookup", globus.tunnel_id)
    assert_one_line_error(result, 4, "not logged in", "streams-trace login")


def test_contact_lookup_on_the_listener_side(globus: Globus) -> None:
    confmod.save(confmod.TunnelConf(tunnel_id=globus.tunnel_id, lankey=LISTENER_SECRET,
                                    listener_contact_string=Contact("10.0.2.164", 8888)),
                 globus.config_dir)
    result = run_cli("environment", "contact-lookup", globus.tunnel_id)
    assert_one_line_error(result, 3, "listener side", "contact-lookup is for the initiator side")
    assert not responses.calls


def test_contact_lookup_without_a_conf(globus: Globus) -> None:
    result = run_cli("environment", "contact-lookup", globus.tunnel_id)
    assert_one_line_error(result, 3, "no conf for tunnel", "environment initialize")


# -- show and cleanup ----------------------------------------------------------------------------


def test_show_masks_the_secret(globus: Globus) -> None:
    write_initiator_conf(globus, looked_up_ago=2)
    result = run_cli("environment", "show", globus.tunnel_id)
    assert result.code == 0, result
    assert INITIATOR_SECRET not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"# {globus.conf_path()}"
    assert "lankey=******** (hidden)" in lines
    assert "connector_contact_string=198.51.100.7:50123" in lines
    assert "site_key=kept" in lines
    assert "# side: initiator" in lines
    assert f"# contact string: globus.{globus.tunnel_id}:3425" in lines
    assert any(line.startswith("# contact: fresh for ") for line in lines)
    assert not responses.calls


def test_show_says_when_the_lan_leg_is_not_secured(globus: Globus) -> None:
    confmod.save(confmod.TunnelConf(tunnel_id=globus.tunnel_id,
                                    listener_contact_string=Contact("10.0.2.164", 8888)),
                 globus.config_dir)
    result = run_cli("environment", "show", globus.tunnel_id)
    assert "# side: listener" in result.stdout
    assert "# LAN leg: not secured (no lankey)" in result.stdout


def test_cleanup_removes_expired_confs_only(globus: Globus, tmp_path: Path) -> None:
    expired = "0e8a675b-6b84-4220-89e4-a6a7a0d823fb"
    live = "1c1be52d-2d4d-4200-b4ad-d75d43eb0d9c"
    for tunnel_id, expires_in in ((expired, -60), (live, 3600)):
        expires = float(int(time.time() + expires_in))
        confmod.save(confmod.TunnelConf(tunnel_id=tunnel_id, lankey="k",
                                        tunnel_expiration_time=expires), globus.config_dir)
    (globus.config_dir / "notes.conf").write_text("not a tunnel\n")

    result = run_cli("environment", "cleanup", "--dry-run")
    assert result.code == 0 and f"would remove {globus.config_dir}/{expired}.conf" in result.stdout
    assert (globus.config_dir / f"{expired}.conf").exists()

    result = run_cli("environment", "cleanup")
    assert result.code == 0, result
    assert result.stdout.splitlines() == [
        f"removed {globus.config_dir}/{expired}.conf (tunnel expired)",
        f"removed 1 expired conf(s), kept 1, in {globus.config_dir}",
    ]
    assert sorted(p.name for p in globus.config_dir.iterdir()) == [f"{live}.conf", "notes.conf"]
    assert not responses.calls


def test_cleanup_judges_each_file_by_its_own_content(globus: Globus) -> None:
    """A file named in capitals is not the conf of that tunnel (load reads the lower-case
    name): an expired conf beside it must not get it removed."""
    tunnel_id = "0e8a675b-6b84-4220-89e4-a6a7a0d823fb"
    confmod.save(confmod.TunnelConf(tunnel_id=tunnel_id, lankey="k",
                                    tunnel_expiration_time=float(int(time.time() - 60))),
                 globus.config_dir)
    capitals = globus.config_dir / f"{tunnel_id.upper()}.conf"
    capitals.write_text(f"lankey=live\ntunnel_expiration_time={int(time.time()) + 3600}\n")
    capitals.chmod(0o600)
    result = run_cli("environment", "cleanup")
    assert result.code == 0, result
    assert capitals.exists()
    assert not (globus.config_dir / f"{tunnel_id}.conf").exists()


def test_help_of_every_environment_command() -> None:
    for command in ("initialize", "contact-lookup", "show", "cleanup"):
        result = run_cli("environment", command, "--help")
        assert result.code == 0 and "Usage: streams-trace environment" in result.stdout


def test_bad_tunnel_id_is_a_usage_error() -> None:
    result = run_cli("environment", "show", "not-a-tunnel")
    assert result.code == 2 and "is not a tunnel ID" in result.stderr


def test_conf_folder_option_and_permissions(globus: Globus, tmp_path: Path) -> None:
    log_in(INITIATOR_ENDPOINT)
    serve_tunnel(globus, initiator=("198.51.100.7", 50123))
    serve_access_points(globus)
    serve_endpoints()
    serve_lan_secret(globus, "initiator")
    elsewhere = tmp_path / "elsewhere"
    result = run_cli("environment", "initialize", "--config-dir", str(elsewhere), globus.tunnel_id)
    assert result.code == 0, result
    assert f"Your application key file base directory is {elsewhere}/" in result.stdout
    assert confmod.load(globus.tunnel_id, elsewhere).lankey == INITIATOR_SECRET
    assert not globus.conf_path().exists()
    assert os.stat(elsewhere).st_mode & 0o077 == 0


def test_every_option_is_in_the_man_page() -> None:
    import click

    from streams_trace.cli import cli

    text = (Path(__file__).resolve().parent.parent / "man" / "streams-trace-environment.1"
            ).read_text().replace("\\-", "-")
    ctx = click.Context(cli)
    environment = cli.get_command(ctx, "environment")
    assert isinstance(environment, click.Group)
    commands = [environment.commands[name] for name in environment.commands]
    commands += [cli.get_command(ctx, name) for name in ("login", "logout", "whoami")]
    for command in commands:
        assert command is not None
        assert command.name and command.name in text
        for param in command.params:
            for option in param.opts:
                if option.startswith("--") and not getattr(param, "hidden", False):
                    assert option in text, f"{command.name} {option} is not in the man page"


def test_a_multi_line_globus_message_stays_one_line(globus: Globus) -> None:
    log_in()
    serve_tunnel_error(globus, 409, "CONFLICT", "Tunnel is busy.\nTry again\n later.")
    result = run_cli("environment", "initialize", globus.tunnel_id)
    assert_one_line_error(result, 5, "Globus answered 409 Tunnel is busy. Try again later.")
