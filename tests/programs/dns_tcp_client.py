"""A raw DNS-over-TCP client: ask SERVER (port 53) for each NAME's A record, all queries
in one write (pipelined), then end its side and read every reply until the server ends.

    dns_tcp_client.py SERVER NAME...

Prints one line per reply, in query order: "NAME rcode=N ADDRESS" ("-" for no address).
"""

import socket
import struct
import sys


def query(query_id: int, name: str) -> bytes:
    message = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)  # RD, one question
    for label in name.split("."):
        message += bytes([len(label)]) + label.encode()
    message += b"\0" + struct.pack("!HH", 1, 1)  # A, IN
    return struct.pack("!H", len(message)) + message


def main() -> None:
    server, names = sys.argv[1], sys.argv[2:]
    with socket.create_connection((server, 53), timeout=20) as conn:
        conn.sendall(b"".join(query(index, name) for index, name in enumerate(names)))
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    replies = {}
    while len(data) >= 2:
        (length,) = struct.unpack_from("!H", data)
        message, data = data[2 : 2 + length], data[2 + length :]
        query_id, flags, _, answers = struct.unpack_from("!HHHH", message)
        address = socket.inet_ntoa(message[-4:]) if answers else "-"
        replies[query_id] = f"rcode={flags & 0xF} {address}"
    for index, name in enumerate(names):
        print(name, replies.get(index, "no reply"))
    if data:
        print(f"{len(data)} bytes left over")


if __name__ == "__main__":
    main()
