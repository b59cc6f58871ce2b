"""A dynamic test client: connect to HOST PORT (getaddrinfo), send a line, print the reply."""

import socket
import sys

with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as conn:
    conn.sendall(b"hello python\n")
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := conn.recv(4096):
        reply += chunk
sys.stdout.write(reply.decode())
