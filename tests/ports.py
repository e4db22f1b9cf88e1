"""Loopback ports for servers a test must name before they start (a relay's configuration file).

Asking the kernel for a free port (bind to 0, close) and handing the number to a server that
binds it a second later races: meanwhile the kernel may give the same port to another xdist
worker doing the same, or to any outgoing connection, whose local port comes from the same
ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default).  These
ports come from below that range, from a block of its own for each xdist worker, starting at
a random place in it (another test run on the same machine starts elsewhere), each checked
free by binding it.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator

FIRST = 20000  # up to 32000: below Linux's ephemeral range
BLOCK = 1000
BLOCKS = 12


def _worker() -> int:
    """This xdist worker's number (gw3: 3), 0 without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name[2:].isdigit() else 0


def _candidates() -> Iterator[int]:
    base = FIRST + BLOCK * (_worker() % BLOCKS)
    start = random.randrange(BLOCK)
    for i in itertools.count():
        yield base + (start + i) % BLOCK


_ports = _candidates()


def free_port() -> int:
    """A loopback port nobody listens on now, and that this worker has not handed out yet."""
    for _ in range(BLOCK):
        port = next(_ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in this worker's block of {BLOCK} from {FIRST}")
