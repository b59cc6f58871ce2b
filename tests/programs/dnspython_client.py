"""A client that resolves with dnspython, asking NAMESERVER itself (no resolv.conf):
sendto to its own copy of the nameserver's address, recvfrom, and a reply taken only
from that address. Then HOST PORT as echo_client.py does.

    dnspython_client.py NAMESERVER HOST PORT
"""

import socket
import sys

import dns.resolver

resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = [sys.argv[1]]
resolver.lifetime = 10
address = resolver.resolve(sys.argv[2], "A")[0].address
with socket.create_connection((address, int(sys.argv[3])), timeout=20) as conn:
    conn.sendall(b"hello dnspython\n")
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := conn.recv(4096):
        reply += chunk
sys.stdout.write(reply.decode())
