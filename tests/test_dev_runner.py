"""``plant dev`` from nothing: embedded services, seed, API, worker, beat and Flower.

Drives the real processes over HTTP, then SIGTERMs the runner and checks that no
process it started is left, and that a restart keeps the data.
"""

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
import requests
from sqlalchemy.engine import make_url

from cli.ports import claim_port
from cli.services import free_port
from models.settings import libpq_url
from tests.conftest import REPO_ROOT, wait_for

pytestmark = pytest.mark.e2e


class DevRunner:
    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.port, self.flower_port = claim_port(), claim_port()
        self.data_dir, self.log_path = data_dir, log_path
        self.api = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PLANT_SIGNING_KEY")}
        env.update(PLANT_DATA_DIR=str(self.data_dir), PLANT_PORT=str(self.port),
                   PLANT_FLOWER_PORT=str(self.flower_port), WEB_CONCURRENCY="1")
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "cli.main", "dev"], cwd=REPO_ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, timeout=120, what=f"plant dev to be healthy; log: {self.log_path}")

    def session(self) -> requests.Session:
        """An HTTP session authenticated with the admin key the runner bootstrapped."""
        http = requests.Session()
        http.headers["Authorization"] = "Bearer " + (self.data_dir / "admin-api-key").read_text().strip()
        return http

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"plant dev exited {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
        try:
            return requests.get(self.api + "/health", timeout=5).json()["status"] == "ok"
        except (requests.RequestException, ValueError):
            return False

    def started(self) -> list[psutil.Process]:
        """Every process the runner started: its children, and whatever runs on its data dir."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # it exited (a start that failed): what it left runs on its data dir
            children = []
        return children + [p for p in psutil.process_iter() if _in_dir(p, self.data_dir)]

    def stop(self, how: signal.Signals = signal.SIGTERM) -> list[psutil.Process]:
        """Signal the runner (SIGTERM: ``make dev`` stopped; SIGHUP: its terminal closed) and
        wait for it to exit 0; return every process it had started (now expected gone)."""
        started = self.started()
        self.process.send_signal(how)
        assert self.process.wait(timeout=60) == 0
        self.log.close()
        return started

    def kill_outright(self) -> list[psutil.Process]:
        """SIGKILL the runner (the OOM killer, an IDE's stop button): nothing of it runs to stop
        its stack, whose processes run in sessions of their own, so its watchdog must. Returns
        what it had started that is still alive once the watchdog had time; those are killed."""
        started = self.started()
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()
        deadline = time.monotonic() + 30  # what a watchdog would take to notice and stop them
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _alive(started)
        for process in left:  # never leave them to the next test
            process.kill()
        return left


def _in_dir(process: psutil.Process, directory: Path) -> bool:
    try:
        return any(str(directory) in part for part in process.cmdline())
    except psutil.Error:
        return False


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running: a zombie, or one gone between the two questions
    (``status()`` raises ``NoSuchProcess`` then), is not."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


SECRET_FILES = ("postgres.password", "runtime-role.password", "redis.password", "redis.conf")


def _wait_until_healthy(runner: DevRunner) -> None:
    """``ok`` within seconds: a single answer may be ``degraded`` on a busy machine, when a
    worker's reply to the health check's ping comes after the check's timeout."""
    wait_for(runner._healthy, timeout=10, what=f"{runner.api}/health to say ok")


def test_dev_runs_everything_beside_another_runner_and_stops_clean(tmp_path: Path, server_tmp: Path) -> None:
    """One test, not four: each start of a whole stack (PostgreSQL, Redis, migrate, seed, API,
    worker, beat, Flower) costs 20-40 s of the suite. The first runner (on a path with a space)
    is checked through, stopped (SIGTERM), restarted and hung up (SIGHUP: its terminal closed);
    the second, with its own data directory and ports, runs beside it meanwhile and is killed
    outright (SIGKILL), its watchdog left to stop its stack. The runner's children each run in a
    session of their own, so neither a hangup nor the kill reaches them: the runner, or its
    watchdog, must stop them, or the next ``make dev`` finds PostgreSQL's data dir locked."""
    runner = DevRunner(server_tmp / "plant data", tmp_path / "dev.log")
    other = DevRunner(server_tmp / "other", tmp_path / "other.log")
    runner.start()
    http = runner.session()
    try:
        try:
            other.start()  # inside: a start that times out still has its stack stopped below
            api = runner.api + "/api/v1"
            assert requests.get(api + "/agents").status_code == 401
            assert len(http.get(api + "/agents", params={"page_size": 100}).json()["items"]) >= 50
            submitted = http.post(api + "/diagnostics/sleep", json={"seconds": 1.5, "steps": 3})
            assert submitted.status_code == 202
            job_url = runner.api + submitted.headers["Location"]
            wait_for(lambda: (j := http.get(job_url).json())["status"] == "running" and j["progress"]["done"] >= 1,
                     what="job running with progress")
            job_id = submitted.json()["id"]
            flower = f"http://127.0.0.1:{runner.flower_port}/api/tasks"
            assert requests.get(flower).status_code == 401  # Flower's API and UI need basic auth
            assert requests.get(f"http://127.0.0.1:{runner.flower_port}/").status_code == 401
            for public in ("/metrics", "/healthcheck"):  # Flower 2.2.0 serves these two without it
                assert requests.get(f"http://127.0.0.1:{runner.flower_port}{public}").status_code == 200, public
            user, password = (runner.data_dir / "flower-auth").read_text().strip().split(":", 1)
            wait_for(lambda: any(job_id in str(t.get("args")) for t in requests.get(flower, auth=(user, password)).json().values()),
                     what="Flower to show the task")
            assert http.get(job_url, params={"wait": 20}).json()["status"] == "succeeded"
            services_env = dict(line.split("=", 1) for line in (runner.data_dir / "services.env").read_text().splitlines())
            assert set(services_env) == {"DATABASE_URL", "REDIS_URL", "OWNER_DATABASE_URL"}
            # The app processes connect as the runtime role, which owns nothing: it cannot lift a guard.
            with psycopg.connect(libpq_url(services_env["OWNER_DATABASE_URL"]), autocommit=True) as owner:
                users = {u for (u,) in owner.execute(
                    "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")}
                assert users == {"plant_runtime"}, users
            with psycopg.connect(libpq_url(services_env["DATABASE_URL"]), autocommit=True) as runtime, \
                    pytest.raises(psycopg.errors.InsufficientPrivilege):
                runtime.execute("ALTER TABLE entity_versions DISABLE TRIGGER ALL")
            # No one gets in without the passwords the runner generated (helper-115: the superuser had none).
            owner_url = make_url(services_env["OWNER_DATABASE_URL"])
            for user in ("postgres", "plant_runtime"):
                with pytest.raises(psycopg.OperationalError, match="password"):
                    psycopg.connect(host=owner_url.host, port=owner_url.port, user=user, dbname="plant").close()
            assert {name: oct(stat.S_IMODE((runner.data_dir / name).stat().st_mode))
                    for name in SECRET_FILES} == dict.fromkeys(SECRET_FILES, oct(0o600))
            assert owner_url.password not in (tmp_path / "dev.log").read_text()  # the banner hides it
            broker = make_url(services_env["REDIS_URL"])
            with redis.Redis(host=broker.host, port=broker.port) as anonymous, pytest.raises(redis.AuthenticationError):
                anonymous.ping()

            # The other runner has its own PostgreSQL, Redis and admin key.
            _wait_until_healthy(other)
            urls = [(r.data_dir / "services.env").read_text() for r in (runner, other)]
            assert urls[0] != urls[1]
            keys = [(r.data_dir / "admin-api-key").read_text() for r in (runner, other)]
            assert keys[0] != keys[1]
            assert other.session().get(other.api + "/api/v1/agents").status_code == 200
            # One runner's key means nothing to the other: separate databases.
            foreign = requests.get(runner.api + "/api/v1/agents", headers={"Authorization": f"Bearer {keys[1].strip()}"})
            assert foreign.status_code == 401
        finally:
            assert other.kill_outright() == []
        _wait_until_healthy(runner)  # unaffected by the other's end
    finally:
        started = runner.stop()
    assert started, "the runner started no processes?"
    assert _alive(started) == []

    # Data persists across restarts in PLANT_DATA_DIR; the seed adds nothing the second time.
    runner.start()
    try:
        assert http.get(job_url).json()["status"] == "succeeded"
        assert http.get(f"{runner.api}/api/v1/jobs/{uuid.uuid4()}").status_code == 404
    finally:
        assert _alive(runner.stop(signal.SIGHUP)) == []
    assert "seed: created 0 entities" in (tmp_path / "dev.log").read_text()


def test_the_files_the_dev_runner_writes_secrets_to_are_for_its_user_alone(tmp_path: Path, settings, engine,
                                                                           clean_db, monkeypatch) -> None:
    """``services.env`` (URLs that may hold a password) was written under the umask (0644), and
    the admin key and Flower's credentials were written first and made private after: readable
    by others for a moment, or for good when interrupted in between (helper-67)."""
    import stat

    from cli.bootstrap import ensure_dev_admin
    from cli.dev import BackingServices, DevConfig, flower_credentials, write_services_env

    old_mask = os.umask(0o022)
    try:
        write_services_env(tmp_path, BackingServices(owner_url="postgresql+psycopg://plant:s3cret@db.internal/plant",
                                                     database_url="postgresql+psycopg://app:s3cret@db.internal/plant",
                                                     redis_url="redis://:pw@cache/0"))
        flower_credentials(DevConfig(tmp_path, 1, 2, None, None, 3, 4, None, None))
        ensure_dev_admin(settings.model_copy(update={"admin_api_key": None}), tmp_path)
        modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("services.env", "flower-auth", "admin-api-key")}
    finally:
        os.umask(old_mask)
    assert modes == {"services.env": 0o600, "flower-auth": 0o600, "admin-api-key": 0o600}


def test_a_revoked_dev_admin_key_file_is_replaced_with_a_live_key(settings, engine, clean_db, tmp_path) -> None:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from cli.bootstrap import ensure_dev_admin
    from models.api_keys import ApiKey, hash_key, revoke_api_key

    unconfigured = settings.model_copy(update={"admin_api_key": None})
    first, path = ensure_dev_admin(unconfigured, tmp_path)
    with Session(engine) as session, session.begin():
        revoke_api_key(session, key_id=session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(first))),
                       leave_no_admin_key=True)
    second, _ = ensure_dev_admin(unconfigured, tmp_path)
    assert second != first and path.read_text().strip() == second
    with Session(engine) as session:
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(second)))
        assert key.revoked_at is None and "admin" in key.scopes


def test_plant_dev_refuses_a_revoked_configured_admin_key(settings, engine, clean_db, tmp_path) -> None:
    """It printed "admin API key: the one PLANT_ADMIN_API_KEY holds" for a key that got 401 (helper-75)."""
    from pydantic import SecretStr
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from cli.bootstrap import ensure_dev_admin
    from models.api_keys import ApiKey, hash_key, revoke_api_key
    from models.errors import InvalidInput

    configured = settings.model_copy(update={"admin_api_key": SecretStr("plant_a_configured_admin_key_0123456789")})
    ensure_dev_admin(configured, tmp_path)
    with Session(engine) as session, session.begin():
        revoke_api_key(session, key_id=session.scalar(select(ApiKey.id).where(
            ApiKey.key_hash == hash_key("plant_a_configured_admin_key_0123456789"))), leave_no_admin_key=True)
    with pytest.raises(InvalidInput, match="was revoked"):
        ensure_dev_admin(configured, tmp_path)


def test_plant_dev_waits_longer_than_gunicorn_s_graceful_shutdown() -> None:
    """gunicorn's graceful timeout went to 35 s (a long poll lasts up to 30 s); plant dev still
    killed every child after 20 s (helper-76)."""
    import re

    from cli.supervisor import PROJECT_ROOT, SHUTDOWN_GRACE_SECONDS

    graceful = int(re.search(r"^graceful_timeout\s*=\s*(\d+)", (PROJECT_ROOT / "gunicorn.conf.py").read_text(), re.M)[1])
    assert SHUTDOWN_GRACE_SECONDS > graceful > 30


@pytest.mark.parametrize("value", ["abc", "70000", "٣٣"])
def test_a_port_setting_that_is_not_a_port_is_one_line_not_a_traceback(tmp_path: Path, monkeypatch, value: str) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    monkeypatch.setenv("PLANT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PLANT_PG_PORT", value)
    result = CliRunner().invoke(cli, ["dev"])
    assert result.exit_code == 1 and result.stderr.startswith("plant: PLANT_PG_PORT must be a port number")


def test_the_demo_never_hands_its_stack_the_developer_s_metrics_directory(tmp_path: Path, monkeypatch) -> None:
    """The demo's gunicorn empties PROMETHEUS_MULTIPROC_DIR at start (helper-67)."""
    from cli.demo_stack import DemoStack

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mine"))
    assert "PROMETHEUS_MULTIPROC_DIR" not in DemoStack(tmp_path, 1, 2).environment()


def test_the_runner_starts_its_servers_on_other_ports_when_the_ports_it_picked_are_taken(
    server_tmp: Path, tmp_path: Path, monkeypatch
) -> None:
    """With no port set, a port is free when picked, not when the server binds it."""
    from contextlib import ExitStack

    import redis

    from cli import services
    from cli.dev import DevConfig, start_backing_services

    with services.EmbeddedRedis(tmp_path / "taker", claim_port()) as taker:
        picks = iter([taker.port, taker.port])  # PostgreSQL's first pick, then Redis's
        monkeypatch.setattr(services, "free_port", lambda: next(picks, None) or free_port())
        with ExitStack() as stack:
            started = start_backing_services(DevConfig(server_tmp, 1, 2, None, None, 0, 0, None, None), stack)
            assert next(picks, None) is None  # both were given the taken port first
            for url in (started.owner_url, started.redis_url):
                assert f":{taker.port}/" not in url
            psycopg.connect(libpq_url(started.owner_url)).close()
            assert redis.Redis.from_url(started.redis_url).ping()


@pytest.mark.parametrize("taken", ["PLANT_PORT", "PLANT_FLOWER_PORT"])
def test_a_user_port_in_use_is_refused_before_anything_starts(tmp_path: Path, taken: str) -> None:
    """A taken API or Flower port showed only once the servers, the migrations and the seed had
    run, as gunicorn's or Flower's own bind error and "exited"; now it is named at once."""
    ports = {"PLANT_PORT": claim_port(), "PLANT_FLOWER_PORT": claim_port()}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PLANT_SIGNING_KEY")}
    env.update(PLANT_DATA_DIR=str(tmp_path / "data"), **{name: str(port) for name, port in ports.items()})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[taken]))
        holder.listen()
        ended = subprocess.run([sys.executable, "-m", "cli.main", "dev"], cwd=REPO_ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
    assert ended.returncode == 1, ended.stdout + ended.stderr
    assert f"({taken}) port {ports[taken]} is in use" in ended.stderr, ended.stderr
    assert not (tmp_path / "data" / "postgres").exists()  # nothing was started


def test_a_port_whose_server_just_stopped_is_not_taken_for_one_in_use() -> None:
    """A runner restarted at once found its own API port "in use": the stopped server's closed
    connections were still in TIME_WAIT, which a bind without SO_REUSEADDR counts (gunicorn
    sets it, and binds)."""
    from cli.services import PortTaken, require_free_port

    port = claim_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server's side closes first: its end of the connection waits in TIME_WAIT
            client.recv(1)
        with pytest.raises(PortTaken):  # still listening: taken
            require_free_port(port, "API")
    require_free_port(port, "API")  # stopped, TIME_WAIT left behind: free
