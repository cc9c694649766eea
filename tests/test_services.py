"""Tests of the embedded PostgreSQL and Redis servers in ``cli.services`` and ``cli.postgres_server``.

They start real servers in temp dirs (PostgreSQL's in ``server_tmp``, see tests/conftest.py)
and check what the dev runner and the test suite rely on: pgvector is available, data
survives a restart (and a crash), and ``stop`` leaves no process behind.
"""

from __future__ import annotations

import multiprocessing
import os
import pwd
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from cli.postgres_server import EmbeddedPostgres, _remove_stale_pid_file, ensure_system_user
from cli.ports import claim_port
from cli.services import EmbeddedRedis, PortTaken, ServiceError, free_port
from models.settings import libpq_url
from tests.conftest import wait_for


def _connect(server: EmbeddedPostgres, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(
        host=server.host, port=server.port, user="postgres", dbname=dbname, autocommit=True
    )


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_postgres_serves_pgvector(server_tmp: Path) -> None:
    with EmbeddedPostgres(server_tmp / "pg", claim_port()) as server, _connect(server) as conn:
        conn.execute("CREATE EXTENSION vector")
        (distance,) = conn.execute("SELECT '[1,2,3]'::vector <=> '[1,2,4]'::vector").fetchone()

    assert isinstance(distance, float)
    assert distance == pytest.approx(1 - 17 / (14**0.5 * 21**0.5))


def test_postgres_url_names_the_server() -> None:
    server = EmbeddedPostgres(Path("/nowhere"), 15432)

    assert server.url == "postgresql+psycopg://postgres@127.0.0.1:15432/postgres"
    assert server.url_for("plant") == "postgresql+psycopg://postgres@127.0.0.1:15432/plant"


def _refused_without_password(server: EmbeddedPostgres) -> bool:
    try:
        _connect(server).close()
    except psycopg.OperationalError as refused:
        return "password" in str(refused)
    return False


def test_postgres_with_passwords_lets_no_one_in_without_one(server_tmp: Path) -> None:
    """The dev runner's server: any local process could log in as its superuser with no
    password, and from there lift the guards or run programs (COPY ... TO PROGRAM) (helper-115)."""
    import stat

    with EmbeddedPostgres(server_tmp / "pg", claim_port(), passwords=True) as server:
        assert server.password_path is not None and stat.S_IMODE(server.password_path.stat().st_mode) == 0o600
        assert _refused_without_password(server)
        with psycopg.connect(libpq_url(server.url), autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        server.create_database("plant")
        password = server.password_path.read_text()
    assert not (server_tmp / "pg.initdb-password").exists()
    with EmbeddedPostgres(server_tmp / "pg", claim_port(), passwords=True) as restarted:
        assert restarted.password_path.read_text() == password and _refused_without_password(restarted)
        with psycopg.connect(libpq_url(restarted.url_for("plant")), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_start_cut_short_or_a_lost_password_file_is_said_plainly(server_tmp: Path) -> None:
    """An initdb killed mid-way left its password file behind, and every later start failed
    on it (FileExistsError); a password file removed from a data dir that needs it made a
    new password and an authentication error (helper-123)."""
    (server_tmp / "pg.initdb-password").write_text("left by a start killed during initdb\n")
    with EmbeddedPostgres(server_tmp / "pg", claim_port(), passwords=True) as server:
        assert _refused_without_password(server)
    assert server.password_path is not None
    server.password_path.unlink()
    with pytest.raises(ServiceError, match="pg.password is missing"):
        EmbeddedPostgres(server_tmp / "pg", claim_port(), passwords=True).start()


def test_a_data_dir_made_trusting_every_connection_needs_passwords_from_its_next_start_with_them(server_tmp: Path) -> None:
    """Data dirs made by earlier releases of the dev runner (initdb --auth=trust) keep their data
    and are switched over, not left open."""
    with EmbeddedPostgres(server_tmp / "pg", claim_port()) as trusting, _connect(trusting) as conn:
        conn.execute("CREATE TABLE kept (value text)")
        conn.execute("INSERT INTO kept VALUES ('survives')")
    hba = (server_tmp / "pg" / "pg_hba.conf").stat()
    with EmbeddedPostgres(server_tmp / "pg", claim_port(), passwords=True) as server:
        rewritten = (server.data_dir / "pg_hba.conf").stat()  # replaced whole, as its owner's, with its mode
        assert (rewritten.st_uid, rewritten.st_gid, rewritten.st_mode) == (hba.st_uid, hba.st_gid, hba.st_mode)
        wait_for(lambda: _refused_without_password(server), what="the reloaded pg_hba.conf to need a password")
        with psycopg.connect(libpq_url(server.url), autocommit=True) as conn:
            assert conn.execute("SELECT value FROM kept").fetchall() == [("survives",)]
        assert "trust" not in [line.split()[-1] for line in (server.data_dir / "pg_hba.conf").read_text().splitlines()
                               if line.strip() and not line.lstrip().startswith("#")]


def test_postgres_restart_keeps_databases_and_rows(server_tmp: Path) -> None:
    with EmbeddedPostgres(server_tmp / "pg", claim_port()) as server:
        server.create_database("plant")
        server.create_database("plant")  # idempotent
        with _connect(server, "plant") as conn:
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('survives')")

    restarted = EmbeddedPostgres(server_tmp / "pg", claim_port())
    with restarted, _connect(restarted, "plant") as conn:
        assert conn.execute("SELECT value FROM kept").fetchall() == [("survives",)]


def test_postgres_drop_database_is_idempotent_and_forces_sessions_out(server_tmp: Path) -> None:
    with EmbeddedPostgres(server_tmp / "pg", claim_port()) as server:
        server.create_database("scratch")
        with _connect(server, "scratch"):
            server.drop_database("scratch")
        server.drop_database("scratch")
        with _connect(server) as conn:
            names = conn.execute("SELECT datname FROM pg_database").fetchall()

    assert ("scratch",) not in names


def test_postgres_starts_after_a_crash(server_tmp: Path) -> None:
    server = EmbeddedPostgres(server_tmp / "pg", claim_port())
    server.start()
    with _connect(server) as conn:
        conn.execute("CREATE TABLE committed (n int)")
        conn.execute("INSERT INTO committed VALUES (1)")
    tree = _process_tree(server.pid)
    os.killpg(server.pid, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)
    server.stop()  # only reaps the dead child
    assert (server_tmp / "pg" / "postmaster.pid").exists()

    with EmbeddedPostgres(server_tmp / "pg", claim_port()) as restarted, _connect(restarted) as conn:
        assert conn.execute("SELECT n FROM committed").fetchall() == [(1,)]


def test_stale_pid_file_is_removed_only_when_no_postgres_owns_it(server_tmp: Path) -> None:
    pid_file = server_tmp / "postmaster.pid"
    # A live process that is not postgres: what a recycled pid looks like after a crash.
    with subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE) as other:
        pid_file.write_text(f"{other.pid}\n/some/data\n")
        _remove_stale_pid_file(pid_file)
        other.communicate(b"\n")
    assert not pid_file.exists()

    with EmbeddedPostgres(server_tmp / "pg", claim_port()) as server:
        live_pid_file = server.data_dir / "postmaster.pid"
        _remove_stale_pid_file(live_pid_file)
        assert live_pid_file.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does PostgreSQL run as a user of its own")
def test_a_test_s_postgres_starts_while_another_pytest_session_resets_pytest_s_temp_root(
    server_tmp: Path, tmp_path: Path, monkeypatch
) -> None:
    """A pytest session starting beside this one (the other xdist worker's nested runs) sets
    pytest's temp root back to 0700. Here it happens between the server's preparing its
    ancestors and starting, the moment that failed a run with "Permission denied" on
    ``pg_control`` when tests put their servers under ``tmp_path``."""
    pytest_root = next((p for p in tmp_path.parents if p.name.startswith("pytest-of-")), tmp_path.parent)
    prepare = EmbeddedPostgres._prepare

    def prepared_then_reset(server: EmbeddedPostgres) -> None:
        prepare(server)
        pytest_root.chmod(mode & ~0o077)  # what pytest's getbasetemp does

    mode = pytest_root.stat().st_mode
    monkeypatch.setattr(EmbeddedPostgres, "_prepare", prepared_then_reset)
    try:
        with EmbeddedPostgres(server_tmp / "pg", claim_port()) as server, _connect(server) as conn:
            conn.execute("CREATE TABLE written (n int)")  # new files in the data dir
            assert conn.execute("SELECT count(*) FROM written").fetchone() == (0,)
    finally:
        pytest_root.chmod(mode)


def test_postgres_stop_leaves_no_process_and_is_idempotent(server_tmp: Path) -> None:
    server = EmbeddedPostgres(server_tmp / "pg", claim_port())
    server.start()
    tree = _process_tree(server.pid)
    assert len(tree) > 1  # postmaster plus its auxiliary processes

    server.stop()
    server.stop()

    assert server.pid is None
    assert not any(process.is_running() for process in tree)


def test_redis_restart_keeps_keys_from_the_append_only_file(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", claim_port()) as server:
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            client.set("plant:kept", "survives")

    with EmbeddedRedis(tmp_path / "redis", claim_port()) as server:
        with redis.Redis.from_url(server.url) as client:
            assert client.get("plant:kept") == b"survives"


def test_redis_with_passwords_takes_only_clients_that_give_it_and_never_shows_it(tmp_path: Path) -> None:
    """The dev runner's broker: any local process could publish tasks to its workers or empty
    its queues (helper-115)."""
    with EmbeddedRedis(tmp_path / "redis", claim_port(), passwords=True) as server:
        with redis.Redis(host=server.host, port=server.port) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
        password = server.password_path.read_text().strip()
        assert password in server.url and password not in " ".join(psutil.Process(server.pid).cmdline())
    with EmbeddedRedis(tmp_path / "redis", claim_port(), passwords=True) as restarted, \
            redis.Redis.from_url(restarted.url) as client:
        assert client.get("k") == b"v"


def test_redis_stop_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", claim_port())
    server.start()
    process = psutil.Process(server.pid)

    server.stop()
    server.stop()

    assert server.pid is None
    assert not process.is_running()


def test_redis_start_fails_when_its_port_is_taken(tmp_path: Path) -> None:
    port = claim_port()
    with EmbeddedRedis(tmp_path / "first", port):
        second = EmbeddedRedis(tmp_path / "second", port)
        # The first server answers on that port, but it must not pass for the second.
        with pytest.raises(PortTaken, match="redis exited"):
            second.start()
        assert second.pid is None


@pytest.mark.parametrize("server_class", [EmbeddedRedis, EmbeddedPostgres])
def test_the_suite_starts_its_server_on_another_port_when_its_first_is_taken(tmp_path: Path, server_class,
                                                                             monkeypatch) -> None:
    """The other xdist worker's servers draw their ports from the same range."""
    from cli import services
    from tests import conftest

    with EmbeddedRedis(tmp_path / "taker", claim_port()) as taker:
        picks = iter([taker.port])
        monkeypatch.setattr(services, "free_port", lambda: next(picks, None) or free_port())
        servers = conftest.embedded_server(server_class, "retry")
        try:
            url = next(servers)
            assert next(picks, None) is None  # the taken port was handed out first
            assert f":{taker.port}/" not in url + "/"
            if server_class is EmbeddedRedis:
                assert redis.Redis.from_url(url).ping()
            else:
                psycopg.connect(libpq_url(url)).close()
        finally:
            servers.close()


@pytest.mark.parametrize(("failure", "log", "starts"), [
    (ServiceError, "FATAL: data directory has wrong ownership", 1),
    (PortTaken, "could not bind IPv4 address: Address already in use", 3),
])
def test_only_a_taken_port_is_tried_again_and_only_three_times(failure: type[ServiceError], log: str,
                                                               starts: int) -> None:
    from cli.services import start_on_a_free_port

    ports: list[int] = []

    class Failing:
        def __init__(self, port: int) -> None:
            ports.append(port)

        def start(self) -> None:
            raise failure(f"postgres exited with code 1:\n{log}")

    with pytest.raises(ServiceError, match=log):
        start_on_a_free_port(Failing)
    assert len(ports) == starts


def test_a_failed_start_quotes_only_what_it_wrote_and_an_earlier_taken_port_is_not_retried(tmp_path: Path) -> None:
    from cli.services import start_on_a_free_port

    data = tmp_path / "redis"
    data.mkdir()
    (data / "appendonly.aof").write_text("not an append-only file\n")  # this start fails on it
    (tmp_path / "redis.log").write_text("an earlier start: bind: Address already in use\n")
    ports: list[int] = []

    def server_on(port: int) -> EmbeddedRedis:
        ports.append(port)
        return EmbeddedRedis(data, port)

    with pytest.raises(ServiceError, match="redis exited") as failed:
        start_on_a_free_port(server_on)
    assert len(ports) == 1 and "Address already in use" not in str(failed.value)


def test_interrupted_start_leaves_no_server(tmp_path: Path) -> None:
    class InterruptedRedis(EmbeddedRedis):
        def _answers(self) -> bool:
            self.started_pid = self.pid
            raise KeyboardInterrupt  # what Ctrl-C during the readiness wait looks like

    server = InterruptedRedis(tmp_path / "redis", claim_port())
    with pytest.raises(KeyboardInterrupt):
        server.start()

    assert server.pid is None
    assert not psutil.pid_exists(server.started_pid)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="only root creates the service user")
def test_service_users_created_side_by_side_are_one_user() -> None:
    """useradd checks the name before it locks the account files: eight creations at once all
    succeeded and read back two or three different uids, of which only one stayed, and a server
    handed to a lost uid failed ("initdb: could not look up effective user ID"; 644 errors in
    the suite's first run on a fresh machine). ensure_system_user takes turns."""
    name = f"plant-t{os.getpid()}"
    try:
        with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("fork")) as pool:
            accounts = list(pool.map(_ids_of_created_user, [name] * 8))
        assert set(accounts) == {(pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid)}
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


def _ids_of_created_user(name: str) -> tuple[int, int]:
    account = ensure_system_user(name)
    return account.pw_uid, account.pw_gid
