"""Access control and the job API (reviewed by helper-145): long polls bounded per process, NUL refusals named, key names escaped."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.orm import Session

from models.job_lifecycle import create_job
from tests.conftest import gunicorn_serving, lock_waiters, wait_for

API = "/api/v1"


def _as(app, key: str):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def _new_key(client, name: str, *scopes: str) -> dict:
    response = client.post(f"{API}/api-keys", json={"name": name, "scopes": list(scopes)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


@pytest.fixture
def small_gunicorn(settings, tmp_path: Path) -> Iterator[str]:
    """The API under gunicorn as configured (gunicorn.conf.py), one process of two threads."""
    with gunicorn_serving(settings, tmp_path / "gunicorn.log", processes=1, threads=2,
                          metrics_dir=tmp_path / "prometheus") as base:
        yield base


def test_long_polls_from_one_read_key_do_not_take_every_thread_of_the_api(small_gunicorn, app, client, engine) -> None:
    """A long poll holds a gunicorn thread for up to 30 s, and nothing bounded how many ran at
    once: as many as the API has threads (any read key) left none for other requests, /health
    included (helper-145). A process now holds at most PLANT_LONG_POLLS_AT_ONCE (gunicorn: half
    its threads); one more answers at once."""
    reader = _new_key(client, "poller", "read")["key"]
    with Session(engine) as session, session.begin():  # queued, never published: it stays queued
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id
    polls: list[threading.Thread] = []
    with engine.connect() as blocker:
        blocker.begin()
        blocker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))  # holds each poll at its first read
        for _ in range(2):  # one per thread of the API
            poll = threading.Thread(target=requests.get, args=(f"{small_gunicorn}{API}/jobs/{job_id}",),
                                    kwargs={"params": {"wait": 12}, "headers": {"Authorization": f"Bearer {reader}"},
                                            "timeout": 60})
            poll.start()
            polls.append(poll)
        wait_for(lambda: lock_waiters(engine) == 2, timeout=30, what="both long polls to be inside the API")
        blocker.rollback()
    started = time.monotonic()
    try:
        health = requests.get(f"{small_gunicorn}/health", timeout=6)
        answered = health.status_code in (200, 503)
    except requests.Timeout:
        answered = False
    waited = time.monotonic() - started
    for poll in polls:
        poll.join(timeout=60)
    assert answered, f"/health got no answer in {waited:.1f} s while two long polls (wait=12) ran"


def test_a_nul_in_a_key_name_or_a_job_kind_filter_is_422_naming_the_field(client) -> None:
    """README, Errors: a 422 has one ``errors`` entry per bad field. A NUL (which PostgreSQL
    cannot store) in a key's name or the jobs listing's ``kind`` reached the database, whose
    refusal names nothing: ``"a value was refused by the database"`` and no ``errors``."""
    created = client.post(f"{API}/api-keys", json={"name": "ops\u0000key", "scopes": ["read"]})
    listed = client.get(f"{API}/jobs", query_string={"kind": "diagnostics.sleep\u0000"})
    for response, field in ((created, "name"), (listed, "kind")):
        assert response.status_code == 422 and response.mimetype == "application/problem+json"
        assert [e["field"] for e in response.get_json().get("errors", [])] == [field], response.get_json()


EVIL = "ops\x1b[2K\r\x1b]0;owned\x07"  # erase the line, return, retitle the terminal


def test_api_keys_create_and_revoke_show_the_key_s_name_with_control_codes_escaped(app, client, admin_key, engine,
                                                                                    monkeypatch) -> None:
    """README: text from the server (names included) is shown with control codes escaped. The
    listing escaped a key's name; ``create`` and ``revoke`` printed it raw. The API now refuses
    such a name (``models.api_keys.key_name_problem``): ``create`` prints the refusal, and a key
    named so before (made here below the API) is revoked with its name escaped."""
    import httpx
    from click.testing import CliRunner

    import cli.jobs as cli_jobs
    from cli.client import PlantClient
    from cli.main import cli
    from models.api_keys import create_api_key

    monkeypatch.setenv("PLANT_URL", "http://plant.test")
    monkeypatch.setenv("PLANT_API_KEY", admin_key)
    monkeypatch.setattr(cli_jobs, "PlantClient", lambda config: PlantClient(config, transport=httpx.WSGITransport(app=app)))
    created = CliRunner().invoke(cli, ["api-keys", "create", EVIL])
    assert created.exit_code == 1 and "422" in created.output, created.output
    with Session(engine) as session, session.begin():
        key_id = str(create_api_key(session, name=EVIL, scopes=["read"]).key.id)
    revoked = CliRunner().invoke(cli, ["api-keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    assert "ops" in revoked.stdout
    for result in (created, revoked):
        assert not {"\x1b", "\r", "\x07"} & set(result.output), repr(result.output)


def test_a_long_poll_finding_every_slot_taken_answers_at_once_with_the_job_as_it_is(app, client, engine) -> None:
    from web.services import app_services

    with Session(engine) as session, session.begin():  # queued, never published: no worker takes it
        job = {"id": str(create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id)}
    slots = app_services(app).long_poll_slots
    assert slots is not None
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        started = time.monotonic()
        response = client.get(f"{API}/jobs/{job['id']}", query_string={"wait": 5})
        assert response.status_code == 200 and response.get_json()["status"] == "queued"
        assert time.monotonic() - started < 2.5
    finally:
        for _ in range(taken):
            slots.release()
    assert taken == app_services(app).settings.long_polls_at_once


@pytest.mark.parametrize("path", ["/api/v1//api-keys", "/api/v1//jobs", "//api/v1/jobs"])
def test_a_doubled_slash_is_a_404_problem_not_an_html_redirect(client, path) -> None:
    """Werkzeug merged the slashes with an HTML 308 to the single-slash path, after the scope
    check had judged the doubled one (helper-145: a write key's /api/v1//api-keys passed it as
    'write', then was redirected to a 403). A path Plant has no route for is 404 problem+json."""
    response = client.get(path)
    assert response.status_code == 404, (response.status_code, response.get_data(as_text=True)[:200])
    assert response.mimetype == "application/problem+json"
