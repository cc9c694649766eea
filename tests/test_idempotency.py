"""Idempotency-Key on job-creating POSTs, against the real database."""

import datetime as dt
import threading

from sqlalchemy import event, func, select, text, update
from sqlalchemy.orm import Session

from models.idempotency import IdempotencyKey, claim_key, purge_expired_keys
from models.job_lifecycle import create_job
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


def test_a_key_purged_between_the_conflict_and_its_read_is_claimed_anew(engine, clean_db) -> None:
    """The key row that made the INSERT conflict expires and beat purges it before the
    SELECT that reads it: the claim is made again and succeeds, instead of a 500."""
    fingerprint = b"\x01" * 32
    with Session(engine) as session, session.begin():
        job = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1})
        session.add(IdempotencyKey(owner="o", key="k", request_hash=fingerprint, job_id=job.id,
                                   expires_at=session.scalar(select(text("now() + interval '1 hour'")))))
    purged: list[int] = []

    def expire_and_purge_before_the_read(_conn, _cursor, statement: str, *_args) -> None:
        if purged or not statement.lstrip().startswith("SELECT idempotency_keys.request_hash"):
            return
        purged.append(0)  # first: the purge's own statements pass through this hook too
        with Session(engine) as beat, beat.begin():
            beat.execute(update(IdempotencyKey).values(expires_at=func.now() - dt.timedelta(seconds=1)))
            purged[0] = purge_expired_keys(beat)

    event.listen(engine, "before_cursor_execute", expire_and_purge_before_the_read)
    try:
        with Session(engine) as request_session:
            claimed = claim_key(request_session, owner="o", key="k", fingerprint=fingerprint, ttl_seconds=60)
            reserved = request_session.execute(
                select(IdempotencyKey.request_hash, IdempotencyKey.job_id).where(IdempotencyKey.key == "k")).one()
            request_session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", expire_and_purge_before_the_read)
    assert purged == [1], "the race was not staged: the purge did not run between the conflict and the read"
    assert claimed is None  # the caller creates a new job and binds it to the key
    assert bytes(reserved.request_hash) == fingerprint and reserved.job_id is None
