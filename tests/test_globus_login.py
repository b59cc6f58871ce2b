"""`streams-trace login | logout | whoami` against Globus Auth's registered responses.

The native-app login runs whole: the authorize URL goes to stderr, the code is
read from stdin, exchanged at the token endpoint, and the ID token (signed here
with a throw-away RSA key that the registered JWKS publishes) is checked by
globus-sdk before the tokens land in its JSON token file under $HOME.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

import globus_sdk
import jwt
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import rsa
from globus_sdk.testing import RegisteredResponse, load_response

from streams_trace.globus.auth import CLIENT_SECRET_ENV

from .test_environment import (
    AUTH,
    CLIENT_ID,
    IDENTITY_ID,
    INITIATOR_ENDPOINT,
    TRANSFER,
    TRANSFER_SCOPE,
    Globus,
    assert_one_line_error,
    globus,
    log_in,
    run_cli,
    token_storage,
)

__all__ = ["globus"]  # the fixture, shared with test_environment

ISSUER = "https://auth.globus.org"
USERNAME = "ada@example.org"


def serve_openid_keys() -> rsa.RSAPrivateKey:
    """Globus Auth's OpenID configuration and JWKS, for a key made here."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    RegisteredResponse(service="auth", path="/.well-known/openid-configuration", json={
        "issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwk.json",
        "id_token_signing_alg_values_supported": ["RS512"],
    }).add()
    RegisteredResponse(service="auth", path="/jwk.json", json={"keys": [public]}).add()
    return key


def serve_code_exchange(key: rsa.RSAPrivateKey, *extra_servers: str) -> None:
    now = int(time.time())
    id_token = jwt.encode({"sub": IDENTITY_ID, "aud": CLIENT_ID, "iss": ISSUER, "iat": now,
                           "exp": now + 600, "preferred_username": USERNAME},
                          key, algorithm="RS512")
    other = [{"resource_server": TRANSFER, "scope": TRANSFER_SCOPE, "access_token": "t-access",
              "refresh_token": "t-refresh", "expires_in": 172800, "token_type": "Bearer"}]
    other += [{"resource_server": server, "access_token": f"{server}-access",
               "scope": f"urn:globus:auth:scope:{server}:manage_collections",
               "refresh_token": f"{server}-refresh", "expires_in": 172800,
               "token_type": "Bearer"} for server in extra_servers]
    RegisteredResponse(service="auth", path="/v2/oauth2/token", method="POST", json={
        "access_token": "a-access", "refresh_token": "a-refresh", "expires_in": 172800,
        "scope": "openid profile email", "resource_server": AUTH, "token_type": "Bearer",
        "id_token": id_token, "other_tokens": other,
    }).add()


def serve_userinfo() -> None:
    RegisteredResponse(service="auth", path="/v2/oauth2/userinfo", json={
        "sub": IDENTITY_ID, "preferred_username": USERNAME, "name": "Ada Lovelace",
        "email": "ada@example.org", "identity_provider": "example.org",
    }).add()


def form(call: Any) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(call.request.body))


def test_login_prints_a_url_reads_the_code_and_keeps_the_tokens(globus: Globus) -> None:
    serve_code_exchange(serve_openid_keys(), INITIATOR_ENDPOINT)
    result = run_cli("login", "--endpoint", INITIATOR_ENDPOINT, input="the-code-from-globus\n")
    assert result.code == 0, result
    # The URL goes to stderr (stdout stays clean), asking for every scope needed.
    url = next(word for word in result.stderr.split() if word.startswith("https://"))
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert url.startswith(f"{ISSUER}/v2/oauth2/authorize?")
    assert query["client_id"] == [CLIENT_ID]
    scopes = query["scope"][0].split()
    assert TRANSFER_SCOPE in scopes and "openid" in scopes
    assert f"urn:globus:auth:scope:{INITIATOR_ENDPOINT}:manage_collections" in scopes
    assert "Authorization code:" in result.stderr
    (exchange,) = [c for c in responses.calls if c.request.url.endswith("/v2/oauth2/token")]
    assert form(exchange)["code"] == "the-code-from-globus"
    assert form(exchange)["grant_type"] == "authorization_code"
    # Tokens are where globus-sdk keeps an app's tokens.
    storage = token_storage()
    expected = f"{globus.home}/.globus/app/{CLIENT_ID}/streams-trace/tokens.json"
    assert storage.filepath == expected
    assert result.stdout.splitlines() == ["You are logged in to Globus.",
                                          f"Your tokens are kept in {expected}"]
    stored = storage.get_token_data_by_resource_server()
    assert set(stored) == {AUTH, TRANSFER, INITIATOR_ENDPOINT}
    assert {data.identity_id for data in stored.values()} == {IDENTITY_ID}
    # A second login has nothing to do.
    again = run_cli("login", "--endpoint", INITIATOR_ENDPOINT)
    assert again.code == 0 and "already logged in" in again.stdout


def test_login_without_a_code_on_stdin(globus: Globus) -> None:
    result = run_cli("login", input="")
    assert result.code == 4
    assert result.stderr.strip().splitlines()[-1].startswith(
        "streams-trace: error: no authorization code was entered")


def test_login_with_a_refused_code(globus: Globus) -> None:
    serve_openid_keys()
    load_response(globus_sdk.NativeAppAuthClient.oauth2_exchange_code_for_tokens,
                  case="invalid_grant")
    result = run_cli("login", input="a-stale-code\n")
    assert result.code == 4
    assert "Globus did not accept your login" in result.stderr.strip().splitlines()[-1]


def test_login_with_a_bad_endpoint_id(globus: Globus) -> None:
    assert_one_line_error(run_cli("login", "--endpoint", "nope"), 2, "endpoint ID is a UUID")


def test_whoami_and_logout(globus: Globus) -> None:
    log_in(INITIATOR_ENDPOINT)
    serve_userinfo()
    result = run_cli("whoami")
    assert (result.code, result.stdout) == (0, f"{USERNAME}\n"), result
    result = run_cli("whoami", "--verbose")
    assert result.stdout.splitlines() == [USERNAME, f"ID: {IDENTITY_ID}", "Name: Ada Lovelace",
                                          "Email: ada@example.org"]
    (userinfo, _) = [c for c in responses.calls if "userinfo" in c.request.url]
    assert userinfo.request.headers["Authorization"] == f"Bearer {AUTH}-access"

    load_response(globus_sdk.NativeAppAuthClient.oauth2_revoke_token)
    result = run_cli("logout")
    assert (result.code, result.stdout) == (
        0, "You are logged out of Globus (revoked the tokens of 3 services).\n"), result
    revoked = [form(c)["token"] for c in responses.calls if c.request.url.endswith("/revoke")]
    assert sorted(revoked) == sorted(f"{server}-{kind}" for server in
                                     (AUTH, TRANSFER, INITIATOR_ENDPOINT)
                                     for kind in ("access", "refresh"))
    assert token_storage().get_token_data_by_resource_server() == {}

    assert_one_line_error(run_cli("whoami"), 4, "not logged in to Globus",
                          "run 'streams-trace login'")
    result = run_cli("logout")
    assert (result.code, result.stdout) == (0, "You were not logged in to Globus; nothing to "
                                               "revoke.\n")


def test_whoami_with_revoked_tokens(globus: Globus) -> None:
    log_in()
    load_response(globus_sdk.AuthClient.userinfo, case="unauthorized")
    # On a 401 globus-sdk tries the refresh token once; it was revoked too.
    load_response(globus_sdk.NativeAppAuthClient.oauth2_exchange_code_for_tokens,
                  case="invalid_grant")
    assert_one_line_error(run_cli("whoami"), 4, "Globus did not accept your login",
                          "run 'streams-trace login'")


def test_service_account_logs_in_with_client_credentials(
    globus: Globus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, "service-account-secret")
    def client_credentials_grant(request: Any) -> tuple[int, dict[str, str], str]:
        # Globus Auth answers a client-credentials grant with one resource server's token.
        scope = dict(urllib.parse.parse_qsl(request.body))["scope"]
        server = TRANSFER if scope == TRANSFER_SCOPE else AUTH
        assert server == TRANSFER or set(scope.split()) == {"openid", "profile", "email"}
        return 200, {}, json.dumps({
            "access_token": f"{server}-access", "expires_in": 172800, "scope": scope,
            "resource_server": server, "token_type": "Bearer", "other_tokens": []})

    responses.add_callback(responses.POST, f"{ISSUER}/v2/oauth2/token",
                           callback=client_credentials_grant, content_type="application/json")
    result = run_cli("login", input="")
    assert result.code == 0, result
    assert "Log in to Globus" not in result.stderr  # no URL, no prompt
    grants = [c for c in responses.calls if c.request.url.endswith("/v2/oauth2/token")]
    assert {form(grant)["grant_type"] for grant in grants} == {"client_credentials"}
    assert all(g.request.headers["Authorization"].startswith("Basic ") for g in grants)
    assert set(token_storage().get_token_data_by_resource_server()) == {AUTH, TRANSFER}
