"""A client that resolves with dnspython, asking NAMESERVER itself (no resolv.conf):
sendto to its own copy of the nameserver's address, recvfrom, and a reply taken only
from that address. Then HOST PORT as echo_client.py does.

    dnspython_client.py NAMESERVER HOST PORT
"""

import sys

import dns.resolver
from echo_client import exchange  # beside this file: the script's directory is on sys.path

resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = [sys.argv[1]]
resolver.lifetime = 10
address = resolver.resolve(sys.argv[2], "A")[0].address
sys.stdout.write(exchange(address, int(sys.argv[3]), b"hello dnspython\n"))
