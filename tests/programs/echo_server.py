"""A dynamic test server: accept COUNT connections on 127.0.0.1:PORT, answer "echo:" + line.

Prints "listening" once bound (stdout is line-buffered for the tests) and each peer's line
as it is served. Handles connections in threads so many clients can overlap.
"""

import socket
import sys
import threading


def read_line(conn: socket.socket) -> bytes:
    """One line from ``conn`` (what came, if it ended first). Shared by the test servers."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def serve(conn: socket.socket) -> None:
    with conn:
        conn.sendall(b"echo:" + read_line(conn))


def main() -> None:
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, int(sys.argv[1])))
    server.listen(256)
    print("listening", flush=True)
    count = int(sys.argv[2])
    threads = []
    for _ in range(count):
        conn, _ = server.accept()
        thread = threading.Thread(target=serve, args=(conn,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    print(f"served {count}", flush=True)


if __name__ == "__main__":
    main()
