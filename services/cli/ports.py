"""Whether the ports a process is about to listen on are free, checked before it starts: a service
whose port is taken exits at start, and `forge up` would restart it for ever instead of saying why.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind `port` on `host` now. As the services and Redis bind: a port
    with connections in TIME_WAIT is free, a listening one is not."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def taken(host: str, ports: Iterable[tuple[str, int]]) -> list[str]:
    """The (what, port) pairs whose port is not free, as "what host:port"."""
    return [f"{what} {host}:{port}" for what, port in ports if not port_free(host, port)]
