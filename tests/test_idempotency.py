"""Idempotency-Key on job-creating POSTs, against the real database."""

import threading

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.jobs import Job

SLEEP = "/api/v1/diagnostics/sleep"


def _post(client, key, body=None):
    return client.post(SLEEP, json=body or {"seconds": 0, "steps": 1}, headers={"Idempotency-Key": key})


def test_same_key_same_payload_returns_the_original_job(client) -> None:
    first, second = _post(client, "k-1"), _post(client, "k-1")
    assert first.status_code == second.status_code == 202
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert second.headers["Location"] == first.headers["Location"]


def test_same_key_different_payload_is_422(client) -> None:
    _post(client, "k-2")
    response = _post(client, "k-2", {"seconds": 1, "steps": 1})
    assert response.status_code == 422
    assert response.get_json()["type"] == "/problems/idempotency-key-reused"


def test_keys_are_scoped_per_api_key(app, client) -> None:
    other = client.post("/api/v1/api-keys", json={"name": "other", "scopes": ["write"]}).get_json()["key"]
    second_client = app.test_client()
    second_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {other}"
    assert _post(client, "shared").get_json()["id"] != _post(second_client, "shared").get_json()["id"]


def test_fifty_concurrent_duplicates_make_exactly_one_job(app, admin_key, engine) -> None:
    barrier, ids = threading.Barrier(50), []

    def submit() -> None:
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
        barrier.wait()
        response = _post(c, "burst")
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 50 and len(set(ids)) == 1
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_an_expired_key_starts_a_new_job(client, engine) -> None:
    first = _post(client, "k-exp").get_json()["id"]
    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
    assert _post(client, "k-exp").get_json()["id"] != first


def test_a_bad_key_is_422(client) -> None:
    assert _post(client, "x" * 256).status_code == 422
