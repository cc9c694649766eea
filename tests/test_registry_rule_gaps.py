"""Review of the registry's write paths against the constitution and its documented
guarantees: names that read the same, the seed's external keys, a governor suspended while
it is being named, and entities deleted while others still reference them."""

import datetime as dt
import subprocess
import sys
import threading
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.entities import Agent, EntityType, Industry, Skill
from models.errors import InvalidInput, PlantError
from models.registry import create_entity, update_entity
from models.seed import seed_registry
from tests.conftest import REPO_ROOT, child_env, lock_waiters, outcome_once_committed, wait_for
from tests.test_registry_api import API, _post, gov, world  # noqa: F401  (fixtures)


@pytest.mark.parametrize("respelled", ["Logistics\u200b", "Logistics ", "\u2060Logistics", "Logis\u00adtics",
                                       "Logistics\ufe0f", "Logis\u200dtics", "Logistics\u00a0Ops", "Logistics  Ops",
                                       "\u200bx", "\u3164\u3131"])
def test_a_name_that_reads_the_same_as_a_taken_one_is_refused(client, world, gov, respelled) -> None:  # noqa: F811
    """Names are unique byte for byte (after NFC): one that differed from a taken name only by
    characters that draw nothing (U+200B, which models.constitution.visible itself calls
    blank) or by whitespace was taken as another name (helper-143). A name or external key
    holding what a reader cannot see is 422 naming the field, created or patched."""
    response = client.post(API + "/genesis/industries", json={**gov, "name": respelled, "code": "LOGX"})
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    assert [e["field"] for e in response.get_json()["errors"]] == ["name"]
    keyed = client.post(API + "/genesis/industries", json={**gov, "name": "Logistics Two", "code": "LOGY",
                                                           "external_key": respelled})
    assert [e["field"] for e in keyed.get_json()["errors"]] == ["external_key"], keyed.get_json()
    plain = _post(client, "/genesis/industries", {**gov, "name": "Logistics Three", "code": "LOGZ"})
    patched = client.patch(f"{API}/genesis/industries/{plain['id']}", json={"name": respelled})
    assert patched.status_code == 422 and [e["field"] for e in patched.get_json()["errors"]] == ["name"]


@pytest.mark.parametrize("name", ["Mehr Logistics", "\U0001f469\u200d\U0001f4bb Ops", "\u0645\u200c\u06cc",
                                  "\u2764\ufe0f Care", "Caf\u00e9"])
def test_a_name_whose_every_character_shows_or_joins_a_script_is_taken(client, gov, name) -> None:  # noqa: F811
    assert client.post(API + "/genesis/industries", json={**gov, "name": name, "code": "SHOW"}).status_code == 201


def test_the_seed_stays_idempotent_after_a_seeded_entity_s_external_key_changes(client, seeded, engine, write_ctx) -> None:
    """The seed found its entities by external_key alone: once an API write changed a seeded
    entity's key, every later `plant seed` (and so every `make dev` start) tried to create it
    again and failed on its unique name or code (helper-143). It finds its own by name then."""
    industries = client.get(API + "/genesis/industries?page_size=50").get_json()["items"]
    marketing = next(i for i in industries if i["external_key"] == "industry-mkt")
    assert client.patch(f"{API}/genesis/industries/{marketing['id']}", json={"external_key": "ours"}).status_code == 200
    with Session(engine) as session, session.begin():
        again = seed_registry(session, write_ctx)  # "idempotent: existing entities are left alone" (README)
    assert sum(again.created.values()) == 0


def test_the_seed_does_not_build_on_an_entity_it_did_not_write(client, committed_steward, engine, write_ctx) -> None:
    """The seed took whatever entity held one of its external keys for its own: an API client
    that took a key the seed had not written yet (one a later release's seed adds) had the seed
    build on its entity, unseen (helper-143). It refuses now, naming the key."""
    squatter = _post(client, "/genesis/industries", {"governance_agent_id": str(committed_steward), "name": "Not Marketing",
                                                     "code": "NOPE", "external_key": "industry-mkt", "status": "retired"})
    try:
        with Session(engine) as session, session.begin():
            seed_registry(session, write_ctx)
    except PlantError as refused:
        assert "industry-mkt" in refused.detail and "through the API" in refused.detail, refused.detail
        return
    with Session(engine) as session:
        seo = session.scalar(select(Skill).where(Skill.external_key == "skill-seo-optimization"))
        assert str(seo.industry_id) != squatter["id"], "the seeded Marketing skills belong to the squatter's industry"


def _second_governor(engine, write_ctx, steward: uuid.UUID) -> uuid.UUID:
    with Session(engine) as session, session.begin():
        return create_entity(session, entity_type=EntityType.AGENT, ctx=write_ctx, data={
            "name": "Second Governor", "governance_agent_id": steward,
            "job_role_id": session.scalar(select(Agent.job_role_id).where(Agent.id == steward)),
            "industry_id": session.scalar(select(Agent.industry_id).where(Agent.id == steward)),
            "skill_ids": [s.id for s in session.get(Agent, steward).skills]}).id


def test_a_governor_cannot_be_suspended_between_the_check_and_the_commit_of_a_write_naming_it(
        engine, write_ctx, committed_steward) -> None:
    """_governor_problem read the governor's status without a lock: a suspension that committed
    between that read and the write's commit went unseen (helper-143). The suspension now waits
    for the naming write (models.entity_input.governor_fence)."""
    governor = _second_governor(engine, write_ctx, committed_steward)
    naming = Session(engine)
    naming.begin()
    industry = create_entity(naming, entity_type=EntityType.INDUSTRY, ctx=write_ctx, data={
        "name": "Governed Later", "code": "GOVL", "governance_agent_id": governor}).id
    naming.flush()  # checked: the governor is active

    suspended = threading.Event()

    def suspend() -> None:
        with Session(engine) as session, session.begin():
            update_entity(session, entity_type=EntityType.AGENT, entity_id=governor, changes={"status": "suspended"},
                          ctx=write_ctx)
        suspended.set()

    suspender = threading.Thread(target=suspend)
    suspender.start()
    try:
        wait_for(lambda: suspended.is_set() or lock_waiters(engine) >= 1, what="the suspension to commit or wait")
        suspended_first = suspended.is_set()
        naming.commit()
    finally:
        naming.close()
        suspender.join(timeout=60)
    with Session(engine) as session:
        assert session.get(Industry, industry).governance_agent_id == governor
    assert not suspended_first, "the industry committed naming a governor whose suspension had committed before it"


@pytest.mark.parametrize("stand_down", [{"status": "suspended"}, {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}],
                         ids=["suspension", "deletion"])
def test_a_write_naming_a_governor_whose_suspension_is_committing_is_refused(engine, write_ctx, committed_steward,
                                                                            stand_down) -> None:
    """The other order: a suspension flushed first, then a write naming the agent (it still reads
    the agent active, the suspension uncommitted) waits for it at its commit and, once the
    suspension commits, is refused as it would have been after it: 422 naming the field. A
    deletion stands an agent down as a suspension does, and takes the same lock."""
    governor = _second_governor(engine, write_ctx, committed_steward)
    suspending = Session(engine)
    suspending.begin()
    update_entity(suspending, entity_type=EntityType.AGENT, entity_id=governor, changes=stand_down, ctx=write_ctx)
    def name() -> uuid.UUID:
        with Session(engine) as session, session.begin():
            return create_entity(session, entity_type=EntityType.INDUSTRY, ctx=write_ctx, data={
                "name": "Governed Later", "code": "GOVL", "governance_agent_id": governor}).id

    outcome = outcome_once_committed(engine, suspending, name, "the naming write")
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidInput), outcome
    assert [e["field"] for e in outcome[0].extensions["errors"]] == ["governance_agent_id"], outcome[0].extensions
    with Session(engine) as session:
        assert session.scalar(select(Industry.id).where(Industry.code == "GOVL")) is None


def test_a_team_with_members_cannot_be_deleted(client, world, gov, engine, write_ctx) -> None:  # noqa: F811
    team_id = uuid.UUID(world["team"]["id"])
    with Session(engine) as session, session.begin():
        try:
            update_entity(session, entity_type=EntityType.TEAM, entity_id=team_id,
                          changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}, ctx=write_ctx)
            deleted = True
        except PlantError:
            deleted = False  # refused, as retiring it is while it has members
    assert not deleted, "a team with a seated agent was deleted; the agent still sits in it, AGENT-04 passing"


def test_a_deleted_team_takes_no_seat(client, world, gov, engine, write_ctx) -> None:  # noqa: F811
    empty = _post(client, "/teams", {**gov, "name": "Gone Shift", "job_role_id": world["role"]["id"],
                                     "industry_id": world["industry"]["id"], "capacity": 3})
    with Session(engine) as session, session.begin():
        update_entity(session, entity_type=EntityType.TEAM, entity_id=uuid.UUID(empty["id"]),
                      changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}, ctx=write_ctx)
    assert client.get(f"{API}/teams/{empty['id']}").get_json()["deleted_at"] is not None
    seated = client.patch(f"{API}/agents/{world['agent']['id']}", json={"team_id": empty["id"]})
    assert seated.status_code in (409, 422), seated.get_json()


def test_a_unique_refusal_names_the_entity_type_as_a_person_reads_it(client, world, gov) -> None:  # noqa: F811
    industry = client.post(API + "/genesis/industries", json={**gov, "name": "Logistics", "code": "LOGY"})
    role = client.post(API + "/genesis/job-roles", json={**gov, "name": "Dispatcher", "seniority": "mid",
                                                          "required_skill_ids": [world["skills"][0]["id"]]})
    assert industry.status_code == role.status_code == 409
    assert industry.get_json()["detail"] == "an industry with this name already exists"  # not "a industry"
    assert role.get_json()["detail"] == "a job role with this name already exists"  # not "a job_role"


def test_plant_seed_says_which_seed_entity_it_could_not_create_and_why(client, seeded, settings) -> None:
    """A seeded entity whose external_key and name API writes both changed stops every later seed
    (its code is still taken); `plant seed` (and `make dev`, which seeds at every start) must at
    least say which entity, and why."""
    industries = client.get(API + "/genesis/industries?page_size=50").get_json()["items"]
    marketing = next(i for i in industries if i["external_key"] == "industry-mkt")
    changed = client.patch(f"{API}/genesis/industries/{marketing['id']}", json={"external_key": "ours", "name": "Our Marketing"})
    assert changed.status_code == 200
    seed = subprocess.run([sys.executable, "-m", "cli.main", "seed"], env=child_env(settings), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert seed.returncode == 1
    assert seed.stderr.startswith("plant: seed: no industry has external_key 'industry-mkt', and creating it was refused: "
                                  "an industry with this "), seed.stderr
