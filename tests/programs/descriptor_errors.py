"""Misused sockets under streams-run get the kernel's own errors, and nothing hangs.

    descriptor_errors.py client HOST PORT   connect twice, then on a closed descriptor,
                                            then a file to a nameserver's port, then
                                            with a bad address argument
    descriptor_errors.py retry HOST PORT    connect, and again on the same socket
    descriptor_errors.py listener PORT      accept on a closed listening descriptor,
                                            bind with a bad address argument

Prints one "CALL: ERRNO-NAME" line per misuse (then "echo ok" for the client's
connection, which must still carry its bytes untouched).
"""

import ctypes
import errno
import os
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)


def outcome(result: int) -> str:
    return "0" if result == 0 else errno.errorcode[ctypes.get_errno()]


def closed_descriptor() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


if sys.argv[1] == "client":
    host, port = sys.argv[2], int(sys.argv[3])
    address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    with socket.socket() as conn:
        conn.settimeout(20)
        conn.connect(address)
        print("connect again:", errno.errorcode.get(conn.connect_ex(address), "0"))
        conn.sendall(b"hello\n")
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
        print("echo ok" if reply == b"echo:hello\n" else f"echo wrong: {reply!r}")
    raw = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port), socket.inet_aton(address[0]))
    print("connect closed fd:", outcome(libc.connect(closed_descriptor(), raw, len(raw))))
    dns = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(53), socket.inet_aton("127.0.0.1"))
    not_a_socket = os.open(os.devnull, os.O_RDONLY)
    print("connect a file to port 53:", outcome(libc.connect(not_a_socket, dns, len(dns))))
    with socket.socket() as unmapped:  # an address argument that points at nothing
        print("connect bad address:", outcome(libc.connect(unmapped.fileno(),
                                                           ctypes.c_void_p(8), 16)))
elif sys.argv[1] == "retry":
    address = socket.getaddrinfo(sys.argv[2], int(sys.argv[3]), socket.AF_INET,
                                 socket.SOCK_STREAM)[0][4]
    with socket.socket() as conn:
        first = conn.connect_ex(address)
        second = conn.connect_ex(address)
    print("connect, again:", errno.errorcode.get(first, "0"), errno.errorcode.get(second, "0"))
else:
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", int(sys.argv[2])))
    listening.listen()
    fd = listening.detach()
    os.close(fd)
    print("accept closed fd:", outcome(libc.accept(fd, None, None)))
    with socket.socket() as unmapped:
        print("bind bad address:", outcome(libc.bind(unmapped.fileno(), ctypes.c_void_p(8), 16)))
