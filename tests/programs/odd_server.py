"""Servers that treat their listening socket unusually, each serving one line.

    odd_server.py relisten PORT        close the socket before accepting, listen again
    odd_server.py hand-over PORT DONE  hand the socket to a child and leave
    odd_server.py slow-listen PORT     bind, and listen only after a line on stdin
    odd_server.py stop PORT            close the listening socket and go on running

relisten: binds 127.0.0.1:PORT, prints "listening", waits for a line on stdin, closes
the socket without accepting what waits on it, binds and listens again, prints "again",
accepts one connection and prints "got" and the line it read.

hand-over: binds 127.0.0.1:PORT, prints "listening", forks and exits; the child accepts
one connection, answers "echo:" + its line, and creates the file DONE.

slow-listen: binds 127.0.0.1:PORT, prints "bound", waits for a line on stdin, listens,
accepts one connection and answers "echo:" + its line.

stop: binds and listens on 127.0.0.1:PORT, prints "listening", waits for a line on
stdin, closes the socket, prints "closed", and exits after another line.
"""

import os
import socket
import sys

from echo_server import read_line  # this folder is first on sys.path


def listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    return server


mode, port = sys.argv[1], int(sys.argv[2])
if mode == "slow-listen":
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    print("bound", flush=True)
    sys.stdin.readline()
    server.listen(8)
    conn, _ = server.accept()
    conn.settimeout(10)
    with conn:
        conn.sendall(b"echo:" + read_line(conn))
    sys.exit(0)
server = listen(port)
print("listening", flush=True)
if mode == "stop":
    sys.stdin.readline()
    server.close()
    print("closed", flush=True)
    sys.stdin.readline()
elif mode == "relisten":
    sys.stdin.readline()
    server.close()
    server = listen(port)
    print("again", flush=True)
    conn, _ = server.accept()
    conn.settimeout(10)
    with conn:
        print("got", read_line(conn).decode().strip(), flush=True)
else:
    if os.fork() != 0:
        os._exit(0)
    conn, _ = server.accept()
    conn.settimeout(10)
    with conn:
        conn.sendall(b"echo:" + read_line(conn))
    open(sys.argv[3], "w").close()
