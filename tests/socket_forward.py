"""Forward every connection a listening socket accepts to a fresh upstream connection, both
ways, on daemon threads: the vanished-host test's bridges (a Unix socket to the database's TCP
port, and inside the network namespace a TCP port back to that Unix socket)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


def forward_connections(listener: socket.socket, connect_upstream: Callable[[], socket.socket]) -> None:
    """Accept on ``listener`` until it is closed, piping each connection to ``connect_upstream()``."""
    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = connect_upstream()
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
