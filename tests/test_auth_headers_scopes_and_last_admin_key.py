"""Review of authentication and authorization: every route's scope, what a key lacking it
leaves behind, how the bearer header is read, the last admin key, who a write is attributed
to, and what answers, headers and log lines give away."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from models.api_keys import ADMIN_KEYS_LOCK
from tests.conftest import lock_waiters, wait_for
from web.auth import required_scope

API = "/api/v1"
PROBLEM = "application/problem+json"

# Every route under /api/ and method (but HEAD and OPTIONS, which Flask adds to each) with the
# scope it needs. A new route fails test_every_api_route_needs_the_scope_this_table_names
# until it is named here: its scope is then a decision, not a default.
ROUTE_SCOPES: dict[tuple[str, str], str] = {
    **{(f"{API}/{path}", "GET"): "read" for path in (
        "agents", "agents/<entity_id>", "agents/<entity_id>/history",
        "genesis/industries", "genesis/industries/<entity_id>", "genesis/industries/<entity_id>/history",
        "genesis/job-roles", "genesis/job-roles/<entity_id>", "genesis/job-roles/<entity_id>/history",
        "genesis/skills", "genesis/skills/<entity_id>", "genesis/skills/<entity_id>/history", "genesis/skills/search",
        "teams", "teams/<entity_id>", "teams/<entity_id>/history",
        "audit/export", "audit/runs", "audit/runs/<run_id>", "audit/runs/<run_id>/findings",
        "audit/runs/<run_id>/report.html", "audit/tampering/<entity_id>", "ledger/digest",
        "jobs", "jobs/<job_id>", "rules", "signing-keys")},
    **{(f"{API}/{path}", "POST"): "write" for path in (
        "agents", "genesis/industries", "genesis/job-roles", "genesis/skills", "teams",
        "agents/<entity_id>/assign-team", "agents/assign-teams", "genesis/skills/<entity_id>/certify",
        "audit/run", "diagnostics/sleep", "jobs/<job_id>/cancel")},
    **{(f"{API}/{path}", "PATCH"): "write" for path in (
        "agents/<entity_id>", "genesis/industries/<entity_id>", "genesis/job-roles/<entity_id>",
        "genesis/skills/<entity_id>", "teams/<entity_id>")},
    (f"{API}/api-keys", "GET"): "admin",
    (f"{API}/api-keys", "POST"): "admin",
    (f"{API}/api-keys/<key_id>", "DELETE"): "admin",
}
BELOW = {"write": "read", "admin": "write"}


def _as(app, key: str):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def _key(client, name: str, *scopes: str) -> dict[str, Any]:
    response = client.post(f"{API}/api-keys", json={"name": name, "scopes": list(scopes)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _api_routes(app) -> dict[tuple[str, str], Any]:
    return {(rule.rule, method): rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")
            for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}


def test_every_api_route_needs_the_scope_this_table_names(app) -> None:
    routes = _api_routes(app)
    assert set(routes) == set(ROUTE_SCOPES)
    for (rule, method), scope in ROUTE_SCOPES.items():
        assert required_scope(method, rule) == scope, (method, rule)
        assert required_scope("HEAD", rule) == required_scope("OPTIONS", rule) == ("admin" if scope == "admin" else "read")


def _database_state(engine) -> dict[str, str]:
    """A digest of every table's rows (an API key's ``last_used_at`` left out: a request
    answered records it after the answer, whatever else it did)."""
    with engine.connect() as connection:
        tables = connection.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).all()
        state = {}
        for table in tables:
            rows = (f'(SELECT id, name, scopes, revoked_at, expires_at FROM "{table}")' if table == "api_keys"
                    else f'"{table}"')
            state[table] = connection.scalar(text(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                                                  f"FROM {rows} t"))
    return state


def _broker_state(redis_client) -> dict[str, int]:
    return {key: redis_client.llen(key) for key in redis_client.keys("*") if redis_client.type(key) == b"list"}


def test_a_key_one_scope_short_gets_403_problem_on_every_route_and_changes_nothing(
        app, client, engine, redis_client, committed_steward) -> None:
    """Each route is called by a key one scope below what it needs, with what would otherwise
    act (a real job to cancel, a real key to revoke, a valid body): 403 problem+json naming
    the scope, not 401, and no row or broker message differs afterwards."""
    job = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0, "steps": 1}).get_json()
    victim = _key(client, "victim", "read")
    keys = {"read": _key(client, "reader", "read")["key"], "write": _key(client, "writer", "write")["key"]}
    ids = {"entity_id": str(committed_steward), "job_id": job["id"], "key_id": victim["id"], "run_id": str(uuid.uuid4())}
    bodies = {f"{API}/diagnostics/sleep": {"seconds": 0, "steps": 1},
              f"{API}/api-keys": {"name": "minted", "scopes": ["admin"]},
              f"{API}/agents/<entity_id>": {"description": "changed"}}
    before, queued = _database_state(engine), _broker_state(redis_client)
    for (rule, method), scope in ROUTE_SCOPES.items():
        if scope == "read":
            continue
        path = rule
        for name, value in ids.items():
            path = path.replace(f"<{name}>", value)
        response = _as(app, keys[BELOW[scope]]).open(path, method=method, json=bodies.get(rule, {}))
        assert response.status_code == 403, (method, rule, response.status_code, response.get_data(as_text=True))
        assert response.mimetype == PROBLEM and response.get_json()["type"] == "/problems/forbidden"
        assert f"'{scope}'" in response.get_json()["detail"]
        # RFC 6750 §3.1: the challenge tells a key short of a scope from one not taken at all.
        assert response.headers["WWW-Authenticate"] == f'Bearer realm="plant", error="insufficient_scope", scope="{scope}"'
    assert _database_state(engine) == before
    assert _broker_state(redis_client) == queued
    assert _as(app, victim["key"]).get(f"{API}/rules").status_code == 200  # not revoked


# --- reading the bearer header -------------------------------------------------------------

@pytest.mark.parametrize("header", ["Bearer {key}", "bearer {key}", "BEARER {key}", "Bearer   {key}", "  Bearer {key}  "])
def test_the_bearer_scheme_in_any_case_and_spaces_before_the_key_are_read_as_rfc_9110_allows(app, admin_key,
                                                                                             header) -> None:
    response = app.test_client().get(f"{API}/jobs", headers={"Authorization": header.format(key=admin_key)})
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize(("headers", "query", "detail", "error"), [
    ([("Authorization", "Bearer {key}"), ("Authorization", "Bearer {key}")], {}, "must hold one key", "invalid_request"),
    ([("Authorization", "Bearer {key},Bearer {key}")], {}, "must hold one key", "invalid_request"),
    ([("Authorization", "Bearer {key} {key}")], {}, "must hold one key", "invalid_request"),
    ([("Authorization", "Bearer \t{key}")], {}, "must hold one key", "invalid_request"),
    ([("Authorization", "Basic {key}")], {}, "scheme is not Bearer", None),  # RFC 6750 §3.1: another method
    ([("Authorization", "{key}")], {}, "scheme is not Bearer", None),
    ([("Authorization", "Bearer\t{key}")], {}, "scheme is not Bearer", "invalid_request"),
    ([("Authorization", "Bearer   ")], {}, "no key", "invalid_request"),
    ([], {"access_token": "{key}"}, "never from the query string", "invalid_request"),
    ([("Authorization", "Bearer {key}")], {"api_key": "{key}"}, "never from the query string", "invalid_request"),
    ([("Authorization", "Bearer {key}")], {"API_Key": "{key}"}, "never from the query string", "invalid_request"),
    ([], {}, "send an API key", None),
    ([("Authorization", "Bearer plant_not-a-key")], {}, "unknown or revoked", "invalid_token"),
])
def test_an_authorization_the_api_cannot_read_one_key_from_is_401_saying_why(app, admin_key, headers, query, detail,
                                                                              error) -> None:
    """Two Authorization headers (joined with a comma), a key with a space in it, or a key in
    the query string were hashed and looked up (401 "unknown or revoked", which says nothing
    of what to fix), or, for a key in the query string beside a good header, served: the key
    sat in every proxy's log."""
    response = app.test_client().get(f"{API}/api-keys", headers=[(n, v.format(key=admin_key)) for n, v in headers],
                                     query_string={n: v.format(key=admin_key) for n, v in query.items()})
    assert response.status_code == 401 and response.mimetype == PROBLEM
    problem = response.get_json()
    assert problem["type"] == "/problems/unauthorized" and detail in problem["detail"], problem
    assert admin_key not in response.get_data(as_text=True)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="plant"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)


@pytest.mark.parametrize("configured", ["plant_with a space_" + "a" * 32, "plant_with,a,comma_" + "a" * 32,
                                        "plant_not_ascii_é" + "a" * 32])
def test_a_configured_admin_key_no_header_could_send_is_refused(db_session, configured) -> None:
    """Such a key was ensured. One with a space or a comma worked until the one-key header rule
    (an earlier release read "Bearer a b" as the key "a b"): tests/test_keyed_creates_admin_key_upgrades_and_schemes.py has the upgrade."""
    from models.api_keys import ensure_admin_key
    from models.errors import InvalidInput

    with pytest.raises(InvalidInput, match="PLANT_ADMIN_API_KEY holds a space, a comma") as refused:
        ensure_admin_key(db_session, plaintext=configured)
    assert configured not in refused.value.detail


# --- the last admin key --------------------------------------------------------------------

def _admin_keys_live(engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(text("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL AND 'admin' = ANY(scopes) "
                                      "AND (expires_at IS NULL OR expires_at > now())"))


def test_the_last_live_admin_key_is_not_revoked_unless_that_is_said_to_be_meant(app, client, engine) -> None:
    """Keys are managed only through the API (the CLI too), with an admin key: an admin
    revoking the last one (their own, say) was locked out until a new PLANT_ADMIN_API_KEY
    was deployed."""
    own = client.get(f"{API}/api-keys").get_json()["items"][0]
    refused = client.delete(f"{API}/api-keys/{own['id']}")
    assert refused.status_code == 409 and refused.mimetype == PROBLEM, refused.get_json()
    assert refused.get_json()["type"] == "/problems/last-admin-key" and "leave_no_admin_key" in refused.get_json()["detail"]
    assert client.get(f"{API}/api-keys").status_code == 200  # still live
    with engine.begin() as connection:  # an admin key past its expiry manages nothing: it does not count
        connection.execute(text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :id"),
                           {"id": _key(client, "expired admin", "admin")["id"]})
    assert client.delete(f"{API}/api-keys/{own['id']}").status_code == 409
    other = _key(client, "second admin", "admin")
    assert client.delete(f"{API}/api-keys/{own['id']}").status_code == 200  # another admin key is live
    second = _as(app, other["key"])
    assert second.delete(f"{API}/api-keys/{other['id']}").status_code == 409
    assert second.delete(f"{API}/api-keys/{other['id']}", query_string={"leave_no_admin_key": "true"}).status_code == 200
    assert second.get(f"{API}/api-keys").status_code == 401 and _admin_keys_live(engine) == 0


def test_two_admins_revoking_the_last_two_admin_keys_at_once_leave_one(app, client, engine) -> None:
    """Each revocation saw the other key live (the other's revocation not committed yet):
    both went ahead and no admin key was left."""
    first = client.get(f"{API}/api-keys").get_json()["items"][0]
    second = _key(client, "second admin", "admin")
    answers: dict[str, int] = {}

    def revoke(name: str, key_id: str) -> None:
        answers[name] = client.delete(f"{API}/api-keys/{key_id}").status_code

    with engine.connect() as holder, holder.begin():  # the revocations wait together, then race
        holder.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": ADMIN_KEYS_LOCK})
        threads = [threading.Thread(target=revoke, args=(name, key_id))
                   for name, key_id in (("first", first["id"]), ("second", second["id"]))]
        for thread in threads:
            thread.start()
        wait_for(lambda: lock_waiters(engine) == 2, what="both revocations to wait")
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(answers.values()) == [200, 409]
    assert _admin_keys_live(engine) == 1


def test_the_cli_revokes_the_last_admin_key_only_with_leave_no_admin_key(app, admin_key, engine, monkeypatch,
                                                                          no_server_log_lines) -> None:
    from click.testing import CliRunner
    from werkzeug.serving import make_server

    from cli.main import cli

    with engine.connect() as connection:
        key_id = str(connection.scalar(text("SELECT id FROM api_keys")))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        monkeypatch.setenv("PLANT_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("PLANT_API_KEY", admin_key)
        refused = CliRunner().invoke(cli, ["api-keys", "revoke", key_id])
        assert refused.exit_code == 1 and "409" in refused.stderr and "--leave-no-admin-key" not in refused.stdout
        assert _admin_keys_live(engine) == 1
        revoked = CliRunner().invoke(cli, ["api-keys", "revoke", key_id, "--leave-no-admin-key"])
        assert revoked.exit_code == 0 and "revoked" in revoked.stdout, revoked.stderr
        assert _admin_keys_live(engine) == 0
    finally:
        server.shutdown()
        serving.join(timeout=10)


# --- attribution ---------------------------------------------------------------------------

def test_who_asked_for_a_job_or_cancelled_it_is_the_key_whatever_the_request_says(app, client) -> None:
    writer = _key(client, "writer", "write")
    as_writer = _as(app, writer["key"])
    spoofed = as_writer.post(f"{API}/diagnostics/sleep", json={"seconds": 0, "steps": 1, "requested_by": "api-key:x"})
    assert spoofed.status_code == 422
    job = as_writer.post(f"{API}/diagnostics/sleep", json={"seconds": 60, "steps": 60},  # still going when cancelled
                         headers={"X-Actor": "beat:full-audit", "X-Forwarded-User": "admin", "From": "admin"}).get_json()
    assert job["requested_by"] == f"api-key:{writer['id']}"
    cancelled = as_writer.post(f"{API}/jobs/{job['id']}/cancel", json={"cancelled_by": "api-key:someone-else"})
    assert cancelled.status_code == 200, cancelled.get_json()  # a cancel reads no body
    assert cancelled.get_json()["cancelled_by"] == f"api-key:{writer['id']}"
    assert as_writer.get(f"{API}/jobs/{job['id']}").get_json()["cancelled_by"] == f"api-key:{writer['id']}"


# --- what answers and log lines give away --------------------------------------------------

def _secrets_of(settings, plaintext: str) -> list[str]:
    digest = hashlib.sha256(plaintext.encode()).digest()
    return [plaintext, digest.hex(), base64.b64encode(digest).decode(), base64.urlsafe_b64encode(digest).decode().rstrip("=")]


def test_no_answer_header_or_log_line_holds_a_key_its_hash_or_a_server_secret(app, client, settings, engine,
                                                                                committed_steward, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    other = _key(client, "other", "read")
    revoked = _key(client, "revoked", "write")
    assert client.delete(f"{API}/api-keys/{revoked['id']}").status_code == 200
    signing_key = (settings.data_dir / "keys" / "active.pem").read_text()
    private = "".join(line for line in signing_key.splitlines() if "-----" not in line)
    secrets = [*_secrets_of(settings, other["key"]), *_secrets_of(settings, revoked["key"]),
               settings.database_url, settings.redis_url, private[:40]]
    answers = []
    anonymous = app.test_client()
    for path in ("/health", "/metrics", "/openapi.json", "/", "/swagger", f"{API}/signing-keys", f"{API}/nowhere"):
        answers.append(anonymous.get(path))
    for (rule, method), _ in ROUTE_SCOPES.items():
        if method == "GET" and "<" not in rule:
            answers.append(client.get(rule))
    answers += [client.get(f"{API}/agents/{committed_steward}"), client.get(f"{API}/api-keys/{other['id']}"),
                client.delete(f"{API}/api-keys/{uuid.uuid4()}"), _as(app, revoked["key"]).get(f"{API}/jobs"),
                app.test_client().get(f"{API}/jobs", query_string={"access_token": other["key"]})]
    for response in answers:
        seen = response.get_data(as_text=True) + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        for secret in secrets:
            assert secret not in seen, (response.request.path, secret[:12])
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    for secret in secrets:
        assert secret not in logged, secret[:12]


def test_the_public_health_check_names_no_worker_host(app, worker) -> None:
    """/health, public, listed every worker's node name (PREFIX@hostname: the containers' or
    machines' hostnames) under workers and per queue; it counts them."""
    import socket

    anonymous = app.test_client()
    body = wait_for(lambda: (b := anonymous.get("/health").get_json())["checks"]["workers"].get("count") and b,
                    timeout=30, interval=0.2, what="a worker to answer")
    assert f"@{socket.gethostname()}" not in json.dumps(body)  # a node name is PREFIX@hostname
    assert body["checks"]["workers"]["queues"]["default"] >= 1
