"""A server that gives up its listening socket before accepting, then listens again.

    relisten_server.py PORT

Binds 127.0.0.1:PORT, prints "listening", waits for a line on stdin, closes the socket
without accepting what waits on it, binds and listens again, prints "again", then
accepts one connection and prints the line it read.
"""

import socket
import sys


def listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    return server


port = int(sys.argv[1])
first = listen(port)
print("listening", flush=True)
sys.stdin.readline()
first.close()
second = listen(port)
print("again", flush=True)
conn, _ = second.accept()
with conn:
    conn.settimeout(10)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
print("got", data.decode().strip(), flush=True)
