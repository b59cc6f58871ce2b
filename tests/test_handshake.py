"""The LAN handshake: the documented test vectors, every failure path, and fuzzing."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams_trace.handshake import (
    HEADER,
    MAGIC,
    MAX_BODY,
    Acceptor,
    Connector,
    Failure,
    Handshake,
    Message,
    State,
    encode,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TUNNEL = "0e8a675b-6b84-4220-89e4-a6a7a0d823fb"
OTHER_TUNNEL = "11111111-2222-4333-8444-555555555555"


def vectors() -> dict[str, str]:
    block = re.search(r"```vectors\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/protocol.md lost its test vectors"
    pairs = (line.split("=", 1) for line in block.group(1).splitlines() if "=" in line)
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


def run(connector: Handshake, acceptor: Handshake) -> None:
    """Carry messages between two machines until both stop, one byte at a time."""
    to_acceptor, to_connector = connector.start(), b""
    for _ in range(100):
        if to_acceptor:
            for i in range(len(to_acceptor)):
                to_connector += acceptor.receive(to_acceptor[i:i + 1])
            to_acceptor = b""
        if to_connector:
            for i in range(len(to_connector)):
                to_acceptor += connector.receive(to_connector[i:i + 1])
            to_connector = b""
        if not to_acceptor and not to_connector:
            return


# -- the documented vectors ---------------------------------------------------------


def test_vectors_match_the_specification() -> None:
    v = vectors()
    secret = v["secret"].encode()
    tunnel_id = v["tunnel_id"]
    nc, na = bytes.fromhex(v["connector_nonce"]), bytes.fromhex(v["acceptor_nonce"])

    # The proofs follow the formula in the document, computed here independently.
    def doc_proof(role: bytes) -> str:
        msg = (b"streams-trace LAN handshake v1\x00" + role + b"\x00"
               + uuid.UUID(tunnel_id).bytes + nc + na)
        return hmac.new(secret, msg, hashlib.sha256).hexdigest()

    assert doc_proof(b"acceptor") == v["acceptor_proof"]
    assert doc_proof(b"connector") == v["connector_proof"]

    connector = Connector(secret, tunnel_id, nonce=nc)
    acceptor = Acceptor(secret, tunnel_id, nonce=na)
    assert connector.start().hex() == v["hello"]
    assert acceptor.receive(bytes.fromhex(v["hello"])).hex() == v["challenge"]
    assert connector.receive(bytes.fromhex(v["challenge"])).hex() == v["proof"]
    assert acceptor.receive(bytes.fromhex(v["proof"])).hex() == v["accept"]
    assert acceptor.state is State.AUTHENTICATED
    assert connector.receive(bytes.fromhex(v["accept"])) == b""
    assert connector.state is State.AUTHENTICATED

    wrong = Connector(b"another secret", tunnel_id, nonce=nc)
    assert wrong.receive(bytes.fromhex(v["challenge"])).hex() == v["reject_bad_proof"]
    assert wrong.failure is Failure.BAD_PROOF


# -- behaviour ----------------------------------------------------------------------


def test_same_secret_authenticates_byte_by_byte() -> None:
    connector, acceptor = Connector(b"s3cret", TUNNEL), Acceptor(b"s3cret", TUNNEL)
    run(connector, acceptor)
    assert connector.state is State.AUTHENTICATED
    assert acceptor.state is State.AUTHENTICATED


def test_bytes_needed_never_reaches_past_the_handshake() -> None:
    """A reader asking for bytes_needed stops exactly where application data begins."""
    acceptor_nonce = bytes(range(32))
    connector = Connector(b"k", TUNNEL)
    twin = Acceptor(b"k", TUNNEL, nonce=acceptor_nonce)
    hello = connector.start()
    proof_message = connector.receive(twin.receive(hello))
    # The connector's side of the connection as one stream, with data sent right after PROOF.
    stream = hello + proof_message + b"APPLICATION DATA"
    acceptor = Acceptor(b"k", TUNNEL, nonce=acceptor_nonce)
    while acceptor.bytes_needed:
        size = acceptor.bytes_needed
        acceptor.receive(stream[:size])
        stream = stream[size:]
    assert acceptor.state is State.AUTHENTICATED
    assert stream == b"APPLICATION DATA"
    assert acceptor.leftover == b""


def test_application_bytes_in_the_same_read_become_leftover() -> None:
    connector, acceptor = Connector(b"k", TUNNEL), Acceptor(b"k", TUNNEL)
    challenge = acceptor.receive(connector.start())
    proof_message = connector.receive(challenge)
    acceptor.receive(proof_message + b"early bytes")
    assert acceptor.state is State.AUTHENTICATED
    assert acceptor.leftover == b"early bytes"


@pytest.mark.parametrize("side", ["connector", "acceptor"])
def test_wrong_secret_fails_on_both_sides(side: str) -> None:
    secrets_ = {"connector": b"right", "acceptor": b"right", side: b"wrong"}
    connector = Connector(secrets_["connector"], TUNNEL)
    acceptor = Acceptor(secrets_["acceptor"], TUNNEL)
    run(connector, acceptor)
    assert connector.state is State.FAILED
    assert acceptor.state is State.FAILED
    # The connector checks the acceptor's proof first, so it is the one that finds the mismatch.
    assert connector.failure is Failure.BAD_PROOF
    assert acceptor.failure is Failure.REJECTED
    assert acceptor.peer_failure is Failure.BAD_PROOF


def test_wrong_tunnel_is_refused_before_any_proof() -> None:
    connector, acceptor = Connector(b"k", OTHER_TUNNEL), Acceptor(b"k", TUNNEL)
    reply = acceptor.receive(connector.start())
    assert acceptor.failure is Failure.WRONG_TUNNEL
    assert reply == encode(Message.REJECT, bytes([Failure.WRONG_TUNNEL]))
    connector.receive(reply)
    assert connector.failure is Failure.REJECTED
    assert connector.peer_failure is Failure.WRONG_TUNNEL


def test_replayed_proof_is_refused() -> None:
    """A PROOF recorded from one connection does not open another."""
    first_c, first_a = Connector(b"k", TUNNEL), Acceptor(b"k", TUNNEL)
    hello = first_c.start()
    recorded_proof = first_c.receive(first_a.receive(hello))
    second = Acceptor(b"k", TUNNEL)  # fresh acceptor nonce
    second.receive(hello)
    second.receive(recorded_proof)
    assert second.failure is Failure.BAD_PROOF


def test_reflected_acceptor_proof_is_refused() -> None:
    """An attacker cannot answer a challenge with the acceptor's own proof."""
    acceptor = Acceptor(b"k", TUNNEL)
    attacker_nonce = bytes(32)
    challenge = acceptor.receive(encode(Message.HELLO, uuid.UUID(TUNNEL).bytes + attacker_nonce))
    acceptor_proof = challenge[HEADER.size + 32:]
    acceptor.receive(encode(Message.PROOF, acceptor_proof))
    assert acceptor.failure is Failure.BAD_PROOF


@pytest.mark.parametrize(
    ("message", "failure"),
    [
        (b"HTTP/1.1 200 OK\r\n", Failure.BAD_MAGIC),
        (HEADER.pack(MAGIC, 2, Message.HELLO, 48) + bytes(48), Failure.BAD_VERSION),
        (HEADER.pack(MAGIC, 1, Message.PROOF, 32) + bytes(32), Failure.UNEXPECTED_MESSAGE),
        (HEADER.pack(MAGIC, 1, 99, 0), Failure.UNEXPECTED_MESSAGE),
        (HEADER.pack(MAGIC, 1, Message.HELLO, 47) + bytes(47), Failure.BAD_LENGTH),
        (HEADER.pack(MAGIC, 1, Message.HELLO, MAX_BODY + 1), Failure.OVERSIZED),
        (HEADER.pack(MAGIC, 1, Message.HELLO, 65535), Failure.OVERSIZED),
    ],
)
def test_malformed_first_messages(message: bytes, failure: Failure) -> None:
    acceptor = Acceptor(b"k", TUNNEL)
    reply = acceptor.receive(message)
    assert acceptor.state is State.FAILED
    assert acceptor.failure is failure
    assert reply == encode(Message.REJECT, bytes([failure]))


def test_oversized_header_is_refused_without_waiting_for_its_body() -> None:
    acceptor = Acceptor(b"k", TUNNEL)
    acceptor.receive(HEADER.pack(MAGIC, 1, Message.HELLO, 60000))
    assert acceptor.failure is Failure.OVERSIZED
    assert acceptor.bytes_needed == 0


def test_end_of_file_and_deadline() -> None:
    acceptor = Acceptor(b"k", TUNNEL, timeout=5.0, now=100.0)
    assert acceptor.receive(b"GS") == b""
    assert not acceptor.check_deadline(104.9)
    assert acceptor.check_deadline(105.0)
    assert acceptor.failure is Failure.TIMEOUT
    connector = Connector(b"k", TUNNEL)
    connector.start()
    assert connector.receive(b"") == b""
    assert connector.failure is Failure.PEER_CLOSED


def test_empty_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Connector(b"", TUNNEL)


# -- fuzzing: nothing crashes, nothing authenticates -----------------------------------


def feed(machine: Handshake, data: bytes, chunks: list[int]) -> None:
    position = 0
    for size in [*chunks, len(data)]:
        if machine.done or position >= len(data):
            break
        machine.receive(data[position:position + max(size, 1)])
        position += max(size, 1)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=400), chunks=st.lists(st.integers(1, 80), max_size=12))
def test_random_bytes_never_authenticate_an_acceptor(data: bytes, chunks: list[int]) -> None:
    acceptor = Acceptor(b"secret", TUNNEL)
    feed(acceptor, data, chunks)
    assert acceptor.state is not State.AUTHENTICATED


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=400), chunks=st.lists(st.integers(1, 80), max_size=12))
def test_random_bytes_never_authenticate_a_connector(data: bytes, chunks: list[int]) -> None:
    connector = Connector(b"secret", TUNNEL)
    connector.start()
    feed(connector, data, chunks)
    assert connector.state is not State.AUTHENTICATED


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=0, max_size=MAX_BODY), kind=st.integers(0, 255),
       length=st.integers(0, 65535))
def test_well_framed_garbage_never_authenticates(body: bytes, kind: int, length: int) -> None:
    """Messages with a valid header but forged content, after a genuine HELLO."""
    acceptor = Acceptor(b"secret", TUNNEL)
    acceptor.receive(Connector(b"secret", TUNNEL).start())
    acceptor.receive(HEADER.pack(MAGIC, 1, kind, length) + body)
    assert acceptor.state is not State.AUTHENTICATED


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 200))
def test_truncated_exchange_never_authenticates(cut: int) -> None:
    """Any prefix of a genuine HELLO followed by end of file fails the acceptor."""
    hello = Connector(b"k", TUNNEL).start()
    fresh = Acceptor(b"k", TUNNEL)
    fresh.receive(hello[:cut % len(hello)])
    fresh.receive(b"")
    assert fresh.state is State.FAILED
