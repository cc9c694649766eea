"""Ports for servers that another process binds and no one retries: the test suite's and the
benchmarks' (``PLANT_PORT`` for a ``plant dev`` they start, a Redis they restart on its port).

:func:`cli.services.free_port` (bind to 0, close) is free when picked, not when bound: the
kernel hands that same number to the next bind to 0 or outgoing connection of any process, and
``plant dev``'s own servers, the other xdist workers' servers and their thousands of client
connections all draw from that one range (``/proc/sys/net/ipv4/ip_local_port_range``). A port
from :func:`claim_port` is outside that range, so the kernel never hands it out on its own, and
claimed: a lock on its byte of one file, held until the claiming process exits, so no other
claimer on this machine (another xdist worker, another pytest session) gets it meanwhile, nor
this process twice. It is also checked free, for servers that are no claimer's.
:func:`cli.services.start_on_a_free_port` needs none of this: it picks, binds and tries again
itself, as the dev runner does for the servers whose ports it chose.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import stat
import tempfile
import threading
from pathlib import Path

# Below it are the ports services are known by (PostgreSQL's 5432, Redis's 6379, plant dev's 8000).
CLAIMS_FROM = 20000
# Where /proc does not say: Linux's default range and IANA's (macOS, the BSDs), together.
DEFAULT_EPHEMERAL = (32768, 65535)
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_lock = threading.Lock()
_claims_fd: int | None = None
_claimed: set[int] = set()
_pool: list[int] = []  # claimable_ports(), read on the first claim
_next = 0  # where in _pool the next claim looks first


class NoPortLeft(RuntimeError):
    """Every port this process may claim is claimed or in use."""


def ephemeral_range() -> tuple[int, int]:
    """The first and last port the kernel hands out itself (to a bind to 0, to an outgoing connection)."""
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL


def claimable_ports() -> list[int]:
    """The ports :func:`claim_port` draws from: from :data:`CLAIMS_FROM` up, less the kernel's
    range. A machine whose kernel takes them all leaves only the claims to keep pickers apart."""
    low, high = ephemeral_range()
    outside = [port for port in range(CLAIMS_FROM, 65536) if not low <= port <= high]
    return outside or list(range(CLAIMS_FROM, 65536))


def claim_port(host: str = "127.0.0.1") -> int:
    """A port free now that no other claimer gets and the kernel does not hand out itself,
    for as long as this process lives (see the module's docstring)."""
    global _next
    with _lock:
        if not _pool:  # each process starts elsewhere: fewer ports tried that another claimed
            _pool.extend(claimable_ports())
            _next = secrets.randbelow(len(_pool))
        for _ in range(len(_pool)):
            port, _next = _pool[_next], (_next + 1) % len(_pool)
            if port not in _claimed and _claim(port) and _free(host, port):
                return port
    raise NoPortLeft(f"no port left to claim in {_pool[0]}-{_pool[-1]} outside the kernel's {ephemeral_range()}")


def _claim(port: int) -> bool:
    """Lock ``port``'s byte of the claims file; held until this process exits (a lock is its
    process's: another never gets it while this one lives, and the kernel drops it after)."""
    global _claims_fd
    if _claims_fd is None:  # opened once and never closed: closing any descriptor of it drops every lock
        _claims_fd = _own_claims_file(Path(tempfile.gettempdir()) / f"plant-port-claims-{os.getuid()}")
    try:
        fcntl.lockf(_claims_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:  # another process holds it
        return False
    _claimed.add(port)  # this process's own locks never conflict with each other: remembered here
    return True


def _own_claims_file(path: Path) -> int:
    """The claims file, opened for locking: a regular file of this user's, never followed as a
    link. In a directory anyone may write to (``/tmp``), another user could make the file first
    and lock every byte of it (no port left), or link it elsewhere."""
    refused = NoPortLeft(f"{path} is not a regular file of this user's (uid {os.getuid()}): remove it, or set TMPDIR")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:  # a link (ELOOP), a directory, a file not ours to write
        raise refused from exc
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_uid != os.getuid():
        os.close(fd)
        raise refused
    return fd


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
