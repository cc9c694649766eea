"""The job HTTP API against the real database and broker (no worker running here)."""

import time
import uuid

import pytest
import redis
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from models.db import make_engine
from models.jobs import Job
from web import create_app
from web.schemas import JobListQuery
from tests.conftest import recorded_statements
from web.services import app_services


@pytest.fixture
def client(quiet_client):
    """These tests look at jobs that stay queued: a worker started by another test must not run them."""
    return quiet_client

JOB_FIELDS = {"id", "kind", "status", "params", "progress", "attempts", "result", "error", "requested_by",
              "cancelled_by", "created_at", "started_at", "finished_at"}


def _start(client, seconds: float = 0, steps: int = 1):
    return client.post("/api/v1/diagnostics/sleep", json={"seconds": seconds, "steps": steps})


def test_starting_work_answers_202_with_location_retry_after_and_the_job(client) -> None:
    response = _start(client, 1.5, 3)
    assert response.status_code == 202
    job = response.get_json()
    assert set(job) == JOB_FIELDS
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert int(response.headers["Retry-After"]) >= 0
    assert job["kind"] == "diagnostics.sleep"
    assert job["status"] == "queued"
    assert job["params"] == {"seconds": 1.5, "steps": 3}
    assert job["progress"] == {"done": 0, "total": None, "message": None}
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert job["requested_by"].startswith("api-key:")  # the key that asked (tests/test_e2e_work.py names it)


def test_a_published_job_is_out_of_the_outbox_and_its_message_is_in_the_queue(client, settings, redis_url) -> None:
    quiet = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")
    quiet.delete("default")
    job_id = _start(client).get_json()["id"]
    with Session(make_engine(settings)) as session:
        assert session.get(Job, uuid.UUID(job_id)).enqueued_at is not None
    assert job_id.encode() in b"".join(quiet.lrange("default", 0, -1))


def test_get_returns_the_same_resource(client) -> None:
    job = _start(client).get_json()
    response = client.get(f"/api/v1/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.get_json() == job


def test_unknown_job_is_404_problem(client) -> None:
    response = client.get(f"/api/v1/jobs/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 404


def test_malformed_job_id_is_422_naming_the_field(client) -> None:
    response = client.get("/api/v1/jobs/not-a-uuid")
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["job_id"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"seconds": -1}, {"seconds"}),
        ({"seconds": 3601}, {"seconds"}),
        ({"seconds": 3600}, {"seconds"}),  # the soft time limit would end it: it could only time out
        ({"seconds": 3599.5}, {"seconds"}),
        ({"seconds": 1, "steps": 0}, {"steps"}),
        ({"steps": 2}, {"seconds"}),
        ({"seconds": "soon", "steps": "many", "extra": 1}, {"seconds", "steps", "extra"}),
    ],
)
def test_bad_sleep_input_is_422_with_one_entry_per_field(client, body, fields) -> None:
    response = client.post("/api/v1/diagnostics/sleep", json=body)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert {e["field"] for e in response.get_json()["errors"]} == fields


def test_non_json_body_is_a_problem_not_a_crash(client) -> None:
    response = client.post("/api/v1/diagnostics/sleep", data="{", content_type="application/json")
    assert response.status_code in (400, 422)
    assert response.mimetype == "application/problem+json"


def test_etag_and_if_none_match(client) -> None:
    job = _start(client).get_json()
    first = client.get(f"/api/v1/jobs/{job['id']}")
    etag = first.headers["ETag"]
    again = client.get(f"/api/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    client.post(f"/api/v1/jobs/{job['id']}/cancel")
    changed = client.get(f"/api/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_list_paginates_with_an_opaque_cursor_and_filters(client) -> None:
    ids = {_start(client).get_json()["id"] for _ in range(5)}
    seen, token = [], None
    while True:
        query = {"page_size": 2, "kind": "diagnostics.sleep", **({"page_token": token} if token else {})}
        page = client.get("/api/v1/jobs", query_string=query).get_json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert sorted(seen) == sorted(ids)
    assert client.get("/api/v1/jobs", query_string={"status": "running"}).get_json()["items"] == []
    queued = client.get("/api/v1/jobs", query_string={"status": "queued", "page_size": 10}).get_json()
    assert {j["id"] for j in queued["items"]} == ids and queued["next_page_token"] is None


@pytest.mark.parametrize(
    "query", [{"status": "sleeping"}, {"page_size": 0}, {"page_size": 501}, {"page_token": "%%%"}]
)
def test_list_rejects_bad_queries(client, query) -> None:
    response = client.get("/api/v1/jobs", query_string=query)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"


def test_cancel_a_queued_job_at_once_and_twice_is_harmless(client) -> None:
    job = _start(client).get_json()
    first = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert first.status_code == 200
    assert first.get_json()["status"] == "cancelled"
    assert first.get_json()["finished_at"] is not None
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").get_json()["status"] == "cancelled"


def test_a_cancel_names_the_key_that_asked_first(client, engine) -> None:
    """Who cancelled a job (an audit, say) was only in the request's log line; the job names the
    key now, queued (cancelled at once) or running (asked to stop), and a later request by
    another key does not take it over."""
    from models.job_lifecycle import claim_job

    other = client.post("/api/v1/api-keys", json={"name": "second canceller", "scopes": ["read", "write"]}).get_json()
    by_other = {"HTTP_AUTHORIZATION": f"Bearer {other['key']}"}
    me = _start(client).get_json()["requested_by"]
    queued, running = _start(client).get_json(), _start(client).get_json()
    assert queued["cancelled_by"] is None
    with Session(engine) as session, session.begin():
        claim_job(session, job_id=uuid.UUID(running["id"]), worker="w", lease_seconds=60)
    for job in (queued, running):
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").get_json()["cancelled_by"] == me
        again = client.post(f"/api/v1/jobs/{job['id']}/cancel", environ_base=by_other).get_json()
        assert again["cancelled_by"] == me, again
    assert client.get(f"/api/v1/jobs/{running['id']}").get_json()["status"] == "running"  # asked; stops at a checkpoint
    assert f"api-key:{other['id']}" != me


def test_cancelling_a_finished_job_is_409_naming_how_it_ended(client, engine) -> None:
    from models.job_lifecycle import claim_job, finish_job
    from models.jobs import JobStatus

    job = _start(client).get_json()
    with Session(engine) as session, session.begin():
        claim = claim_job(session, job_id=uuid.UUID(job["id"]), worker="w", lease_seconds=60)
        finish_job(session, claim=claim, status=JobStatus.SUCCEEDED, result={})
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    problem = response.get_json()
    assert response.status_code == 409 and response.mimetype == "application/problem+json"
    assert (problem["status"], problem["job_status"], problem["type"]) == (409, "succeeded", "/problems/job-not-cancellable")


def test_cancel_unknown_job_is_404(client) -> None:
    assert client.post(f"/api/v1/jobs/{uuid.uuid4()}/cancel").status_code == 404


def test_long_poll_waits_the_full_time_for_a_job_that_stays_queued(client) -> None:
    job = _start(client).get_json()
    started = time.monotonic()
    response = client.get(f"/api/v1/jobs/{job['id']}", query_string={"wait": 0.5})
    assert time.monotonic() - started >= 0.5
    assert response.get_json()["status"] == "queued"


def test_long_poll_returns_at_once_for_a_terminal_job(client) -> None:
    job = _start(client).get_json()
    client.post(f"/api/v1/jobs/{job['id']}/cancel")
    started = time.monotonic()
    response = client.get(f"/api/v1/jobs/{job['id']}", query_string={"wait": 10})
    assert time.monotonic() - started < 2
    assert response.get_json()["status"] == "cancelled"


def test_long_poll_is_capped_at_30_seconds(client) -> None:
    job = _start(client).get_json()
    assert client.get(f"/api/v1/jobs/{job['id']}", query_string={"wait": 31}).status_code == 422


def test_openapi_document_and_docs(client) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel",
                 "/api/v1/diagnostics/sleep", "/health"):
        assert path in spec["paths"], path
    docs = client.get("/docs", follow_redirects=True)
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()


def test_unknown_route_and_wrong_method_are_problems(client) -> None:
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    wrong = client.delete("/api/v1/jobs")
    assert wrong.status_code == 405 and wrong.mimetype == "application/problem+json"


def test_a_query_models_schema_is_built_once_and_each_caller_gets_its_own_copy() -> None:
    # flask-openapi3 asks for a query model's JSON schema on every request.
    class Counting(GenerateJsonSchema):
        runs = 0

        def generate(self, *args, **kwargs):
            Counting.runs += 1
            return super().generate(*args, **kwargs)

    first = JobListQuery.model_json_schema(schema_generator=Counting)
    first["properties"].clear()
    second = JobListQuery.model_json_schema(schema_generator=Counting)
    assert Counting.runs == 1
    assert second == BaseModel.model_json_schema.__func__(JobListQuery) and "page_size" in second["properties"]


def test_submitting_a_job_writes_one_message_and_no_task_sent_event(client, redis_url) -> None:
    # The jobs table shows what waits for a worker; a task-sent event would be a second
    # broker write per job (worker events for Flower start at task-received).
    quiet = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")
    events = quiet.pubsub()
    events.psubscribe("*celeryev*")
    assert events.get_message(timeout=5)["type"] == "psubscribe"
    quiet.delete("default")
    job_id = _start(client).get_json()["id"]
    assert [job_id.encode() in m for m in quiet.lrange("default", 0, -1)] == [True]
    # Pub/sub ignores Redis databases: a worker of another test may send heartbeats here.
    deadline = time.monotonic() + 0.5
    while (left := deadline - time.monotonic()) > 0:
        message = events.get_message(timeout=left)
        assert message is None or b"worker." in message["channel"], message
    events.close()


def _first_words(seen: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
    return [(autocommit, statement.split()[0].upper()) for autocommit, statement in seen]


def test_showing_listing_and_plain_submissions_run_in_autocommit_and_leave_the_pool_transactional(client, engine) -> None:
    job = _start(client).get_json()
    app_engine = app_services(client.application).engine
    with recorded_statements(app_engine) as shown:
        assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 200
    with recorded_statements(app_engine) as listed:
        assert client.get("/api/v1/jobs").status_code == 200
    with recorded_statements(app_engine) as started:
        started_job = _start(client).get_json()
    with recorded_statements(app_engine) as keyed:
        response = client.post("/api/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1},
                               headers={"Idempotency-Key": f"autocommit-{uuid.uuid4()}"})
        assert response.status_code == 202
    with recorded_statements(app_engine) as keys:
        assert client.get("/api/v1/api-keys").status_code == 200
    shown, listed, started, keyed, keys = (_first_words(seen) for seen in (shown, listed, started, keyed, keys))

    # key lookup + job row, no BEGIN/ROLLBACK around them
    assert shown == [(True, "SELECT"), (True, "SELECT")]
    assert listed == [(True, "SELECT"), (True, "SELECT")]
    # a submission without Idempotency-Key: key lookup + INSERT, no BEGIN/COMMIT; committed
    assert started == [(True, "SELECT"), (True, "INSERT")]
    with Session(engine) as other:
        assert other.get(Job, uuid.UUID(started_job["id"])) is not None
    # with a key, its claim and the INSERT commit together, back in a transaction on the
    # same pooled connection
    assert (False, "INSERT") in keyed and all(not autocommit for autocommit, _ in keyed)
    # an unmarked read keeps its transaction
    assert keys and all(not autocommit for autocommit, _ in keys)


def _submissions(engine) -> dict[str, tuple[str, dict]]:
    from models.entities import Agent, Skill, Team

    with Session(engine) as session:
        skill_id = session.scalar(select(Skill.id).where(Skill.skill_key == "aml-screening"))
        agent = session.scalars(select(Agent).where(Agent.external_key == "agent-001")).one()
        team_id = session.scalar(select(Team.id).where(Team.job_role_id == agent.job_role_id).limit(1))
    return {"certify": (f"/api/v1/genesis/skills/{skill_id}/certify", {}),
            "assign-team": (f"/api/v1/agents/{agent.id}/assign-team", {"team_id": str(team_id)}),
            "assign-team, auto": (f"/api/v1/agents/{agent.id}/assign-team", {}),
            "assign-teams": ("/api/v1/agents/assign-teams", {"agent_ids": [str(agent.id)]}),
            "assign-teams, all unassigned": ("/api/v1/agents/assign-teams", {"all_unassigned": True}),
            "audit": ("/api/v1/audit/run", {"verify_signatures": "heads"})}


# What each view reads before its INSERT: the key lookup, then its entities (the audit none).
ENTITY_READS = {"certify": 1, "assign-team": 2, "assign-team, auto": 1, "assign-teams": 1,
                "assign-teams, all unassigned": 0, "audit": 0}


@pytest.mark.parametrize("kind", list(ENTITY_READS))
def test_each_plain_submission_reads_its_entities_and_inserts_its_job_in_autocommit(client, engine, seeded, kind) -> None:
    """The views that check their entities first read them through the request's Session,
    which runs in autocommit too: no BEGIN, no COMMIT, and the job is committed."""
    url, body = _submissions(engine)[kind]
    with recorded_statements(app_services(client.application).engine) as seen:
        response = client.post(url, json=body)
    assert response.status_code == 202, response.get_json()
    words = _first_words(seen)
    assert words == [(True, "SELECT")] * (1 + ENTITY_READS[kind]) + [(True, "INSERT")], words
    with Session(engine) as other:
        assert other.get(Job, uuid.UUID(response.get_json()["id"])) is not None


@pytest.mark.parametrize("idempotency_key", [None, "give-back"])
def test_a_submission_gives_its_connection_back_before_it_publishes(client, monkeypatch, idempotency_key) -> None:
    """A publish that fails puts the job back in the outbox on a connection of its own: a
    request still holding one could leave a small pool waiting out its timeout."""
    import web.jobs_http

    pool = app_services(client.application).engine.pool
    held: list[int] = []
    publish = web.jobs_http.publish_or_leave_in_outbox

    def publish_noting_the_pool(*args, **kwargs):
        held.append(pool.checkedout())
        return publish(*args, **kwargs)

    monkeypatch.setattr(web.jobs_http, "publish_or_leave_in_outbox", publish_noting_the_pool)
    headers = {"Idempotency-Key": f"{idempotency_key}-{uuid.uuid4()}"} if idempotency_key else {}
    assert client.post("/api/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=headers).status_code == 202
    assert held == [0]


def test_every_job_submitting_view_runs_plain_submissions_in_autocommit(app) -> None:
    """The mark must sit below the route decorator (flask-openapi3 copies it from there)."""
    from web.jobs_http import submits_a_job
    from web.services import AUTOCOMMIT_ATTRIBUTE

    condition = getattr(submits_a_job(lambda: None), AUTOCOMMIT_ATTRIBUTE)
    submitting = {"/api/v1/diagnostics/sleep", "/api/v1/genesis/skills/<entity_id>/certify",
                  "/api/v1/agents/<entity_id>/assign-team", "/api/v1/agents/assign-teams", "/api/v1/audit/run"}
    marked = {rule.rule for rule in app.url_map.iter_rules() if "POST" in rule.methods
              and getattr(app.view_functions[rule.endpoint], AUTOCOMMIT_ATTRIBUTE, None) is condition}
    assert marked == submitting


def test_a_long_poll_sees_a_commit_made_while_it_waits(client, engine) -> None:
    job = _start(client).get_json()
    app_engine = app_services(client.application).engine
    reads: list[str] = []

    def cancel_after_first_read(_conn, _cursor, statement, *_):
        if statement.lstrip().upper().startswith("SELECT JOBS.ID"):
            reads.append(statement)
            if len(reads) == 1:
                with Session(engine) as other, other.begin():
                    other.execute(update(Job).where(Job.id == uuid.UUID(job["id"])).values(status="cancelled"))

    event.listen(app_engine, "after_cursor_execute", cancel_after_first_read)
    try:
        started = time.monotonic()
        response = client.get(f"/api/v1/jobs/{job['id']}", query_string={"wait": 10})
    finally:
        event.remove(app_engine, "after_cursor_execute", cancel_after_first_read)

    assert response.get_json()["status"] == "cancelled"
    assert len(reads) == 2
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("stored", [
    {"type": "/problems/not-certifiable", "title": "Not certifiable", "detail": "skill is retired", "status": "retired"},
    {"type": 7, "title": ["x"], "detail": {"a": 1}, "status": True, "code": "kept"},
    {"type": None, "title": None, "detail": None, "status": None, "code": "kept"},
    {"type": "/problems/x", "title": "Edited", "detail": "d", "status": 500, "instance": {"not": "a uri"}},
    ["not", "an", "object"],
])
def test_a_job_whose_stored_error_is_no_problem_document_is_still_shown_and_listed(client, engine, stored) -> None:
    """A certification refused for a retired skill stored ``"status": "retired"`` in its job's
    error, and pydantic refused it: the job, and every page of the list holding it, was a 500.
    Members of the wrong type are left out; a value that is not an object becomes the detail."""
    job = _start(client).get_json()
    with Session(engine) as session, session.begin():
        session.execute(update(Job).where(Job.id == uuid.UUID(job["id"])).values(status="failed", error=stored))
    shown, listed = client.get(f"/api/v1/jobs/{job['id']}"), client.get("/api/v1/jobs")
    assert (shown.status_code, listed.status_code) == (200, 200)
    error = shown.get_json()["error"]
    assert next(j for j in listed.get_json()["items"] if j["id"] == job["id"])["error"] == error
    assert isinstance(error["title"], str) and isinstance(error["type"], str) and "status" not in error
    assert "instance" not in error
    if isinstance(stored, dict) and isinstance(stored.get("detail"), str):
        assert (error["type"], error["title"], error["detail"]) == (stored["type"], stored["title"], stored["detail"])
    elif isinstance(stored, dict):
        assert error == {"type": "about:blank", "title": "Job error", "code": "kept"}
    else:
        assert error["detail"] == '["not", "an", "object"]'


def test_a_job_error_leaves_out_the_members_it_does_not_know(client, engine) -> None:
    """RFC 9457 has ``status`` a number and ``detail`` a string: a stored job error has no
    status, and was served with ``"status": null``."""
    job = _start(client).get_json()
    cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel").get_json()
    assert cancelled["status"] == "cancelled" and "status" not in cancelled["error"]
    assert cancelled["error"]["type"] == "/problems/job-cancelled" and cancelled["error"]["detail"]


def test_a_problem_extension_may_not_take_a_member_rfc_9457_defines() -> None:
    from models.errors import Conflict

    for name in ("type", "title", "status", "detail", "instance"):
        with pytest.raises(TypeError, match=name):
            Conflict("refused", **{name: "x"})
    assert Conflict("refused", job_status="succeeded").problem(409)["status"] == 409


def test_the_longest_sleep_accepted_ends_a_second_before_the_soft_time_limit(client) -> None:
    assert client.post("/api/v1/diagnostics/sleep", json={"seconds": 3599}).status_code == 202


def test_a_sleep_longer_than_the_configured_soft_time_limit_allows_is_422(settings, admin_key) -> None:
    """The schema's bound follows the default limit; a lower PLANT_JOB_SOFT_TIME_LIMIT lowers it."""
    short = settings.model_copy(update={"job_soft_time_limit": 10, "redis_url": settings.redis_url.rsplit("/", 1)[0] + "/9"})
    client = create_app(short).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    assert client.post("/api/v1/diagnostics/sleep", json={"seconds": 9}).status_code == 202
    refused = client.post("/api/v1/diagnostics/sleep", json={"seconds": 9.5})
    assert refused.status_code == 422 and [e["field"] for e in refused.get_json()["errors"]] == ["seconds"]
