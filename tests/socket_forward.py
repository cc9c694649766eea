"""Forward every connection a listening socket accepts to a fresh upstream connection, both
ways, on daemon threads: the vanished-host test's bridges (a Unix socket to the database's TCP
port, and inside the network namespace a TCP port back to that Unix socket), and the frozen-Redis
tests' :class:`Forwarder`, whose connections can be frozen: nothing more passes either way and
nothing is closed, as when a network drops a connection's packets or a NAT forgets it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


def forward_connections(listener: socket.socket, connect_upstream: Callable[[], socket.socket]) -> None:
    """Accept on ``listener`` until it is closed, piping each connection to ``connect_upstream()``."""
    Forwarder(listener, connect_upstream)


class Forwarder:
    """Pipes each connection ``listener`` accepts to ``connect_upstream()`` until the listener
    is closed. :meth:`freeze` stops every connection open now for good (what arrives is held,
    never delivered, and neither end is closed); connections accepted afterwards pass as usual,
    as a client reconnecting through a network that dropped its old connections would find."""

    def __init__(self, listener: socket.socket, connect_upstream: Callable[[], socket.socket]) -> None:
        self._listener = listener
        self._connect_upstream = connect_upstream
        self._lock = threading.Lock()
        self._open: list[tuple[threading.Event, socket.socket, socket.socket]] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @classmethod
    def to_tcp(cls, host: str, port: int) -> Forwarder:
        """A forwarder listening on a free loopback port (:attr:`port`) to ``host:port``."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        return cls(listener, lambda: socket.create_connection((host, port)))

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def freeze(self) -> int:
        """Freeze every connection open now; returns how many."""
        with self._lock:
            for passing, _, _ in self._open:
                passing.clear()
            frozen, self._open = len(self._open), []
        return frozen

    def close(self) -> None:
        """Stop accepting, and close both ends of every connection, frozen or not."""
        self._listener.close()
        with self._lock:
            for passing, client, upstream in self._open:
                passing.set()
                for end in (client, upstream):
                    with contextlib.suppress(OSError):
                        end.close()
            self._open = []

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = self._connect_upstream()
            passing = threading.Event()
            passing.set()
            with self._lock:
                self._open.append((passing, client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b, passing), daemon=True).start()


def _pump(a: socket.socket, b: socket.socket, passing: threading.Event) -> None:
    try:
        while data := a.recv(65536):
            passing.wait()  # frozen: held for good (close() lets it go, to a closed socket)
            b.sendall(data)
        if passing.is_set():  # an end closed while passing: the other end learns, as over a network
            b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
