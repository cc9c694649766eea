"""An entity's ``parent_id`` names another of its type, and the parents never loop: an entity
is never its own ancestor, whether a write names a descendant directly or two writes in flight
would each close half of a loop (re-parenting is serialized per entity type)."""

import threading

from sqlalchemy import text

from models.db import make_session_factory, transaction
from models.entities import EntityType
from models.errors import InvalidInput
from models.registry import create_entity, update_entity
from tests.conftest import lock_waiters, wait_for

API = "/api/v1"
E = EntityType


def _industry(client, steward, code: str, **fields) -> dict:
    response = client.post(f"{API}/genesis/industries", json={
        "governance_agent_id": str(steward), "name": f"Industry {code}", "code": code, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _parent_error(response) -> str:
    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert response.mimetype == "application/problem+json"
    [error] = [e for e in problem["errors"] if e["field"] == "parent_id"]
    return error["message"]


def test_a_parent_must_exist_and_be_another_entity(client, committed_steward) -> None:
    top = _industry(client, committed_steward, "TOP")
    missing = "00000000-0000-4000-8000-000000000000"
    assert "no industry with id" in _parent_error(client.patch(f"{API}/genesis/industries/{top['id']}", json={"parent_id": missing}))
    assert "own parent" in _parent_error(client.patch(f"{API}/genesis/industries/{top['id']}", json={"parent_id": top["id"]}))


def test_naming_a_descendant_as_parent_is_422_and_changes_nothing(client, committed_steward) -> None:
    top = _industry(client, committed_steward, "TOP")
    mid = _industry(client, committed_steward, "MID", parent_id=top["id"])
    low = _industry(client, committed_steward, "LOW", parent_id=mid["id"])
    for descendant in (mid, low):
        message = _parent_error(client.patch(f"{API}/genesis/industries/{top['id']}", json={"parent_id": descendant["id"]}))
        assert "cycle" in message
    after = client.get(f"{API}/genesis/industries/{top['id']}").get_json()
    assert after["parent_id"] is None and after["version"] == top["version"]
    # Moving a subtree elsewhere, or a write that keeps its parent, is fine.
    other = _industry(client, committed_steward, "OTH")
    assert client.patch(f"{API}/genesis/industries/{mid['id']}", json={"parent_id": other["id"]}).status_code == 200
    assert client.patch(f"{API}/genesis/industries/{low['id']}", json={"description": "kept"}).status_code == 200


def test_two_writes_in_flight_cannot_each_close_half_of_a_loop(engine, write_ctx, committed_steward) -> None:
    """A under B and B under A, each alone no loop: the second waits for the first to commit
    and then sees it. Without the per-type lock both committed, and A and B were each other's
    ancestors."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        a, b = (create_entity(session, entity_type=E.INDUSTRY, ctx=write_ctx, data={
            "name": f"Loop {code}", "code": code, "governance_agent_id": committed_steward}).id for code in ("LPA", "LPB"))
    first, outcome = sessions(), []

    def second() -> None:
        try:
            with transaction(sessions) as session:
                update_entity(session, entity_type=E.INDUSTRY, entity_id=b, changes={"parent_id": a}, ctx=write_ctx)
            outcome.append("committed")
        except InvalidInput as exc:
            outcome.append(exc)

    worker = threading.Thread(target=second)
    try:
        update_entity(first, entity_type=E.INDUSTRY, entity_id=a, changes={"parent_id": b}, ctx=write_ctx)
        worker.start()
        wait_for(lambda: outcome or lock_waiters(engine), what="the second write to finish or wait on a lock")
        first.commit()
    finally:
        first.close()
        worker.join(30)
    [result] = outcome
    assert isinstance(result, InvalidInput), "both halves of a loop committed"
    assert "cycle" in result.extensions["errors"][0]["message"]
    with engine.connect() as connection:
        parents = dict(connection.execute(text("SELECT id, parent_id FROM industries WHERE id IN (:a, :b)"), {"a": a, "b": b}).all())
    assert parents == {a: b, b: None}
