"""A client under a storm of signals: SIGALRM every 200 us while it makes N connections.

Each connect may be held while the supervisor connects and authenticates; a signal
must not take the program out of it early (it would then write in the middle of the
handshake). Prints "ok N" and how many signals arrived.
"""

import signal
import socket
import sys

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
signals = 0


def on_alarm(number: int, frame: object) -> None:
    global signals
    signals += 1


signal.signal(signal.SIGALRM, on_alarm)
address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
for number in range(count):
    with socket.create_connection(address, timeout=20) as conn:
        line = b"n%d\n" % number
        conn.sendall(line)
        with conn.makefile("rb") as replies:
            reply = replies.readline()
        if reply != b"echo:" + line:
            sys.exit(f"connection {number}: {reply!r}")
signal.setitimer(signal.ITIMER_REAL, 0)
print(f"ok {count} signals {'yes' if signals else 'no'}")
