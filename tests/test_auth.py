"""API keys: bearer auth, scopes, admin-only management, instant revocation, limits."""

import datetime as dt
import hashlib
import json

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models.api_keys import ApiKey
from models.canonical import rfc3339_utc

API = "/api/v1"


@pytest.fixture
def anonymous(app, admin_key):
    return app.test_client()


def _as(app, key):
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return c


def _key(client, *scopes) -> str:
    response = client.post(f"{API}/api-keys", json={"name": f"key {'+'.join(scopes)}", "scopes": list(scopes)})
    assert response.status_code == 201
    return response.get_json()["key"]


def test_every_api_route_needs_a_key_but_health_and_docs_do_not(anonymous) -> None:
    for path in ("/jobs", "/agents", "/genesis/skills", "/rules", "/signing-keys", "/audit/runs"):
        response = anonymous.get(API + path)
        assert response.status_code == 401, path
        assert response.mimetype == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.post(f"{API}/diagnostics/sleep", json={"seconds": 0}).status_code == 401
    for path in ("/health", "/openapi.json", "/docs"):
        assert anonymous.get(path).status_code in (200, 302, 503), path


PUBLIC_ROUTES = {"/", "/docs", "/health", "/metrics", "/oauth2-redirect.html", "/openapi.json", "/static/<path:filename>",
                 "/swagger", "/swagger/<path:filename>"}


def test_the_routes_outside_api_are_exactly_the_public_ones(app, anonymous) -> None:
    """Only ``/api/`` takes a key (web/auth.py), so every route outside it is public: these,
    as README and docs/guarantees.md list them; a new one must be listed there too."""
    assert {rule.rule for rule in app.url_map.iter_rules() if not rule.rule.startswith("/api/")} == PUBLIC_ROUTES
    for path in ("/", "/swagger", "/swagger/css/swagger-ui.css", "/oauth2-redirect.html"):
        assert anonymous.get(path).status_code == 200, path  # flask-openapi3's pages for the docs
    assert anonymous.get("/static/anything.css").status_code == 404  # routed, but no static folder: serves nothing


def test_unknown_or_malformed_keys_are_401(app, admin_key) -> None:
    assert _as(app, "plant_not-a-real-key").get(f"{API}/jobs").status_code == 401
    c = app.test_client()
    assert c.get(f"{API}/jobs", headers={"Authorization": f"Basic {admin_key}"}).status_code == 401


def test_read_key_reads_but_cannot_write(app, client) -> None:
    reader = _as(app, _key(client, "read"))
    assert reader.get(f"{API}/jobs").status_code == 200
    for method, path, body in [("post", "/diagnostics/sleep", {"seconds": 0}), ("patch", "/agents/00000000-0000-0000-0000-000000000000", {})]:
        response = getattr(reader, method)(API + path, json=body)
        assert response.status_code == 403 and response.mimetype == "application/problem+json"
    writer = _as(app, _key(client, "write"))
    assert writer.post(f"{API}/diagnostics/sleep", json={"seconds": 0}).status_code == 202
    assert writer.get(f"{API}/jobs").status_code == 200


def test_key_management_is_admin_only(app, client) -> None:
    writer = _as(app, _key(client, "write"))
    assert writer.get(f"{API}/api-keys").status_code == 403
    assert writer.post(f"{API}/api-keys", json={"name": "x", "scopes": ["admin"]}).status_code == 403
    listed = client.get(f"{API}/api-keys").get_json()["items"]
    assert {k["name"] for k in listed} >= {"test-admin", "key write"}
    assert all("key" not in k for k in listed)


def test_keys_are_stored_only_as_hashes(client, engine) -> None:
    plaintext = _key(client, "read")
    with Session(engine) as session:
        stored = session.scalars(select(ApiKey)).all()
        assert all(plaintext.encode() not in bytes(k.key_hash) for k in stored)
        assert hashlib.sha256(plaintext.encode()).digest() in {bytes(k.key_hash) for k in stored}


def test_a_revoked_key_stops_working_at_once(app, client) -> None:
    created = client.post(f"{API}/api-keys", json={"name": "temp", "scopes": ["read"]}).get_json()
    temp = _as(app, created["key"])
    assert temp.get(f"{API}/jobs").status_code == 200
    revoked = client.delete(f"{API}/api-keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"]
    assert temp.get(f"{API}/jobs").status_code == 401


def test_a_key_revoked_during_a_long_poll_gets_401_not_what_was_written_after(app, client, engine, monkeypatch) -> None:
    """``GET /jobs/{id}?wait=N`` looked the key up once, then served for up to 30 s what was
    written after the key's revocation. A key still live gets the job as before."""
    import threading

    from models.job_lifecycle import create_job
    from web.api import jobs as jobs_views

    with Session(engine) as session, session.begin():  # queued, never published: nothing runs it
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id
    revoked, live = (client.post(f"{API}/api-keys", json={"name": name, "scopes": ["read"]}).get_json()
                     for name in ("revoked", "live"))
    polling: set[int] = set()
    both_polling = threading.Event()
    between_reads = jobs_views.close_db_session

    def note_the_poll() -> None:  # called between a long poll's reads
        polling.add(threading.get_ident())
        if len(polling) == 2:
            both_polling.set()
        between_reads()

    monkeypatch.setattr(jobs_views, "close_db_session", note_the_poll)
    answers = {}

    def long_poll(key) -> None:
        answers[key["name"]] = _as(app, key["key"]).get(f"{API}/jobs/{job_id}", query_string={"wait": 30})

    threads = [threading.Thread(target=long_poll, args=(key,)) for key in (revoked, live)]
    for thread in threads:
        thread.start()
    assert both_polling.wait(timeout=30)
    assert client.delete(f"{API}/api-keys/{revoked['id']}").status_code == 200
    assert client.post(f"{API}/jobs/{job_id}/cancel").get_json()["status"] == "cancelled"
    for thread in threads:
        thread.join(timeout=60)
    assert answers["revoked"].status_code == 401 and answers["revoked"].mimetype == "application/problem+json"
    assert "cancelled" not in answers["revoked"].get_data(as_text=True)
    assert answers["live"].status_code == 200 and answers["live"].get_json()["status"] == "cancelled"


def test_bad_key_requests_are_422(client) -> None:
    assert client.post(f"{API}/api-keys", json={"name": "x", "scopes": ["root"]}).status_code == 422
    assert client.post(f"{API}/api-keys", json={"name": "", "scopes": ["read"]}).status_code == 422
    assert client.delete(f"{API}/api-keys/00000000-0000-0000-0000-000000000000").status_code == 404


def test_writes_are_attributed_to_the_key(app, client, committed_steward) -> None:
    key = client.post(f"{API}/api-keys", json={"name": "author", "scopes": ["write"]}).get_json()
    author = _as(app, key["key"])
    industry = author.post(f"{API}/genesis/industries", json={"name": "Attributed", "code": "ATR",
                                                             "governance_agent_id": str(committed_steward)}).get_json()
    history = client.get(f"{API}/genesis/industries/{industry['id']}/history").get_json()["items"]
    assert history[0]["actor"] == f"api-key:{key['id']}"


def test_an_oversized_body_is_413(client, app) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = client.post(f"{API}/diagnostics/sleep", data=b"{" + b" " * limit + b"}", content_type="application/json")
    assert response.status_code == 413 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == 413 and problem["max_request_bytes"] == limit
    assert f"{limit} bytes" in problem["detail"] and "PLANT_MAX_REQUEST_BYTES" in problem["detail"]


def test_cors_is_closed_by_default(client) -> None:
    response = client.options(f"{API}/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in client.get(f"{API}/jobs", headers={"Origin": "https://evil.example"}).headers


def test_strict_json_types(client) -> None:
    assert client.post(f"{API}/diagnostics/sleep", json={"seconds": "1"}).status_code == 422
    assert client.post(f"{API}/diagnostics/sleep", json={"seconds": 1, "steps": "2"}).status_code == 422
    assert client.post(f"{API}/diagnostics/sleep", json={"seconds": 1, "steps": 2.5}).status_code == 422


def test_a_key_listing_never_shows_a_short_configured_admin_key_whole(client, engine) -> None:
    """The listing showed 12 characters of every key: all of ``change-me``, the example
    PLANT_ADMIN_API_KEY (helper-67), which an earlier release ensured and a database may
    still hold. A key Plant made still shows ``plant_`` and 6 more."""
    from models.api_keys import create_api_key

    with Session(engine) as session, session.begin():
        create_api_key(session, name="bootstrap-admin", scopes=["admin"], plaintext="change-me")
    listed = client.get("/api/v1/api-keys")
    assert listed.status_code == 200 and "change-me" not in listed.get_data(as_text=True)
    prefixes = {key["name"]: key["key_prefix"] for key in listed.get_json()["items"]}
    assert prefixes["bootstrap-admin"] == "ch" and any(len(p) == 12 and p.startswith("plant_") for p in prefixes.values())


def test_two_deploys_configuring_different_admin_keys_at_once_leave_one_of_them_live(engine, clean_db) -> None:
    """Each ``plant db upgrade`` inserts its configured key and revokes the other live keys of
    the bootstrap name. Two at once with different keys (a rotation rolled out while an old
    revision still starts) each missed the other's uncommitted row: both stayed live, and the
    rotated-away key kept working."""
    import threading

    from models.api_keys import ensure_admin_key, hash_key
    from tests.conftest import wait_for

    first, second = "plant_first_" + "a" * 32, "plant_second_" + "b" * 32
    outcome: dict[str, object] = {}

    def deploy_second() -> None:
        try:
            with Session(engine) as session, session.begin():
                outcome["second"] = ensure_admin_key(session, plaintext=second)
        except Exception as exc:  # reported below, not lost in the thread
            outcome["second"] = exc

    with Session(engine) as session, session.begin():
        assert ensure_admin_key(session, plaintext=first) == "created"
        racing = threading.Thread(target=deploy_second)
        racing.start()
        wait_for(lambda: "second" in outcome or _waiting_on_a_lock(engine), what="the second deploy to run or wait")
    racing.join(timeout=30)
    assert outcome["second"] == "created"
    with engine.connect() as connection:
        live = connection.scalars(text("SELECT key_hash FROM api_keys WHERE name = 'bootstrap-admin' AND revoked_at IS NULL")).all()
    assert [bytes(h) for h in live] == [hash_key(second)]  # the one committed last took the other's place


def _waiting_on_a_lock(engine) -> bool:
    with engine.connect() as connection:
        return bool(connection.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")))


@pytest.mark.parametrize("configured", ["change-me", "x" * 31, "plant_CHANGE-ME_" + "a" * 40])
def test_a_configured_admin_key_that_is_short_or_the_placeholder_is_refused(db_session, configured) -> None:
    """``.env.example``'s ``PLANT_ADMIN_API_KEY=change-me`` became a live admin key: anyone who
    read the example held it."""
    from models.api_keys import ensure_admin_key
    from models.errors import InvalidInput

    with pytest.raises(InvalidInput, match="PLANT_ADMIN_API_KEY") as refused:
        ensure_admin_key(db_session, plaintext=configured)
    assert configured == "change-me" or configured not in refused.value.detail  # the key itself is not echoed
    assert db_session.scalars(select(ApiKey)).all() == []
    assert ensure_admin_key(db_session, plaintext="y" * 32) == "created"  # 32 characters of anything else will do


def test_a_blank_api_key_is_refused_not_replaced_by_one_nobody_holds(db_session) -> None:
    from models.api_keys import create_api_key
    from models.errors import InvalidInput

    with pytest.raises(InvalidInput):
        create_api_key(db_session, name="blank", scopes=["admin"], plaintext=" ")
    assert db_session.scalars(select(ApiKey).where(ApiKey.name == "blank")).all() == []


def _key_row(engine, key_id: str) -> dict:
    with engine.connect() as connection:
        return dict(connection.execute(text("SELECT expires_at, last_used_at, now() AS now FROM api_keys WHERE id = :id"),
                                       {"id": key_id}).mappings().one())


def test_a_key_made_to_expire_works_until_then_and_is_401_saying_so_after(app, client, engine) -> None:
    created = client.post(f"{API}/api-keys", json={"name": "expiring", "scopes": ["read"], "expires_in_days": 30}).get_json()
    row = _key_row(engine, created["id"])
    assert abs((row["expires_at"] - row["now"]) - dt.timedelta(days=30)) < dt.timedelta(minutes=1)
    assert created["expires_at"] == rfc3339_utc(row["expires_at"])
    expiring = _as(app, created["key"])
    assert expiring.get(f"{API}/jobs").status_code == 200
    with engine.begin() as connection:  # the clock passes its expiry
        connection.execute(text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :id"),
                           {"id": created["id"]})
    refused = expiring.get(f"{API}/jobs")
    assert refused.status_code == 401 and refused.mimetype == "application/problem+json"
    assert "expired at" in refused.get_json()["detail"]
    listed = {k["id"]: k for k in client.get(f"{API}/api-keys").get_json()["items"]}
    assert listed[created["id"]]["expires_at"] is not None and listed[created["id"]]["revoked_at"] is None
    assert client.post(f"{API}/api-keys", json={"name": "forever", "scopes": ["read"]}).get_json()["expires_at"] is None


@pytest.mark.parametrize("days", [0, -1, 3651, "30", True, 1.5])
def test_an_expiry_out_of_range_or_not_an_integer_is_422(client, days) -> None:
    response = client.post(f"{API}/api-keys", json={"name": "bad expiry", "scopes": ["read"], "expires_in_days": days})
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert [e["field"] for e in response.get_json()["errors"]] == ["expires_in_days"]


def test_a_key_s_use_is_recorded_once_an_hour_whatever_the_request_s_transaction_does(app, client, engine, committed_steward) -> None:
    """A read's Session is rolled back: the use is written after the answer, in autocommit,
    so it stays; within the hour after it, requests write nothing."""
    created = client.post(f"{API}/api-keys", json={"name": "used", "scopes": ["read"]}).get_json()
    assert created["last_used_at"] is None
    used = _as(app, created["key"])
    response = used.get(f"{API}/agents")  # a view reading through a Session, rolled back
    assert response.status_code == 200
    response.close()
    first = _key_row(engine, created["id"])["last_used_at"]
    assert first is not None
    with engine.begin() as connection:
        connection.execute(text("UPDATE api_keys SET last_used_at = last_used_at - interval '59 minutes' WHERE id = :id"),
                           {"id": created["id"]})
    used.get(f"{API}/jobs").close()
    assert _key_row(engine, created["id"])["last_used_at"] == first - dt.timedelta(minutes=59)  # within the hour: kept
    with engine.begin() as connection:
        connection.execute(text("UPDATE api_keys SET last_used_at = last_used_at - interval '2 minutes' WHERE id = :id"),
                           {"id": created["id"]})
    used.get(f"{API}/jobs").close()
    assert _key_row(engine, created["id"])["last_used_at"] > first  # over the hour: written again
    listed = {k["id"]: k for k in client.get(f"{API}/api-keys").get_json()["items"]}
    assert listed[created["id"]]["last_used_at"] is not None


def test_a_key_cannot_be_created_under_the_bootstrap_admin_s_name(client) -> None:
    """A new configured admin key revokes the live admin keys named `bootstrap-admin` (README):
    one an admin created through the API under that name was revoked at the next deploy that
    rotated the configured key."""
    response = client.post(f"{API}/api-keys", json={"name": "bootstrap-admin", "scopes": ["admin"]})
    assert response.status_code == 422, response.get_json()
    assert "reserved" in json.dumps(response.get_json())
    assert client.post(f"{API}/api-keys", json={"name": "bootstrap-admin 2", "scopes": ["admin"]}).status_code == 201
