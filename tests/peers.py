"""Two small programs that use a tunnel through the client API, for tests and benchmarks.

    python tests/peers.py server TUNNEL DIR --connections N --reply-bytes M
    python tests/peers.py client TUNNEL DIR --connections C --send-bytes S

Each client connection sends S random bytes and shuts down its sending side; the
server reads to end of file, answers with the SHA-256 of what it read followed by M
random bytes, and closes. Both print one JSON line per connection (the server also
"READY" once it listens), so a test can match what was sent with what arrived.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import streams_trace
from streams_trace.errors import StreamsTraceError

CHUNK = 1 << 20


def send_random(sock: socket.socket, size: int) -> str:
    digest = hashlib.sha256()
    left = size
    while left:
        block = os.urandom(min(CHUNK, left))
        digest.update(block)
        sock.sendall(block)
        left -= len(block)
    return digest.hexdigest()


def read_to_end(sock: socket.socket, skip: int = 0) -> tuple[bytes, int, str]:
    """Read until EOF; return the first ``skip`` bytes, the count after them and its SHA-256."""
    head = b""
    digest, count = hashlib.sha256(), 0
    while True:
        data = sock.recv(CHUNK)
        if not data:
            return head, count, digest.hexdigest()
        if len(head) < skip:
            take = skip - len(head)
            head, data = head + data[:take], data[take:]
        digest.update(data)
        count += len(data)


def serve_one(conn: socket.socket, reply_bytes: int, lock: threading.Lock) -> None:
    with conn:
        _, received, received_sha = read_to_end(conn)
        conn.sendall(bytes.fromhex(received_sha))
        sent_sha = send_random(conn, reply_bytes)
    with lock:
        print(json.dumps({"received": received, "received_sha": received_sha,
                          "sent_sha": sent_sha}), flush=True)


def server(args: argparse.Namespace) -> int:
    lock = threading.Lock()
    with streams_trace.listen(args.tunnel, config_dir=args.config_dir) as listener:
        print("READY", flush=True)
        threads = []
        for _ in range(args.connections):
            conn, _ = listener.accept()
            thread = threading.Thread(target=serve_one, args=(conn, args.reply_bytes, lock))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
    return 0


def client_one(args: argparse.Namespace) -> dict[str, object]:
    with streams_trace.connect(args.tunnel, config_dir=args.config_dir) as sock:
        sent_sha = send_random(sock, args.send_bytes)
        sock.shutdown(socket.SHUT_WR)  # half close: the answer still comes back
        head, received, received_sha = read_to_end(sock, skip=32)
    return {"sent_sha": sent_sha, "echoed_sha": head.hex(), "received": received,
            "received_sha": received_sha, "ok": head.hex() == sent_sha}


def client(args: argparse.Namespace) -> int:
    with ThreadPoolExecutor(max_workers=args.connections) as pool:
        results = list(pool.map(lambda _: client_one(args), range(args.connections)))
    for result in results:
        print(json.dumps(result), flush=True)
    return 0 if all(result["ok"] for result in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("tunnel")
    parser.add_argument("config_dir")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--reply-bytes", type=int, default=0)
    parser.add_argument("--send-bytes", type=int, default=0)
    args = parser.parse_args()
    try:
        return server(args) if args.role == "server" else client(args)
    except StreamsTraceError as exc:
        print(f"peers: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
