"""A dynamic test client: connect to HOST PORT (getaddrinfo), send a line, print the reply."""

import socket
import sys


def exchange(host: str, port: int, line: bytes) -> str:
    """Send ``line`` to HOST PORT, end the sending side, and return all that comes back."""
    with socket.create_connection((host, port), timeout=20) as conn:
        conn.sendall(line)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    return reply.decode()


if __name__ == "__main__":
    sys.stdout.write(exchange(sys.argv[1], int(sys.argv[2]), b"hello python\n"))
