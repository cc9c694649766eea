"""The deletion code (``models.reference_guards``, ``web/api/work.py``): the dependents of a
deletion were read whole, and every version's content byte-searched; the job POSTs read only
the row's ``deleted_at``, where a write naming the entity reads its signed head too."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models.entities import EntityType
from models.entity_locks import lock_for_write
from models.errors import EntityReferenced, EntityTampered
from models.registry import update_entity
from tests.conftest import recorded_statements
from tests.test_assignment import world  # noqa: F401  (fixture)
from tests.test_registry_api import API, gov  # noqa: F401  (fixture)

E = EntityType
DELETED = {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


def _delete(session, entity_type, entity_id, ctx):
    return update_entity(session, entity_type=entity_type, entity_id=entity_id, changes=DELETED, ctx=ctx)


def test_a_deletion_counts_its_dependents_in_sql_and_lists_twenty(world, db_session, write_ctx) -> None:  # noqa: F811
    """The dependent rows were all loaded to list 20; they are counted and listed with a LIMIT, and
    a dependent hidden by an SQL edit of its row is still counted, once."""
    industry = world.make(E.INDUSTRY, name="Many dependents", code="MANY")
    skills = [world.make(E.SKILL, name=f"Dependent {i}", category="technical", description="d",
                         industry_id=industry.id) for i in range(22)]
    db_session.flush()
    db_session.execute(text("UPDATE skills SET industry_id = NULL WHERE id = :id"), {"id": skills[0].id})
    db_session.expire_all()
    with recorded_statements(db_session.get_bind()) as seen:
        with pytest.raises(EntityReferenced) as refused, db_session.begin_nested():
            _delete(db_session, E.INDUSTRY, industry.id, write_ctx)
    problem = refused.value.problem(409)
    assert problem["dependent_count"] == 22 and len(problem["dependents"]) == 20, problem
    assert problem["dependents"] == sorted(problem["dependents"], key=lambda d: (d["entity_type"], d["field"], d["id"]))
    assert all(d["field"] == "industry_id" and d["entity_type"] == "skill" for d in problem["dependents"]), problem
    listing = [sql for _, sql in seen if "UNION ALL" in sql and "industry_id" in sql and "entity_versions" not in sql]
    assert any("LIMIT" in sql for sql in listing) and any("count(" in sql for sql in listing), listing


def test_a_deletion_byte_searches_the_heads_of_the_referencing_types_only(world, db_session, write_ctx) -> None:  # noqa: F811
    """Each deletion ran position() over every version's content of every type, under its locks:
    a team is named by agents (``team_id``) and teams (``parent_id``) alone, by their heads."""
    team = world.team("Searched for")
    db_session.flush()
    with recorded_statements(db_session.get_bind()) as seen:
        _delete(db_session, E.TEAM, team.id, write_ctx)
    searches = [sql for _, sql in seen if "position(" in sql]
    # (the seat guard and the reference fence each read a team's dependents: each searches two types)
    assert searches and {sql.split(" t ON ")[0].rsplit(" ", 1)[1] for sql in searches} == {"agents", "teams"}, searches
    for sql in searches:  # the type and the newest version are chosen before the search, in a fenced subquery
        inner = sql.split("OFFSET 0")[0]
        assert "v.entity_type = " in inner and "later.version > v.version" in inner and "position(" not in inner, sql


@pytest.mark.parametrize("deleted", ["skill", "team"])
def test_a_job_post_naming_an_entity_undeleted_through_sql_makes_a_job_that_meets_it_as_tampered(
        quiet_client, engine, write_ctx, gov, deleted) -> None:  # noqa: F811
    """The POSTs read the row's ``deleted_at`` alone (no read of the signed head on every
    submission): a row undeleted through SQL is accepted, and the job meets it as tampered, the
    row off its signed head (``lock_for_write``, the first thing each job does to its entities)."""
    def post(path, body):
        response = quiet_client.post(API + path, json={**gov, **body})
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    industry = post("/genesis/industries", {"name": "Undeleted Trade", "code": f"U{uuid.uuid4().hex[:5].upper()}"})
    skill = post("/genesis/skills", {"name": "Undeleted skill", "category": "technical", "industry_id": industry["id"],
                                     "description": "d"})
    role = post("/genesis/job-roles", {"name": "Undeleted role", "seniority": "mid", "required_skill_ids": [skill["id"]]})
    team = post("/teams", {"name": "Undeleted team", "job_role_id": role["id"], "capacity": 2})
    agent = post("/agents", {"name": "Undeleted agent", "job_role_id": role["id"], "industry_id": industry["id"],
                             "skill_ids": [skill["id"]]})
    target = {"skill": skill, "team": team}[deleted]
    table = {"skill": "skills", "team": "teams"}[deleted]
    if deleted == "skill":  # the skill is named by the role and the agent: delete them with it
        from models.deletion import delete_entities

        with Session(engine) as session, session.begin():
            delete_entities(session, [(E.AGENT, uuid.UUID(agent["id"])), (E.JOB_ROLE, uuid.UUID(role["id"])),
                                      (E.TEAM, uuid.UUID(team["id"])), (E.SKILL, uuid.UUID(skill["id"]))], ctx=write_ctx,
                             deleted_at=DELETED["deleted_at"])
        path, body = f"/genesis/skills/{skill['id']}/certify", {}
    else:
        with Session(engine) as session, session.begin():
            _delete(session, E.TEAM, uuid.UUID(team["id"]), write_ctx)
        path, body = f"/agents/{agent['id']}/assign-team", {"team_id": team["id"]}
    with engine.begin() as connection:
        was = connection.execute(text(f"SELECT deleted_at FROM {table} WHERE id = :id"), {"id": target["id"]}).scalar()
        connection.execute(text(f"UPDATE {table} SET deleted_at = NULL WHERE id = :id"), {"id": target["id"]})
    response = None
    try:
        response = quiet_client.post(API + path, json=body)
        assert response.status_code == 202, response.get_json()
        with Session(engine) as session, pytest.raises(EntityTampered, match="row-content-mismatch"):
            lock_for_write(session, E(deleted), uuid.UUID(target["id"]), write_ctx.keyring)
    finally:  # the row put back as its head has it, and the job ended, for what other tests run over this database
        with engine.begin() as connection:
            connection.execute(text(f"UPDATE {table} SET deleted_at = :was WHERE id = :id"),
                               {"was": was, "id": target["id"]})
            connection.execute(text("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = :id"),
                               {"id": response.get_json().get("id") if response is not None else None})


def test_the_docs_say_no_route_or_command_deletes_entities_and_none_does(client) -> None:
    """README and docs/guarantees.md presented ``delete_entities`` as the way to delete entities that
    name each other, where nothing but domain code calls it: they say it is a domain call only."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    deleting = [f"{rule.rule}" for rule in client.application.url_map.iter_rules()
                if "DELETE" in (rule.methods or ()) and "api-keys" not in rule.rule]
    assert deleting == [], deleting
    callers = [str(p.relative_to(root)) for folder in ("web", "cli", "tasks", "worker") for p in (root / folder).rglob("*.py")
               if "delete_entities" in p.read_text(encoding="utf-8")]
    assert callers == [], callers
    for doc in ("README.md", "docs/guarantees.md"):
        text_of = " ".join((root / doc).read_text(encoding="utf-8").split())
        assert "no API route or CLI command deletes entities" in text_of, doc
