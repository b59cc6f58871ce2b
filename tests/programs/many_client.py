"""Hold COUNT connections to HOST PORT open at once, each carrying its own random bytes.

    many_client.py HOST PORT COUNT SIZE

Resolves HOST once and makes one warm-up connection, prints "ready" and waits for a
line on stdin; then opens COUNT connections (all open at the same time), sends SIZE
random bytes on each and shuts its sending side, and checks that each answer starts
with the SHA-256 of what that connection sent (tests/peers.py's server answers so).
Prints "ok N" with the number of good answers, waits for another line, exits 0 only
when every answer was right.
"""

import hashlib
import os
import socket
import sys


def exchange(sock: socket.socket, payload: bytes) -> bool:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    return answer[:32] == hashlib.sha256(payload).digest()


host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
warm_up = socket.create_connection(address[:2], timeout=60)
warm_up.sendall(b"warm-up")
warm_up.shutdown(socket.SHUT_WR)
assert exchange(warm_up, b"warm-up")
print("ready", flush=True)
sys.stdin.readline()

sockets = [socket.create_connection(address[:2], timeout=60) for _ in range(count)]
payloads = [os.urandom(size) for _ in sockets]
for sock, payload in zip(sockets, payloads, strict=True):
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
good = sum(exchange(sock, payload) for sock, payload in zip(sockets, payloads, strict=True))
print("ok", good, flush=True)
sys.stdin.readline()
sys.exit(0 if good == count else 1)
