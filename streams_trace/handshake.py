"""The LAN authentication handshake, without I/O: bytes in, decisions out.

Globus does not publish the challenge format of its LAN legs, so this module
defines the project's own (specified in docs/protocol.md). Every side uses it:
the in-process client API, the supervisor, the relay and the gateway. The side
that opened the TCP connection is the *connector*, the other the *acceptor*:

    connector -> HELLO      tunnel id, connector nonce
    acceptor  -> CHALLENGE  acceptor nonce, acceptor proof
    connector -> PROOF      connector proof           (or REJECT)
    acceptor  -> ACCEPT                               (or REJECT)

A proof is HMAC-SHA256(secret, label | role | tunnel id | both nonces): fresh
nonces from both ends defeat replay, the role defeats reflection, and proofs are
compared in constant time. Messages have fixed sizes under a small bound, so a
driver reads exactly ``bytes_needed`` and never consumes application data.

Drivers feed received bytes to ``receive`` (``b""`` for end of file), send what
it returns, and stop when ``state`` is no longer ``IN_PROGRESS``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
import time
import uuid

MAGIC = b"GSLH"
VERSION = 1
HEADER = struct.Struct("!4sBBH")  # magic, version, message type, body length
NONCE_SIZE = 32
PROOF_SIZE = 32
MAX_BODY = 64  # the largest message body; anything longer is refused unread
DEFAULT_TIMEOUT = 10.0
PROOF_LABEL = b"streams-trace LAN handshake v1\x00"


class Message(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    PROOF = 3
    ACCEPT = 4
    REJECT = 5


BODY_SIZE = {
    Message.HELLO: 16 + NONCE_SIZE,
    Message.CHALLENGE: NONCE_SIZE + PROOF_SIZE,
    Message.PROOF: PROOF_SIZE,
    Message.ACCEPT: 0,
    Message.REJECT: 1,
}


class Role(enum.Enum):
    CONNECTOR = b"connector"
    ACCEPTOR = b"acceptor"


class State(enum.Enum):
    IN_PROGRESS = "in progress"
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


class Failure(enum.IntEnum):
    """Why a handshake failed; the value travels in REJECT messages."""

    BAD_MAGIC = 1
    BAD_VERSION = 2
    UNEXPECTED_MESSAGE = 3
    BAD_LENGTH = 4
    OVERSIZED = 5
    WRONG_TUNNEL = 6
    BAD_PROOF = 7
    REJECTED = 8
    PEER_CLOSED = 9
    TIMEOUT = 10

    @property
    def text(self) -> str:
        return _FAILURE_TEXT[self]

    @classmethod
    def from_wire(cls, code: int) -> Failure | None:
        """The reason a REJECT carries, or None for a code this version does not know."""
        try:
            return cls(code)
        except ValueError:
            return None


_FAILURE_TEXT = {
    Failure.BAD_MAGIC: "peer does not speak the LAN handshake",
    Failure.BAD_VERSION: "peer speaks another version of the LAN handshake",
    Failure.UNEXPECTED_MESSAGE: "peer sent a message out of order",
    Failure.BAD_LENGTH: "peer sent a message of the wrong length",
    Failure.OVERSIZED: "peer sent an oversized message",
    Failure.WRONG_TUNNEL: "peer asked for another tunnel",
    Failure.BAD_PROOF: "peer's proof does not match the LAN secret",
    Failure.REJECTED: "peer refused the handshake",
    Failure.PEER_CLOSED: "peer closed the connection during the handshake",
    Failure.TIMEOUT: "handshake timed out",
}


def describe_failure(failure: Failure, peer_failure: Failure | None = None) -> str:
    """Why a handshake failed, in words (with the peer's reason for a REJECT it sent)."""
    if failure is Failure.REJECTED and peer_failure is not None:
        return f"{failure.text} (its reason: {peer_failure.name.lower()})"
    return failure.text


def encode(kind: Message, body: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def proof(
    secret: bytes, role: Role, tunnel_id: bytes, connector_nonce: bytes, acceptor_nonce: bytes
) -> bytes:
    """The HMAC that proves knowledge of the secret, bound to role, tunnel and nonces."""
    message = PROOF_LABEL + role.value + b"\x00" + tunnel_id + connector_nonce + acceptor_nonce
    return hmac.new(secret, message, hashlib.sha256).digest()


def tunnel_id_bytes(tunnel_id: str) -> bytes:
    return uuid.UUID(tunnel_id).bytes


class Handshake:
    """State shared by both roles: framing, failures, the deadline."""

    role: Role
    first_expected: tuple[Message, ...]  # what the peer may send first

    def __init__(
        self,
        secret: bytes,
        tunnel_id: str,
        *,
        nonce: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        now: float | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the LAN handshake needs a non-empty secret")
        self._secret = secret
        self.tunnel_id = tunnel_id_bytes(tunnel_id)
        self.nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_SIZE)
        if len(self.nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce has {NONCE_SIZE} bytes")
        self.deadline = (time.monotonic() if now is None else now) + timeout
        self.state = State.IN_PROGRESS
        self.failure: Failure | None = None
        self.peer_failure: Failure | None = None  # the reason a peer's REJECT gave
        self.leftover = b""  # bytes after the handshake: application data
        self._buffer = b""
        self._reject = b""
        self._expected = self.first_expected

    # -- driver interface ------------------------------------------------------------

    @property
    def bytes_needed(self) -> int:
        """How many bytes complete the next message; a driver reads at most this many."""
        if self.state is not State.IN_PROGRESS:
            return 0
        if len(self._buffer) < HEADER.size:
            return HEADER.size - len(self._buffer)
        _, _, _, length = HEADER.unpack_from(self._buffer)
        return HEADER.size + length - len(self._buffer)

    def receive(self, data: bytes) -> bytes:
        """Take received bytes (``b""`` means end of file); return bytes to send."""
        if self.state is not State.IN_PROGRESS:
            if self.state is State.AUTHENTICATED:
                self.leftover += data
            return b""
        if not data:
            self._fail(Failure.PEER_CLOSED, tell_peer=False)
            return b""
        self._buffer += data
        out = b""
        while self.state is State.IN_PROGRESS:
            message = self._next_message()
            if message is None:
                break
            kind, body = message
            out += self._handle(kind, body)
        if self.state is State.AUTHENTICATED:
            self.leftover, self._buffer = self._buffer, b""
        elif self.state is State.FAILED:
            out, self._reject = self._reject, b""
        return out

    def start(self) -> bytes:
        """The bytes to send as soon as the connection is up (only a connector has any)."""
        return b""

    def check_deadline(self, now: float | None = None) -> bool:
        """Fail with TIMEOUT once the deadline has passed; True if it has."""
        now = time.monotonic() if now is None else now
        if self.state is State.IN_PROGRESS and now >= self.deadline:
            self._fail(Failure.TIMEOUT, tell_peer=False)
            return True
        return False

    @property
    def done(self) -> bool:
        return self.state is not State.IN_PROGRESS

    @property
    def failure_text(self) -> str:
        return "" if self.failure is None else describe_failure(self.failure, self.peer_failure)

    # -- framing ---------------------------------------------------------------------

    def _next_message(self) -> tuple[Message, bytes] | None:
        if len(self._buffer) < HEADER.size:
            return None
        magic, version, kind, length = HEADER.unpack_from(self._buffer)
        if magic != MAGIC:
            self._fail(Failure.BAD_MAGIC)
            return None
        if version != VERSION:
            self._fail(Failure.BAD_VERSION)
            return None
        if length > MAX_BODY:
            self._fail(Failure.OVERSIZED)
            return None
        if kind not in BODY_SIZE or kind not in self._expected:
            self._fail(Failure.UNEXPECTED_MESSAGE)
            return None
        message = Message(kind)
        if length != BODY_SIZE[message]:
            self._fail(Failure.BAD_LENGTH)
            return None
        if len(self._buffer) < HEADER.size + length:
            return None
        body = self._buffer[HEADER.size : HEADER.size + length]
        self._buffer = self._buffer[HEADER.size + length :]
        return message, body

    def _fail(self, failure: Failure, tell_peer: bool = True) -> bytes:
        """Record the failure; ``receive`` then returns the REJECT that tells the peer."""
        self.state = State.FAILED
        self.failure = failure
        self._buffer = b""
        self._reject = encode(Message.REJECT, bytes([failure])) if tell_peer else b""
        return b""

    def _on_reject(self, body: bytes) -> bytes:
        self.peer_failure = Failure.from_wire(body[0])
        return self._fail(Failure.REJECTED, tell_peer=False)

    def _handle(self, kind: Message, body: bytes) -> bytes:
        raise NotImplementedError


class Connector(Handshake):
    """The side that opened the connection: sends HELLO first."""

    role = Role.CONNECTOR
    first_expected = (Message.CHALLENGE, Message.REJECT)

    def start(self) -> bytes:
        """HELLO: the first message, sent as soon as the connection is up."""
        return encode(Message.HELLO, self.tunnel_id + self.nonce)

    def _handle(self, kind: Message, body: bytes) -> bytes:
        if kind is Message.REJECT:
            return self._on_reject(body)
        if kind is Message.CHALLENGE:
            acceptor_nonce, acceptor_proof = body[:NONCE_SIZE], body[NONCE_SIZE:]
            expected = proof(
                self._secret, Role.ACCEPTOR, self.tunnel_id, self.nonce, acceptor_nonce
            )
            if not hmac.compare_digest(expected, acceptor_proof):
                return self._fail(Failure.BAD_PROOF)
            self._expected = (Message.ACCEPT, Message.REJECT)
            return encode(
                Message.PROOF,
                proof(self._secret, Role.CONNECTOR, self.tunnel_id, self.nonce, acceptor_nonce),
            )
        # ACCEPT
        self.state = State.AUTHENTICATED
        return b""


class Acceptor(Handshake):
    """The side that accepted the connection: answers HELLO with a CHALLENGE."""

    role = Role.ACCEPTOR
    first_expected = (Message.HELLO,)
    _connector_nonce = b""  # set by HELLO

    def _handle(self, kind: Message, body: bytes) -> bytes:
        if kind is Message.REJECT:
            return self._on_reject(body)
        if kind is Message.HELLO:
            tunnel, self._connector_nonce = body[:16], body[16:]
            if not hmac.compare_digest(tunnel, self.tunnel_id):
                return self._fail(Failure.WRONG_TUNNEL)
            self._expected = (Message.PROOF, Message.REJECT)
            own_proof = proof(
                self._secret, Role.ACCEPTOR, self.tunnel_id, self._connector_nonce, self.nonce
            )
            return encode(Message.CHALLENGE, self.nonce + own_proof)
        # PROOF
        expected = proof(
            self._secret, Role.CONNECTOR, self.tunnel_id, self._connector_nonce, self.nonce
        )
        if not hmac.compare_digest(expected, body):
            return self._fail(Failure.BAD_PROOF)
        self.state = State.AUTHENTICATED
        self._expected = ()
        return encode(Message.ACCEPT)
