"""A server that hands its listening socket to a child and leaves.

    handing_server.py PORT DONE_FILE

Binds 127.0.0.1:PORT and listens, prints "listening", forks, and exits; the child
accepts one connection, answers "echo:" + its line, and creates DONE_FILE.
"""

import os
import socket
import sys

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(8)
print("listening", flush=True)
if os.fork() != 0:
    os._exit(0)
conn, _ = server.accept()
with conn:
    conn.settimeout(10)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(100)
        if not chunk:
            break
        data += chunk
    conn.sendall(b"echo:" + data)
open(sys.argv[2], "w").close()
