"""The embedded PostgreSQL (with pgvector) of ``plant dev`` and the test suite, a child server
of :mod:`cli.services`: its data dir (made by initdb, handed to a system user when we are
root, its stale lock file removed), password or trust authentication (switching a data dir
an earlier release made with trust over to passwords), and the postmaster a data dir's lock
file names.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast
from urllib.parse import quote

import psutil
import psycopg
from psycopg import errors, sql

from cli.services import ServiceError, ChildServer, postgres_bin_dir
from models.keys import replace_file

# PostgreSQL refuses to run as root; when we are root it runs as this system user.
POSTGRES_SERVICE_USER = "plant-pg"
# Where creations of the service user take turns (ensure_system_user): only root creates it,
# so the lock is in a directory only root may write to (in /tmp another user could create it
# first and hold it), at one path whatever TMPDIR says.
SERVICE_USER_LOCK = Path("/var/lib/plant-service-user.lock")


class EmbeddedPostgres(ChildServer):
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
        """As :meth:`ChildServer.start`; then, with ``passwords``, a data dir still trusting
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


def _hand_over_to_service_user(data_dir: Path) -> dict[str, object]:
    """Give the data dir to the service user; return the Popen arguments that run as it."""
    account = ensure_system_user(POSTGRES_SERVICE_USER)
    for dirpath, dirnames, filenames in os.walk(data_dir):
        for path in (dirpath, *(os.path.join(dirpath, name) for name in dirnames + filenames)):
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    _make_traversable(data_dir.parent)
    _make_traversable(postgres_bin_dir())
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The system user ``name``, created if it is missing. Creations take turns (an exclusive
    lock on :data:`SERVICE_USER_LOCK`): ``useradd`` checks the name before it locks the account
    files, so two at once both succeed, each reading back the uid it wrote, and only the last
    write stays. On a fresh machine the suite's first embedded servers start side by side, and
    a server handed to a uid that no longer exists failed every start after it ("initdb: could
    not look up effective user ID")."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    lock = os.open(SERVICE_USER_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:  # created by the start we waited for
            return pwd.getpwnam(name)
        except KeyError:
            pass
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True,
        )
        try:  # another program may have created it first, so look again rather than trust rc
            return pwd.getpwnam(name)
        except KeyError:
            raise ServiceError(f"could not create user {name}: {result.stderr}") from None
    finally:
        os.close(lock)  # and with it the lock


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
