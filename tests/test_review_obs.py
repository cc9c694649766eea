"""Review of observability and health (review-obs): each test is one finding's proof."""

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
