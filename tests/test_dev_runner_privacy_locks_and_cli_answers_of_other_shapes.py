"""The dev runner and the CLI client under hostile conditions: the data dir, logs and children are
private to their user and the admin key is never printed; a data dir is one runner's (a lock), a
stale postmaster.pid naming another dir is stale, the runner's own ports are never handed to an
embedded server; answers of an unexpected shape are one line, not a traceback; and the watchdog
test's runner stops its server even when started with SIGINT ignored."""

import os
import stat
import subprocess
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from click.testing import CliRunner, Result

from cli import dev, jobs, services
from cli.client import PlantClient
from cli.data_dir import data_dir_lock, make_data_dir
from cli.main import cli
from cli.output import describe_job
from cli.postgres_server import EmbeddedPostgres, running_postmaster
from cli.ports import claim_port
from cli.services import EmbeddedRedis, free_port
from cli.supervisor import Supervisor
from cli.watchdog import Watchdog
from tests.conftest import REPO_ROOT, wait_for
from tests.test_dev_runner_watchdog import RUNNER, _group


def test_the_watchdog_test_runner_stops_its_server_by_sigint_even_when_started_ignoring_it(tmp_path: Path) -> None:
    """The flake of ``test_a_watchdog_stops_its_dead_runner_s_groups_in_order_and_nothing_else``:
    a test run started in the background by a non-interactive shell (``make test &``, a CI
    step) has SIGINT ignored, and an ignored signal passes to every child. The stand-in runner
    passed it on to its "server" sh, whose ``trap ... INT`` POSIX then ignores too: the
    watchdog's SIGINT did nothing, the group was SIGKILLed after its grace, and the trap's line
    never reached the log. plant dev installs its handlers before it starts anything; so must
    the stand-in."""
    log = tmp_path / "stopped"
    runner = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$@"', "sh", sys.executable, "-c", RUNNER, str(log),
                               "killed"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert runner.stdout is not None
    watchdog_pid, server, apps = (int(pid) for pid in runner.stdout.readline().split())
    try:
        wait_for(lambda: len(_group(apps)) == 3 and len(_group(server)) == 2, what="each leader to start its children")
        runner.kill()
        runner.wait()
        wait_for(lambda: _group(watchdog_pid) == [], timeout=30, what="the watchdog to stop the groups and exit")
        assert log.read_text().split() == ["apps", "server"]
    finally:
        for pgid in (server, apps):
            for process in _group(pgid):
                process.kill()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private_tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (itself included) that a group or other user may use."""
    return {str(path.relative_to(root.parent)): oct(_mode(path)) for path in (root, *root.rglob("*"))
            if not path.is_symlink() and _mode(path) & 0o077}


def test_the_dev_data_dir_is_made_for_its_user_only(tmp_path: Path) -> None:
    """Made as the umask had it (0755), any local user could list it and read the servers'
    logs and Redis's append-only files in it."""
    data_dir = tmp_path / "made" / "data"
    make_data_dir(data_dir)
    assert _mode(data_dir) == 0o700


def test_an_embedded_server_s_log_and_data_are_for_its_user_only(tmp_path: Path) -> None:
    """A log an earlier start left readable by all is made private; what the server writes
    (Redis's append-only dir and files) is private, whatever the caller's umask."""
    log = tmp_path / "redis.log"
    log.write_text("an earlier start's\n")
    log.chmod(0o644)
    server = EmbeddedRedis(tmp_path / "redis", claim_port(), passwords=True)
    with server:
        wait_for(lambda: any((tmp_path / "redis").rglob("*.aof")), what="redis to write its append-only file")
        assert _private_tree(tmp_path / "redis") == {}
    assert _mode(log) == 0o600


def test_the_dev_runner_s_app_processes_start_with_a_private_umask() -> None:
    with Watchdog.start() as watchdog:
        supervisor = Supervisor(dict(os.environ), watchdog)
        try:
            supervisor.spawn("sleeper", ["sleep", "30"])
            child = supervisor._children[0].process
            umask = next(line.split()[1] for line in Path(f"/proc/{child.pid}/status").read_text().splitlines()
                         if line.startswith("Umask:"))
        finally:
            supervisor.stop_all(grace=5)
    assert int(umask, 8) == 0o077


def test_the_dev_runner_names_the_admin_key_s_file_not_the_key(tmp_path: Path) -> None:
    """The banner hides the servers' passwords, yet the line above it printed the admin key
    itself: into the terminal's scrollback and every log of the runner's output (``plant
    demo``'s stack.log, readable by all in a data dir readable by all)."""
    key_file = tmp_path / "plant data" / "admin-api-key"  # the hint it gives works for a path with a space too
    key_file.parent.mkdir()
    key_file.write_text("plant_secret_admin_key_0123456789abcdef\n")
    line = dev.admin_key_line(key_file)
    assert "plant_secret_admin_key" not in line and str(key_file) in line
    hint = line.split("(", 1)[1].rsplit(")", 1)[0] + '; printf %s "$PLANT_API_KEY"'
    assert subprocess.run(["sh", "-c", hint], capture_output=True, text=True).stdout == key_file.read_text().strip()


def _plant_against(monkeypatch: pytest.MonkeyPatch, answer: dict) -> Result:
    """``plant jobs watch ID`` against a server that answers every request with ``answer``."""
    real = PlantClient
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    monkeypatch.setattr(jobs, "PlantClient", lambda config: real(config, transport=transport))
    monkeypatch.setenv("PLANT_API_KEY", "k" * 40)
    return CliRunner().invoke(cli, ["jobs", "watch", answer["id"]])


@pytest.mark.parametrize(("kind", "result", "shown"), [
    ("audit.run", [1, 2], "[1,2]"),  # any JSON value: the API serves a row edited through SQL as it is stored
    ("skill.certify", {"status": "certified"}, '{"status":"certified"}'),  # an object without its certificate
    ("agent.assign_team", "placed", '"placed"'),
])
def test_a_succeeded_job_s_result_of_another_shape_is_shown_as_json_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, no_server_log_lines: None, kind: str, result: object, shown: str) -> None:
    job = {"id": str(uuid.uuid4()), "kind": kind, "status": "succeeded", "progress": {"done": 1, "total": 1},
           "attempts": 1, "created_at": "2026-01-01T00:00:00Z", "params": {}, "result": result, "error": None}
    outcome = _plant_against(monkeypatch, job)
    assert outcome.exception is None or isinstance(outcome.exception, SystemExit), repr(outcome.exception)
    assert outcome.exit_code == 0 and shown in outcome.stdout.splitlines()[-1], (outcome.stdout, outcome.stderr)


@pytest.mark.parametrize(("args", "answer"), [
    (["signing-keys", "list"], {"keys": ["not-a-jwk"]}),
    (["signing-keys", "list"], {"keys": "not-a-list"}),
    (["assign", str(uuid.uuid4()), "--team", "Growth"], {"items": [{"name": 5}, {"id": "x"}], "next_page_token": None}),
])
def test_an_answer_of_another_shape_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                no_server_log_lines: None, args: list[str],
                                                                answer: dict) -> None:
    """README: an answer that is not a Plant JSON object (PLANT_URL at another service) is one
    line, not a traceback; these two read members of it unchecked."""
    real = PlantClient
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    monkeypatch.setattr(jobs, "PlantClient", lambda config: real(config, transport=transport))
    monkeypatch.setenv("PLANT_API_KEY", "k" * 40)
    outcome = CliRunner().invoke(cli, args)
    assert isinstance(outcome.exception, SystemExit) and outcome.exit_code == 1, repr(outcome.exception)
    assert len(outcome.stderr.splitlines()) == 1 and outcome.stderr.startswith("plant: "), outcome.stderr


def test_a_stale_pid_file_naming_another_data_dir_s_postgres_is_stale(server_tmp: Path, pg_admin_url: str) -> None:
    """After a reboot, the pid in a data dir's postmaster.pid may be any other PostgreSQL's
    (another runner's, the suite's): taken for this dir's, the file was never removed, the
    dir's server never started again (and ``plant demo`` refused its dir for good)."""
    others = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    if not others:
        pytest.skip("no local PostgreSQL process (TEST_DATABASE_URL names a remote server)")
    data_dir = server_tmp / "pg"
    data_dir.mkdir()
    for pid in others:
        (data_dir / "postmaster.pid").write_text(f"{pid}\n{data_dir}\n")
        assert running_postmaster(data_dir / "postmaster.pid") is None, pid
    with EmbeddedPostgres(server_tmp / "live", claim_port()) as server:  # a live one is still its dir's
        assert running_postmaster(server.data_dir / "postmaster.pid") == server.pid


@pytest.mark.parametrize("embedded", ["redis", "postgres"])
def test_an_embedded_server_never_takes_the_runner_s_own_api_port(server_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  request: pytest.FixtureRequest, embedded: str) -> None:
    """The runner's API and Flower ports are free while the servers start (gunicorn and Flower
    bind them after): a free port picked for Redis or PostgreSQL could be one of them, and the
    API then failed to start. A PLANT_PORT set in the kernel's range is as likely a pick. One server is
    embedded at a time (the other is the suite's), its first pick being the API's port."""
    given = {"database_url": None} if embedded == "postgres" else {"redis_url": None}
    # before free_port is patched: the suite's own servers, started for the first test that asks, pick ports too
    urls = {name: given[name] if name in given else request.getfixturevalue(name) for name in ("database_url", "redis_url")}
    api_port = claim_port()
    picks = iter([api_port])
    monkeypatch.setattr(services, "free_port", lambda: next(picks, None) or free_port())
    config = dev.DevConfig(data_dir=server_tmp, port=api_port, flower_port=claim_port(), pg_port=0, redis_port=0,
                           signing_key_file=None, flower_basic_auth=None, **urls)
    with ExitStack() as stack:
        started = dev.start_backing_services(config, stack)
        assert next(picks, None) is None  # the embedded server was offered the API's port first
        port = urlsplit(started.owner_url if embedded == "postgres" else started.redis_url).port  # not the URL: it holds a password
        assert port != api_port


def test_a_second_runner_on_a_data_dir_in_use_is_refused_before_it_starts_anything(tmp_path: Path) -> None:
    """Only PostgreSQL's own lock refused it: with DATABASE_URL set, a second runner started a
    second Redis on the first one's append-only files and wrote its URLs over the first's."""
    with data_dir_lock(tmp_path):
        env = {**os.environ, "PLANT_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        second = subprocess.run([sys.executable, "-m", "cli.main", "dev"], cwd=REPO_ROOT, env=env, timeout=60,
                                capture_output=True, text=True, start_new_session=True)
    assert second.returncode == 1, second.stderr
    assert f"another plant dev runs on {tmp_path}" in second.stderr
    assert not (tmp_path / "redis").exists()


def test_the_watchdog_holds_the_data_dir_until_it_has_stopped_what_its_runner_left(tmp_path: Path) -> None:
    with data_dir_lock(tmp_path) as lock:
        watchdog = Watchdog.start(holding=(lock,))
    try:
        with pytest.raises(services.ServiceError, match="another plant dev"), data_dir_lock(tmp_path):
            pass
    finally:
        watchdog.close()
    with data_dir_lock(tmp_path):
        pass


def test_jobs_show_on_a_job_whose_progress_is_not_an_object_is_one_line_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, no_server_log_lines: None) -> None:
    job = {"id": str(uuid.uuid4()), "kind": "audit.run", "status": "running", "progress": None}
    real = PlantClient
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=job))
    monkeypatch.setattr(jobs, "PlantClient", lambda config: real(config, transport=transport))
    monkeypatch.setenv("PLANT_API_KEY", "k" * 40)
    outcome = CliRunner().invoke(cli, ["jobs", "show", job["id"]])
    assert isinstance(outcome.exception, SystemExit) and outcome.exit_code == 1, repr(outcome.exception)
    assert len(outcome.stderr.splitlines()) == 1 and "is PLANT_URL a Plant API?" in outcome.stderr, outcome.stderr


def test_jobs_show_on_a_job_with_only_the_members_every_job_has_shows_it() -> None:
    """It read attempts, created_at and params unchecked: a KeyError's traceback."""
    lines = describe_job({"id": "j", "kind": "audit.run", "status": "running", "progress": {"done": 1}})
    assert "attempts  -" in lines and "created   -" in lines
