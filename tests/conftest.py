"""Shared fixtures: real PostgreSQL+pgvector, real Redis, real Celery worker processes.

PostgreSQL and Redis are embedded servers started once per test session in a temp
directory, unless ``TEST_DATABASE_URL`` (a server's admin URL) or ``TEST_REDIS_URL``
points at existing ones. The schema is built by running the Alembic migrations.

Domain tests use ``db_session``: a session joined to an outer transaction that is
rolled back. API and end-to-end tests commit for real (a worker in another process
must see the rows), so they use ``clean_db``, which truncates the tables afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import hypothesis
import psycopg
import pytest
import redis
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from cli.postgres_server import EmbeddedPostgres
from cli.services import EmbeddedRedis, start_on_a_free_port
from models.constitution import APPEND_ONLY_TRIGGERS
from models.db import make_engine
from models.embeddings import HashingEmbedder
from models.keys import keyring_from_settings
from models.migrate import upgrade_head
from models.settings import Settings, child_environment, libpq_url, load_settings, sqlalchemy_url
from models.signing import KeyRing
from models.key_material import ensure_key_file

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE = "plant_test"
APPEND_ONLY_TABLES = tuple(APPEND_ONLY_TRIGGERS)  # every guard refuses TRUNCATE: lifted to clean up

# Property tests are pure CPU at a few milliseconds an example: Hypothesis' 200 ms deadline
# per example would only measure how busy the machine is (the other xdist worker shares it).
hypothesis.settings.register_profile("plant", deadline=None)
hypothesis.settings.load_profile("plant")


def _shared_servers() -> bool:
    return bool(os.environ.get("TEST_DATABASE_URL") or os.environ.get("TEST_REDIS_URL"))


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's: absent under -p no:xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (``make test``): no worker process (every test in this process) when
    ``TEST_DATABASE_URL`` or ``TEST_REDIS_URL`` names a shared server, which the workers'
    databases, roles, queues and locks would share; otherwise one more than the CPU cores, each
    worker starting its own embedded PostgreSQL and Redis. The end-to-end tests spend most of
    their time waiting on the processes they start (a worker's boot, a 20 s Redis outage), so one
    worker per core left about a third of two cores idle: 478 s for the suite against 394 s with
    three (README, "Tests"). ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still sets the count."""
    if _shared_servers():
        return 0
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return len(os.sched_getaffinity(0)) + 1  # the cores this process may run on (a CI container's cap), not the host's


def pytest_configure(config: pytest.Config) -> None:
    """Refuse worker processes on shared servers: each would drop and rebuild the others'
    database under them. (``-n auto`` picks none there.)"""
    if _shared_servers() and getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        raise pytest.UsageError("TEST_DATABASE_URL / TEST_REDIS_URL: the suite runs in one process on shared "
                                "servers; use -n 0 (or -n auto)")


def wait_for(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@contextmanager
def recorded_statements(bind: Engine | Connection) -> Iterator[list[tuple[bool, str]]]:
    """``(autocommit?, SQL)`` of every statement sent through ``bind`` inside the block."""
    seen: list[tuple[bool, str]] = []

    def record(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append((conn.connection.driver_connection.autocommit, statement))

    event.listen(bind, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(bind, "before_cursor_execute", record)


@contextmanager
def refused_port() -> Iterator[int]:
    """A local port whose connections are refused while the block runs: bound, never
    listening, so no other process (the other xdist worker's servers) can take it meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def private_dir(name: str) -> Path:
    """A temp dir of this session's own: pytest's shared basetemp is pruned by other
    concurrent pytest sessions, which must not pull a live server's data from under it."""
    return Path(tempfile.mkdtemp(prefix=f"plant-test-{name}-"))


@pytest.fixture
def server_tmp() -> Iterator[Path]:
    """A temp dir for a test's own PostgreSQL data: private, not under pytest's basetemp.

    As root, PostgreSQL runs as a service user, which must be able to pass through every
    ancestor of its data dir (``cli.postgres_server`` adds ``o+x`` on them). Every pytest session
    that starts (the other xdist worker's nested runs, say) sets pytest's shared temp root
    back to 0700, and a server starting then fails with "Permission denied" on its own
    files."""
    path = private_dir("server")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def embedded_server(server_class: type[EmbeddedPostgres] | type[EmbeddedRedis], name: str) -> Iterator[str]:
    """Run an embedded server in a private temp dir for the session; yield its URL.

    The other xdist worker's servers draw their ports from the same range: a start that
    finds its port taken goes again on another (:func:`cli.services.start_on_a_free_port`)."""
    root = private_dir(name)
    try:
        server = start_on_a_free_port(lambda port: server_class(root / "data", port))
        try:
            yield server.url
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, with pgvector available."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield sqlalchemy_url(os.environ["TEST_DATABASE_URL"])
        return
    yield from embedded_server(EmbeddedPostgres, "pg")


def _admin_exec(admin_url: str, *statements: str) -> None:
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def url_with_database(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def make_database(pg_admin_url: str) -> Callable[[str], str]:
    """Create an empty database (dropping any leftover) and return its URL."""

    def make(name: str) -> str:
        _admin_exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        return url_with_database(pg_admin_url, name)

    return make


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[str], str]) -> str:
    url = make_database(TEST_DATABASE)
    upgrade_head(url)
    return url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    yield from embedded_server(EmbeddedRedis, "redis")


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("plant")
    ensure_key_file(data_dir / "keys" / "active.pem")
    return load_settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=data_dir,
        health_timeout_seconds=0.5,
        # The session's app serves every test: a /metrics reading must not outlive a test.
        metrics_state_max_age_seconds=0,
    )


@pytest.fixture(scope="session")
def keyring(settings: Settings) -> KeyRing:
    return keyring_from_settings(settings)


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(engine: Engine) -> Iterator[Session]:
    """A session whose every commit is a savepoint inside one rolled-back transaction."""
    with engine.connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


@pytest.fixture
def clean_db(engine: Engine) -> Iterator[None]:
    """For tests that commit: empty every table afterwards (the schema stays).

    A worker may still be in the last batch of a job the test saw cancelled, so the
    TRUNCATE first waits until no other session of this database is inside a statement
    or a transaction; should it still be picked as a deadlock victim, it is tried again.
    """
    yield
    for attempt in range(1, 4):
        wait_for(lambda: busy_sessions(engine) == 0, timeout=60, interval=0.1, what="the database to be quiet")
        try:
            _truncate_all(engine)
            return
        except OperationalError as error:
            if attempt == 3 or not isinstance(error.orig, psycopg.errors.DeadlockDetected):
                raise


def lock_waiters(engine: Engine) -> int:
    """Sessions of this database waiting on a lock now. Each call reads in a transaction of
    its own: PostgreSQL takes one snapshot of pg_stat_activity per transaction, so a probe
    polling inside one transaction sees the state of its first read for ever."""
    with engine.connect() as connection:
        return connection.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"))


def outcome_once_committed(engine: Engine, holding: Any, work: Callable[[], Any], what: str) -> list[Any]:
    """Run ``work`` in a thread while ``holding`` (a begun session) is not committed; once
    ``work`` waits on a lock, commit ``holding``. ``work``'s value or exception, in a list: it
    must not have finished before the commit."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # noqa: BLE001  (the test asserts on it)
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: outcome or lock_waiters(engine) >= 1, what=f"{what} to finish or wait")
        assert not outcome, f"{what} did not wait: {outcome}"
        holding.commit()
    finally:
        holding.close()
        thread.join(timeout=60)
    return outcome


def busy_sessions(engine: Engine) -> int:
    """Other sessions of this database inside a statement or a transaction."""
    with engine.connect() as connection:
        return connection.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
            " AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')"
        ))


# Rows the migrations write, which no test makes: the schema's version, and when Plant
# began recording the signatures it hands out (migration 0010).
SCHEMA_DATA_TABLES = ("alembic_version", "signed_exports_began", "ledger_digests_v2_began")


def _truncate_all(engine: Engine) -> None:
    """Empty every table the tests write. Only the tables holding a row are named to TRUNCATE
    (with those referencing them, CASCADE): a TRUNCATE makes each table it names a new file,
    and naming all 26 (every table but the schema's data) cost 100-200 ms after every test
    that commits, most of which write two or three tables (one ``LIMIT 1`` read of each table
    finds them, in 2 ms). Every table is locked first, as the TRUNCATE of them all locked them:
    a writer still in a transaction is waited for and its rows seen, where the read alone
    would find its table empty and leave them."""
    with engine.begin() as connection:
        tables = connection.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> ALL(:kept)"),
            {"kept": list(SCHEMA_DATA_TABLES)},
        ).all()
        connection.execute(text("LOCK TABLE " + ", ".join(f'"{t}"' for t in tables) + " IN ACCESS EXCLUSIVE MODE"))
        tables = connection.scalars(text(" UNION ALL ".join(
            f"(SELECT CAST('{table}' AS text) FROM \"{table}\" LIMIT 1)" for table in tables))).all()
        if not tables:
            return
        # The append-only guards refuse TRUNCATE; a test database may lift them for a moment.
        for table in APPEND_ONLY_TABLES:
            connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_truncate"))
        connection.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
        for table in APPEND_ONLY_TABLES:
            connection.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate"))


@pytest.fixture(scope="session")
def app(settings: Settings) -> Any:
    from web import create_app

    return create_app(settings)


@pytest.fixture
def admin_key(engine: Engine, clean_db: None) -> str:
    """A committed admin API key (cleaned afterwards with everything else)."""
    from models.api_keys import create_api_key

    with Session(engine) as session, session.begin():
        return create_api_key(session, name="test-admin", scopes=["admin"]).plaintext


def bearer(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def client(app: Any, admin_key: str) -> Any:
    """A test client that authenticates as admin on every request."""
    test_client = app.test_client()
    test_client.environ_base.update(bearer(admin_key))
    return test_client


@pytest.fixture
def quiet_client(settings: Settings, admin_key: str) -> Any:
    """An admin client whose jobs go to a Redis database no worker consumes: for tests that look
    at jobs that stay queued, or count rows, while a worker another test started runs."""
    from web import create_app

    quiet = settings.model_copy(update={"redis_url": settings.redis_url.rsplit("/", 1)[0] + "/9"})
    test_client = create_app(quiet).test_client()
    test_client.environ_base.update(bearer(admin_key))
    return test_client


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This environment for a child process running on ``settings``' servers (a ``DATABASE_URL_FILE``
    exported where the tests run dropped, as the child would refuse it beside ``DATABASE_URL``)."""
    return child_environment(os.environ, **{"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
                                            "PLANT_DATA_DIR": str(settings.data_dir), "PYTHONUNBUFFERED": "1", **extra})


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def raw_http_exchange(base: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as written to the server at ``base``: its status and whole answer, for
    what a test client cannot send (a request line gunicorn refuses, an undecoded path)."""
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


# What gunicorn.conf.py sets in its environment (os.environ.setdefault) from PLANT_WEB_THREADS.
GUNICORN_DERIVED = ("PLANT_DB_POOL_SIZE", "PLANT_LONG_POLLS_AT_ONCE")


@contextmanager
def gunicorn_serving(settings: Settings, log_path: Path, *, processes: int, threads: int,
                     metrics_dir: Path | None, config: Path = REPO_ROOT / "gunicorn.conf.py", cwd: Path = REPO_ROOT,
                     **variables: str) -> Iterator[str]:
    """The API under gunicorn as configured (``config``, run from ``cwd``), JSON logs in
    ``log_path``; yields its base URL once it answers, and stops it after. ``metrics_dir`` None: no
    ``PROMETHEUS_MULTIPROC_DIR`` given, as the deployments run it (gunicorn.conf.py makes one)."""
    import requests

    from cli.ports import claim_port

    port = claim_port()
    env = child_env(settings, PLANT_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY=str(processes),
                    PLANT_WEB_THREADS=str(threads), PLANT_LOG_FORMAT="json", **variables)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    for derived in GUNICORN_DERIVED:  # gunicorn.conf.py sizes them from the threads: none left by another test
        env.pop(derived, None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", str(config), "web:create_app()"],
            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
        try:
            return requests.get(f"{base}/openapi.json", timeout=2).status_code == 200
        except requests.RequestException:  # not listening yet, or a worker still booting
            return False

    try:
        wait_for(up, timeout=60, what="gunicorn to answer")
        yield base
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def gunicorn_logged(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One gunicorn per test module, as configured, one process of two threads: its base URL and
    the file its JSON log goes to."""
    directory = tmp_path_factory.mktemp("gunicorn-logged")
    (directory / "prometheus").mkdir()
    log_path = directory / "gunicorn.log"
    with gunicorn_serving(settings, log_path, processes=1, threads=2, metrics_dir=directory / "prometheus") as base:
        yield base, log_path


def sweep_recovery(settings: Settings) -> None:
    """Send beat's recovery sweep as beat would (the tests run no beat): once a worker has run
    it, /health's beat check is up for a couple of minutes (tasks.maintenance.mark_sweep)."""
    from tasks.celery_app import create_celery

    create_celery(settings).send_task("plant.maintenance.requeue_stale_jobs")


@pytest.fixture(scope="session")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    """A real ``celery worker`` process consuming every queue."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "default,audit,maintenance",
             "-c", "2", "-n", f"test-{os.getpid()}@%h", "-E", "--without-mingle", "--without-gossip",
             "--loglevel=INFO"],
            # Small audit batches and chunks: audits take long enough to watch and cancel,
            # and even small scopes fan out into several parallel chunks.
            cwd=REPO_ROOT, env=child_env(settings, PLANT_AUDIT_BATCH_SIZE="3", PLANT_AUDIT_CHUNK_ENTITIES="150"),
            stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    from tasks.celery_app import create_celery

    probe = create_celery(settings)
    try:
        wait_for(
            lambda: process.poll() is not None or probe.control.ping(timeout=0.5),
            timeout=60, what="the worker to answer a ping",
        )
        if process.poll() is not None:
            pytest.fail(f"worker exited early:\n{log_path.read_text()[-3000:]}")
        yield process
    finally:
        stop_process_group(process)
        if os.environ.get("PLANT_TEST_SHOW_WORKER_LOG"):
            sys.stderr.write(log_path.read_text())


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# The embedder the tests write with (Plant's default), for what takes one without a WriteContext.
EMBEDDER = HashingEmbedder()


@pytest.fixture(scope="session")
def write_ctx(keyring: KeyRing) -> Any:
    from models.registry import WriteContext

    return WriteContext(actor="test", keyring=keyring, embedder=EMBEDDER)


@pytest.fixture
def steward(db_session: Session, write_ctx: Any) -> Any:
    """The self-governing steward, inside the rolled-back test transaction."""
    from models.seed import bootstrap_steward

    return bootstrap_steward(db_session, write_ctx)


@pytest.fixture
def committed_steward(engine: Engine, write_ctx: Any, clean_db: None) -> Any:
    """The steward committed for real, for API and end-to-end tests (cleaned afterwards)."""
    from models.seed import bootstrap_steward

    with Session(engine) as session, session.begin():
        return bootstrap_steward(session, write_ctx)


@pytest.fixture
def seeded(engine: Engine, write_ctx: Any, clean_db: None) -> Any:
    """The demo registry, committed (cleaned afterwards)."""
    from models.seed import seed_registry

    with Session(engine) as session, session.begin():
        return seed_registry(session, write_ctx)


@pytest.fixture
def skill(db_session: Session, write_ctx: Any, steward: Any) -> Any:
    """A skill with three versions (v1 create, v2 and v3 edits), inside the rolled-back test transaction."""
    from models.entities import EntityType
    from models.registry import create_entity, update_entity

    skill = create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": "Audited Skill", "skill_key": "audited-skill", "category": "technical",
        "description": "version one", "governance_agent_id": steward})
    for text_ in ("version two", "version three"):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"description": text_}, ctx=write_ctx)
    db_session.flush()
    return skill


def ring_sealing(keyring: KeyRing, as_of: str) -> KeyRing:
    """A ring in which ``keyring``'s active key is retired and was sealed at ``as_of`` (RFC 3339)."""
    from models.signing import KeySeal
    from models.key_material import generate_ed25519

    return KeyRing(generate_ed25519(), (keyring.active,), (KeySeal(keyring.active.kid, 1, "00" * 32, as_of),))


@pytest.fixture
def key_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A data dir of its own with a generated key, as `plant dev` leaves it."""
    for name in ("PLANT_SIGNING_KEY", "PLANT_SIGNING_KEY_FILE", "PLANT_RETIRED_SIGNING_KEYS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PLANT_DATA_DIR", str(tmp_path))
    settings = load_settings()
    ensure_key_file(settings.active_signing_key_path)
    return settings


@pytest.fixture
def worker_sessions(engine: Engine, keyring: KeyRing, write_ctx: Any, clean_db: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A session factory that task code in this process uses as a worker's (``tasks.runtime``),
    with the test keyring and embedder; tables are emptied afterwards."""
    from models.db import make_session_factory
    from tasks import runtime

    factory = make_session_factory(engine)
    monkeypatch.setattr(runtime, "session_factory", lambda: factory)
    monkeypatch.setattr(runtime, "keyring", lambda: keyring)
    monkeypatch.setattr(runtime, "embedder", lambda: write_ctx.embedder)
    return factory


class SentTasks:
    """Stands in for a Celery task (and its app): records what task code publishes."""

    def __init__(self, *, broker_down: bool = False, name: str | None = None) -> None:
        self.sent: list[tuple[str, list, str, float]] = []
        self.app = self
        self.broker_down = broker_down
        self.name = name  # the task's, which decides the kind of job it claims (None: any)

    def send_task(self, name: str, *, args: list, queue: str, countdown: float = 0.0, retry: bool = False,
                  declare: list | None = None) -> None:
        if self.broker_down:
            raise ConnectionRefusedError("the broker is down")
        self.sent.append((name, args, queue, countdown))


@pytest.fixture
def no_server_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take Plant's log handlers off the root logger for one test. A server started earlier in
    this process (another test's app) left its JSON handler there, writing to whatever
    sys.stderr is: httpx's request lines would land in the output CliRunner captures from a
    command, which a CLI test reads line by line."""
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [h for h in root.handlers if not getattr(h, "plant_handler", False)])
