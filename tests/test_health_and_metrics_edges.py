"""Health, metrics and the access log at their edges: a read-only database, a schema behind the
code, a frozen database under a scrape, paths that would break a JSON log line (stop 37's review)."""

from __future__ import annotations

import pytest

from web import create_app


def _read_only(url: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-c%20default_transaction_read_only%3Don"


def test_health_does_not_call_a_read_only_database_up(settings) -> None:
    """A standby, or a database set read-only, answers SELECT 1 but refuses every write."""
    app = create_app(settings.model_copy(update={"database_url": _read_only(settings.database_url)}))
    response = app.test_client().get("/health")
    body = response.get_json()
    assert body["checks"]["database"]["status"] == "down", body
    assert "read-only" in body["checks"]["database"]["error"]
    assert response.status_code == 503


def test_a_write_to_a_read_only_database_is_503_problem_not_500(settings, admin_key) -> None:
    app = create_app(settings.model_copy(update={"database_url": _read_only(settings.database_url)}))
    response = app.test_client().post("/api/v1/diagnostics/sleep", json={"seconds": 1, "steps": 1},
                                      headers={"Authorization": f"Bearer {admin_key}"})
    print(response.status_code, response.get_data(as_text=True)[:400])
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize("path", ["/x\\", "/x\n{}", '/x\\", "api_key_id": "forged'])
def test_every_access_log_line_is_json_whatever_the_path(path, tmp_path) -> None:
    """gunicorn's access log (``--access-logfile -``) is documented as JSON lines; gunicorn
    escapes only a value's quotes, and the path it logs is percent-decoded."""
    import datetime
    import json
    import runpy

    from gunicorn.config import Config

    from tests.conftest import REPO_ROOT

    conf = runpy.run_path(str(REPO_ROOT / "gunicorn.conf.py"))
    cfg = Config()
    cfg.set("access_log_format", conf["access_log_format"])
    cfg.set("accesslog", str(tmp_path / "access.log"))
    logger = conf["logger_class"](cfg)

    class Response:
        status, status_code, response_length, sent, headers = "404 NOT FOUND", 404, 9, 9, [("X-Request-ID", "r1")]

    class Request:
        headers, method, version, path, query, uri = [], "GET", (1, 1), "/", "", "/"

    environ = {"PATH_INFO": path, "RAW_URI": path, "QUERY_STRING": "", "REMOTE_ADDR": "10.0.0.7",
               "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1"}
    logger.access(Response(), Request(), environ, datetime.timedelta(milliseconds=3))
    for handler in logger.access_log.handlers:
        handler.flush()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["path"] == path and record["request_id"] == "r1" and "api_key_id" not in record


class FreezingProxy:
    """A TCP relay to a real server that can freeze: it keeps every socket open but relays
    nothing more, as a frozen server (or a network that drops packets) does."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket
        import threading

        self.frozen = threading.Event()
        self._target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source, sink) -> None:  # noqa: ANN001
        import time

        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set():
                time.sleep(0.05)
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.frozen.clear()
        for s in [self._listener, *self._sockets]:
            s.close()


def test_a_scrape_answers_in_time_when_the_database_freezes(settings) -> None:
    """/health bounds its wait on a frozen database (its own pool, a thread, a deadline);
    /metrics' database reading has none, and the server's statement_timeout cannot run on a
    frozen server, so the scrape (and every scrape queued behind its lock) waits until TCP
    gives up: no plant_metrics_source_up 0, no request metrics, a thread held per scrape."""
    import threading
    import time

    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    proxy = FreezingProxy(url.host, url.port)
    app = create_app(settings.model_copy(update={
        "database_url": url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        "metrics_state_max_age_seconds": 0}))
    try:
        assert "plant_metrics_source_up{source=\"database\"} 1.0" in app.test_client().get("/metrics").get_data(as_text=True)
        proxy.frozen.set()
        answered: list[str] = []
        scrape = threading.Thread(target=lambda: answered.append(app.test_client().get("/metrics").get_data(as_text=True)),
                                  daemon=True)
        started = time.monotonic()
        scrape.start()
        scrape.join(12)  # Prometheus' scrape_timeout is 10 s by default
        assert answered, f"no answer after {time.monotonic() - started:.0f} s"
        assert "plant_metrics_source_up{source=\"database\"} 0.0" in answered[0]
    finally:
        proxy.close()


def test_health_does_not_call_a_schema_behind_the_code_s_head_ok(settings, make_database) -> None:
    """An API started before its migration ran (a Cloud Run revision applied without the
    migrate job first) passes its startup probe on /health and takes traffic, while every
    query that touches a newer column answers 500."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from models.migrate import alembic_config

    url = make_database("review_obs_behind")
    script = ScriptDirectory.from_config(alembic_config(url))
    command.upgrade(alembic_config(url), script.get_revision(script.get_current_head()).down_revision)
    app = create_app(settings.model_copy(update={"database_url": url}))
    response = app.test_client().get("/health")
    body = response.get_json()
    assert body["checks"]["database"]["status"] == "down", body
    assert response.status_code == 503


def test_every_connection_over_tcp_probes_its_peer_so_a_vanished_server_is_found_within_a_minute(settings) -> None:
    """Without TCP keepalives, a connection whose server host vanished (no FIN, no RST) was
    waited on for the kernel's default of about two hours: /health's two check threads stuck on
    such connections kept it "down" after the database came back (stop 37's observability review)."""
    import os
    import socket

    from models.db import make_engine

    engine = make_engine(settings, pool_size=1)
    try:
        with engine.connect() as connection:
            fileno = os.dup(connection.connection.driver_connection.fileno())
    finally:
        engine.dispose()
    with socket.socket(fileno=fileno) as peer:
        if peer.family not in (socket.AF_INET, socket.AF_INET6):
            pytest.skip("the test database is reached over a Unix socket, where keepalives do not apply")
        assert peer.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert (peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)) == (30, 10, 3)
        # Probes go out only while nothing sent is unacknowledged: data sent on a connection whose
        # host vanished is bounded by TCP_USER_TIMEOUT instead (libpq's tcp_user_timeout).
        assert peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000


def test_a_database_reading_slower_than_a_scrape_s_deadline_is_served_by_the_next_scrape(settings, monkeypatch) -> None:
    """The 5 s deadline covers the whole reading, several statements: on a database that takes
    longer, every scrape gave up, started a reading again, and threw its result away, so the
    counts never came out (stop 37's last review). The next scrape serves the late one."""
    import threading

    import web.metrics as metrics

    app = create_app(settings.model_copy(update={"metrics_state_max_age_seconds": 0}))
    collector = app.extensions[metrics.STATE_COLLECTOR_KEY]
    slow_reading, readings = collector._read_database, []
    finished, release = threading.Event(), threading.Event()

    def slower_than_the_deadline():
        readings.append(1)
        release.wait(30)
        try:
            return slow_reading()
        finally:
            finished.set()

    monkeypatch.setattr(collector, "_read_database", slower_than_the_deadline)
    monkeypatch.setattr(metrics, "SCRAPE_DATABASE_DEADLINE_SECONDS", 0.2)
    first = app.test_client().get("/metrics").get_data(as_text=True)
    assert "plant_metrics_source_up{source=\"database\"} 0.0" in first
    release.set()
    assert finished.wait(30)
    second = app.test_client().get("/metrics").get_data(as_text=True)
    assert "plant_metrics_source_up{source=\"database\"} 1.0" in second and "plant_jobs" in second
    assert len(readings) == 1  # the late reading was served, not started again
