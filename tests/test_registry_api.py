"""The registry API end to end through Flask, against the real database (committed, cleaned)."""

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from models.chain_verification import verify_entity
from models.constitution import constitution_version
from models.db_json import UNREADABLE_JSON
from models.entities import Skill

API = "/api/v1"


@pytest.fixture
def gov(committed_steward) -> dict:
    return {"governance_agent_id": str(committed_steward)}


def _post(client, path, body, status=201):
    response = client.post(API + path, json=body)
    assert response.status_code == status, response.get_json()
    return response.get_json()


@pytest.fixture
def world(client, gov) -> dict:
    industry = _post(client, "/genesis/industries", {**gov, "name": "Logistics", "code": "LOG", "description": "Moving goods"})
    skills = [
        _post(client, "/genesis/skills", {**gov, "name": name, "category": "technical", "industry_id": industry["id"],
                                            "description": f"{name} for warehouses and fleets"})
        for name in ("Route Planning", "Fleet Telemetry")
    ]
    role = _post(client, "/genesis/job-roles", {**gov, "name": "Dispatcher", "seniority": "mid", "industry_id": industry["id"],
                                                 "required_skill_ids": [s["id"] for s in skills]})
    team = _post(client, "/teams", {**gov, "name": "Night Shift", "job_role_id": role["id"], "industry_id": industry["id"], "capacity": 3})
    agent = _post(client, "/agents", {**gov, "name": "Dispatch One", "job_role_id": role["id"], "industry_id": industry["id"],
                                      "skill_ids": [s["id"] for s in skills], "team_id": team["id"]})
    return {"industry": industry, "skills": skills, "role": role, "team": team, "agent": agent}


def test_create_answers_201_with_location_and_the_governed_resource(client, world) -> None:
    skill = world["skills"][0]
    assert skill["skill_key"] == "route-planning"
    assert skill["status"] == "draft" and skill["entity_type"] == "skill" and skill["version"] == 1
    assert len(skill["head_link_hash"]) == 64
    assert skill["constitution"]["l0"]["passed"] and skill["constitution"]["l1"]["passed"]
    response = client.get(f"{API}/genesis/skills/{skill['id']}")
    assert response.status_code == 200 and response.get_json() == skill
    assert response.headers["ETag"] == '"1"'


def test_team_resource_lists_members_and_free_seats(client, world) -> None:
    team = client.get(f"{API}/teams/{world['team']['id']}").get_json()
    assert team["members"] == [world["agent"]["id"]]
    assert team["free_seats"] == 2


def test_every_patch_body_is_named_after_its_type_in_the_openapi_document(client) -> None:
    """Each PATCH body is ``<Type>Patch``, its POST body ``<Type>In`` (clients generate code from these names)."""
    document = client.get("/openapi.json").get_json()

    def body_schema(operation: dict) -> str:
        return operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    patched = {path: body_schema(ops["patch"]) for path, ops in document["paths"].items() if "patch" in ops}
    assert sorted(patched.values()) == ["AgentPatch", "IndustryPatch", "JobRolePatch", "SkillPatch", "TeamPatch"]
    for path, name in patched.items():
        created = body_schema(document["paths"][path.rsplit("/", 1)[0]]["post"])
        assert created.removesuffix("In") + "Patch" == name, path
        assert name in document["components"]["schemas"]


def test_relationship_fields_are_returned(world) -> None:
    assert sorted(world["role"]["required_skill_ids"]) == sorted(s["id"] for s in world["skills"])
    assert world["agent"]["team_id"] == world["team"]["id"]


def test_patch_appends_a_version_and_history_shows_every_version(client, world, app, keyring) -> None:
    skill = world["skills"][0]
    patched = client.patch(f"{API}/genesis/skills/{skill['id']}", json={"description": "Plans optimal delivery routes daily"})
    assert patched.status_code == 200 and patched.get_json()["version"] == 2
    items = client.get(f"{API}/genesis/skills/{skill['id']}/history").get_json()["items"]
    assert [v["version"] for v in items] == [1, 2]
    assert items[1]["prev_link"] == items[0]["link_hash"] and items[0]["prev_link"] == "00" * 32
    assert set(items[0]) == {"version", "content", "content_hash", "prev_link", "link_hash", "kid", "signature", "actor", "created_at"}
    assert '"description":"Plans optimal delivery routes daily"' in items[1]["content"]
    assert items[1]["kid"] == keyring.active.kid
    with app.app_context():
        from web.services import db_session
        assert verify_entity(db_session(), entity=db_session().get(Skill, uuid.UUID(skill["id"])), keyring=keyring).ok


def test_history_can_be_verified_with_only_the_published_jwks(client, world) -> None:
    import base64
    import hashlib

    from models.signing import VerifyingKey

    keys = {k["kid"]: VerifyingKey.from_jwk(k) for k in client.get(f"{API}/signing-keys").get_json()["keys"]}
    for version in client.get(f"{API}/agents/{world['agent']['id']}/history").get_json()["items"]:
        assert hashlib.sha256(version["content"].encode()).hexdigest() == version["content_hash"]
        signature = base64.urlsafe_b64decode(version["signature"] + "=" * (-len(version["signature"]) % 4))
        assert keys[version["kid"]].verify(signature, bytes.fromhex(version["link_hash"]))


def test_duplicate_name_is_409_naming_the_field(client, world, gov) -> None:
    response = client.post(f"{API}/genesis/industries", json={**gov, "name": "Logistics", "code": "LOG2"})
    assert response.status_code == 409 and response.mimetype == "application/problem+json"
    assert response.get_json()["field"] == "name"


def test_renaming_onto_a_taken_name_is_409_naming_the_field(client, world, gov) -> None:
    other = _post(client, "/genesis/industries", {**gov, "name": "Shipping", "code": "SHP"})
    response = client.patch(f"{API}/genesis/industries/{other['id']}", json={"name": "Logistics"})
    assert response.status_code == 409 and response.get_json()["field"] == "name"  # was a 500
    assert client.get(f"{API}/genesis/industries/{other['id']}").get_json()["version"] == 1


@pytest.mark.parametrize(("path", "field"), [
    ("/genesis/skills", "industry_id"), ("/teams", "job_role_id"), ("/agents", "team_id"), ("/genesis/job-roles", "required_skill_ids"),
])
def test_unknown_reference_is_422_naming_the_field(client, world, gov, path, field) -> None:
    body = {
        "/genesis/skills": {"name": "X skill", "category": "technical", "description": "d"},
        "/teams": {"name": "X team", "capacity": 1},
        "/agents": {"name": "X agent", "job_role_id": world["role"]["id"], "industry_id": world["industry"]["id"],
                    "skill_ids": [world["skills"][0]["id"]]},
        "/genesis/job-roles": {"name": "X role", "seniority": "mid"},
    }[path]
    missing = str(uuid.uuid4())
    response = client.post(API + path, json={**gov, **body, field: [missing] if field.endswith("_ids") else missing})
    assert response.status_code == 422, response.get_json()
    assert [e["field"] for e in response.get_json()["errors"]] == [field]


def test_malformed_input_is_422_with_one_entry_per_field(client, gov) -> None:
    response = client.post(f"{API}/genesis/skills", json={**gov, "name": 5, "category": "magic", "skill_key": "Not A Slug"})
    assert response.status_code == 422
    assert {e["field"] for e in response.get_json()["errors"]} == {"name", "category", "skill_key"}


def test_constitution_violations_are_422_listing_every_rule(client, world) -> None:
    response = client.post(f"{API}/genesis/skills", json={"name": "  ", "category": "technical", "description": ""})
    assert response.status_code == 422
    body = response.get_json()
    assert body["type"] == "/problems/constitution-violation"
    assert [v["rule"] for v in body["violations"]] == ["L0-01", "SKILL-01", "SKILL-02"]
    agent = client.post(f"{API}/agents", json={"name": "Loose", "governance_agent_id": world["agent"]["governance_agent_id"]})
    assert [v["rule"] for v in agent.get_json()["violations"]] == ["AGENT-01", "AGENT-02", "AGENT-03"]


@pytest.mark.parametrize("name", ["\u200b", "\u3164", "\u2800", "\u200d\u200c", "\u115f\u1160\uffa0",
                                  " \u00a0\u200e\ufe0f\u034f\u0001 "])
def test_a_name_made_only_of_characters_that_draw_nothing_is_blank(client, gov, name) -> None:
    response = client.post(f"{API}/genesis/industries", json={**gov, "name": name, "code": "BLANK"})
    assert response.status_code == 422, response.get_json()
    assert [v["rule"] for v in response.get_json()["violations"]] == ["INDUSTRY-01"]
    skill = client.post(f"{API}/genesis/skills", json={**gov, "name": "Invisible", "category": "technical", "description": name})
    assert [v["rule"] for v in skill.get_json()["violations"]] == ["SKILL-02"]


def test_a_team_or_an_agent_with_a_blank_name_is_refused_as_the_other_types_are(client, world) -> None:
    """Teams and agents had no "name is not blank" rule: both were created named "" (201)."""
    gov, role, industry = world["agent"]["governance_agent_id"], world["role"]["id"], world["industry"]["id"]
    team = client.post(f"{API}/teams", json={"governance_agent_id": gov, "name": "\u200b", "job_role_id": role,
                                             "industry_id": industry, "capacity": 2})
    assert team.status_code == 422 and [v["rule"] for v in team.get_json()["violations"]] == ["TEAM-04"], team.get_json()
    agent = client.post(f"{API}/agents", json={"governance_agent_id": gov, "name": " ", "job_role_id": role,
                                               "industry_id": industry, "skill_ids": [s["id"] for s in world["skills"]]})
    assert agent.status_code == 422 and [v["rule"] for v in agent.get_json()["violations"]] == ["AGENT-05"], agent.get_json()
    renamed = client.patch(f"{API}/agents/{world['agent']['id']}", json={"name": ""})
    assert renamed.status_code == 422 and [v["rule"] for v in renamed.get_json()["violations"]] == ["AGENT-05"]


@pytest.mark.parametrize("name", ["\u00e9", "\U0001f469\u200d\U0001f4bb", "\u3131", "\u2764\ufe0f"])
def test_a_name_with_one_character_that_shows_is_not_blank(client, gov, name) -> None:
    assert client.post(f"{API}/genesis/industries", json={**gov, "name": name, "code": "SHOWN"}).status_code == 201


@pytest.mark.parametrize("status", ["retired", "suspended"])
def test_a_governance_agent_must_be_active_when_it_is_named(client, world, status) -> None:
    agent = world["agent"]
    named = {"governance_agent_id": agent["id"]}
    governed = _post(client, "/genesis/industries", {**named, "name": "Governed", "code": "GOVD"})
    assert client.patch(f"{API}/agents/{agent['id']}", json={"status": status, "team_id": None}).status_code == 200
    refused = {"field": "governance_agent_id",
               "message": f"agent {agent['id']} is {status}: a governance agent must be active when it is named"}
    created = client.post(f"{API}/genesis/industries", json={**named, "name": "Misgoverned", "code": "MISG"})
    assert created.status_code == 422 and created.get_json()["errors"] == [refused]
    patched = client.patch(f"{API}/genesis/industries/{world['industry']['id']}", json=named)
    assert patched.status_code == 422 and patched.get_json()["errors"] == [refused]
    # Named while active, it stays the governor of what it governs: judged when named only.
    url = f"{API}/genesis/industries/{governed['id']}"
    kept = client.patch(url, json={**named, "description": "still governed"})
    assert kept.status_code == 200 and kept.get_json()["governance_agent_id"] == agent["id"]
    assert client.get(f"{API}/audit/tampering/{governed['id']}").get_json()["findings"] == []
    handed_over = client.patch(url, json={"governance_agent_id": world["industry"]["governance_agent_id"]})
    assert handed_over.status_code == 200


def test_an_agent_cannot_name_itself_governor_as_it_stops_being_active(client, world) -> None:
    agent = world["agent"]
    response = client.patch(f"{API}/agents/{agent['id']}",
                            json={"governance_agent_id": agent["id"], "status": "retired", "team_id": None})
    assert response.status_code == 422 and response.get_json()["errors"][0]["field"] == "governance_agent_id"
    named = client.patch(f"{API}/agents/{agent['id']}", json={"governance_agent_id": agent["id"]})
    assert named.status_code == 200, named.get_json()


def test_a_refused_patch_changes_nothing(client, world) -> None:
    role = world["role"]
    response = client.patch(f"{API}/genesis/job-roles/{role['id']}", json={"required_skill_ids": []})
    assert response.status_code == 422 and response.get_json()["violations"] == [
        {"rule": "JOBROLE-01", "description": "Job role requires at least one skill", "field": "required_skill_ids"}]
    assert client.get(f"{API}/genesis/job-roles/{role['id']}").get_json() == role


def test_team_without_members_is_only_warned(world) -> None:
    assert world["team"]["constitution"]["l1"] == {"passed": True, "violations": [], "warnings": ["TEAM-01"],
                                                   "constitution_version": constitution_version()}


def test_a_team_s_rules_about_its_members_are_judged_on_the_members_it_serves(client, world, gov) -> None:
    """A seat taken or left adds no version to the team: the rules reading its members
    (TEAM-01, TEAM-03) are evaluated when it is served, not read from its last write."""
    url = f"{API}/teams/{world['team']['id']}"
    seated = client.get(url).get_json()
    assert seated["members"] == [world["agent"]["id"]]
    assert seated["constitution"]["l1"] == {"passed": True, "violations": [], "warnings": [],
                                            "constitution_version": constitution_version()}
    assert seated["version"] == world["team"]["version"]  # the same signed team as at its creation
    left = client.patch(f"{API}/agents/{world['agent']['id']}", json={"team_id": None})
    assert left.status_code == 200, left.get_json()
    assert client.get(url).get_json()["constitution"]["l1"]["warnings"] == ["TEAM-01"]


@pytest.mark.parametrize("stored", ['"not a result"', '{"violations": "TEAM-02"}', "null",
                                    '{"passed": false, "violations": ["TEAM-02"], "warnings": [], "constitution_version": "older"}'])
def test_a_team_whose_stored_results_are_no_result_is_served_every_l1_rule_evaluated(client, world, engine,
                                                                                     stored) -> None:
    with engine.begin() as connection:  # not governed content: not a tampering finding either
        connection.execute(text(f"UPDATE teams SET constitution_l1 = '{stored}'::jsonb WHERE id = :id"),
                           {"id": world["team"]["id"]})
    response = client.get(f"{API}/teams/{world['team']['id']}")
    assert response.status_code == 200
    assert response.get_json()["constitution"]["l1"] == {"passed": True, "violations": [], "warnings": [],
                                                         "constitution_version": constitution_version()}


def test_a_team_over_its_capacity_is_served_breaking_team_03(client, world, monkeypatch) -> None:
    from tests.test_seat_rules import as_an_older_release

    url, gov = f"{API}/teams/{world['team']['id']}", {"governance_agent_id": world["agent"]["governance_agent_id"]}
    with as_an_older_release(monkeypatch):  # as a release without the seat guards left it
        assert client.patch(url, json={"capacity": 1}).status_code == 200
        _post(client, "/agents", {**gov, "name": "Dispatch Two", "job_role_id": world["role"]["id"],
                                  "industry_id": world["industry"]["id"], "skill_ids": [s["id"] for s in world["skills"]],
                                  "team_id": world["team"]["id"]})
    team = client.get(url).get_json()
    assert team["free_seats"] == -1
    assert team["constitution"]["l1"] == {"passed": False, "violations": ["TEAM-03"], "warnings": [],
                                          "constitution_version": constitution_version()}


def test_unknown_entity_is_404(client, world) -> None:
    for path in ("/genesis/skills", "/genesis/industries", "/genesis/job-roles", "/teams", "/agents"):
        assert client.get(f"{API}{path}/{uuid.uuid4()}").status_code == 404
        assert client.patch(f"{API}{path}/{uuid.uuid4()}", json={"description": "x"}).status_code == 404
        assert client.get(f"{API}{path}/{uuid.uuid4()}/history").status_code == 404


def test_patch_null_for_a_required_field_is_422(client, world) -> None:
    response = client.patch(f"{API}/teams/{world['team']['id']}", json={"name": None})
    assert response.status_code == 422


def test_patch_null_for_a_skill_key_is_422_naming_it(client, world) -> None:
    # A create may leave skill_key out (it is derived from the name); a patch may not null it.
    response = client.patch(f"{API}/genesis/skills/{world['skills'][0]['id']}", json={"skill_key": None})
    assert response.status_code == 422 and "skill_key" in response.get_json()["errors"][0]["message"]


def test_a_name_whose_derived_skill_key_is_too_long_gets_a_key_that_fits(client, gov) -> None:
    skill = _post(client, "/genesis/skills", {**gov, "name": "\u3388" * 100, "category": "technical",
                                            "description": "Calories, counted"})  # "㎈" is "cal"
    assert skill["skill_key"] == ("cal" * 100)[:200]


def test_skills_whose_names_have_no_ascii_letter_or_digit_get_keys_of_their_own(client, gov) -> None:
    """Each gets ``skill-`` and 16 hex digits of the SHA-256 of its NFC name, not one shared key
    (the second was a 409 on a skill_key its client never sent)."""
    import hashlib
    import unicodedata

    from models.skill_keys import slugify

    desc = {"description": "a perfectly ordinary description of this skill", "category": "technical"}
    keys = [_post(client, "/genesis/skills", {**gov, **desc, "name": name})["skill_key"] for name in ("日本語", "中文")]
    assert keys == ["skill-" + hashlib.sha256(name.encode()).hexdigest()[:16] for name in ("日本語", "中文")]
    assert slugify(unicodedata.normalize("NFD", "한국어")) == slugify("한국어") != slugify("日本語")
    assert slugify("Route Planning") == "route-planning" and slugify("㎈ 日本語") == "cal"


def test_names_whose_derived_skill_keys_collide_get_keys_of_their_own(client, gov) -> None:
    """``C++`` and ``C#`` both slug to ``c``: the second gets the slug and 16 hex digits of the
    SHA-256 of its NFC name (it was a 409 on a skill_key its client never sent); a key sent
    is kept as sent, and a long name's suffixed key still fits."""
    import hashlib

    desc = {"description": "a perfectly ordinary description of this skill", "category": "technical"}
    def key(name: str, **extra: str) -> str:
        return _post(client, "/genesis/skills", {**gov, **desc, "name": name, **extra})["skill_key"]

    def tag(name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()[:16]

    assert [key("C++"), key("C#"), key("Caf\u00e9 Ops"), key("Cafe Ops")] == ["c", f"c-{tag('C#')}", "cafe-ops",
                                                                          f"cafe-ops-{tag('Cafe Ops')}"]
    assert key("Sent Key", skill_key="my-own-key") == "my-own-key"
    long_name = "x" * 199 + "+"
    assert key("x" * 199) == "x" * 199 and key(long_name) == "x" * 183 + f"-{tag(long_name)}"


@pytest.mark.parametrize("field,value", [("name", "Null\u0000Name"), ("description", "nul \u0000"),
                                         ("tags", ["ok", "n\u0000l"]), ("attributes", {"deep": [{"k\u0000": 1}]})])
def test_a_nul_character_is_422_naming_its_field(client, world, field, value) -> None:
    """Neither text nor jsonb holds U+0000: the database refused it as "a value was refused by
    the database", naming no field (helper-120 L5). A backslash spelled out is not one."""
    url = f"{API}/genesis/industries/{world['industry']['id']}"
    response = client.patch(url, json={field: value})
    problem = response.get_json()
    assert response.status_code == 422 and problem["errors"] == [
        {"field": field, "message": "must not contain a NUL character (U+0000)"}], problem
    assert client.patch(url, json={"description": "a backslash and u0000: \\u0000"}).status_code == 200


def test_a_name_too_long_once_nfc_normalized_is_422_naming_it(client, world) -> None:
    # U+0958 is one code point of input and two once NFC-normalized: 150 fit the schema, 300 not the column.
    response = client.patch(f"{API}/teams/{world['team']['id']}", json={"name": "\u0958" * 150})
    problem = response.get_json()
    assert response.status_code == 422 and problem["errors"][0]["field"] == "name", problem


def test_if_match_with_a_stale_version_is_a_retryable_409(client, world) -> None:
    url = f"{API}/genesis/industries/{world['industry']['id']}"
    ok = client.patch(url, json={"description": "first"}, headers={"If-Match": '"1"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == '"2"'
    stale = client.patch(url, json={"description": "second"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 409
    assert stale.get_json()["type"] == "/problems/precondition-failed" and stale.get_json()["current_version"] == 2


def test_if_match_listing_several_versions_matches_any_of_them(client, world) -> None:
    url = f"{API}/genesis/industries/{world['industry']['id']}"
    ok = client.patch(url, json={"description": "first"}, headers={"If-Match": '"7", "1", W/"2"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == '"2"'
    stale = client.patch(url, json={"description": "second"}, headers={"If-Match": '"1", W/"2", "x"'})  # weak never matches
    assert stale.status_code == 409 and stale.get_json()["detail"] == "If-Match names 1; the entity is at version 2"


def test_a_team_s_etag_changes_with_its_members_and_if_match_takes_it_or_the_version(client, world, gov) -> None:
    """A team's ``members`` and ``free_seats`` change with no new version, so its strong ETag
    names them too (``"<version>.<members>"``); If-Match takes that tag while it is current,
    and the plain version as documented."""
    url, team = f"{API}/teams/{world['team']['id']}", world["team"]
    before = client.get(url)
    assert re.fullmatch(r'"1\.[0-9a-f]{16}"', before.headers["ETag"]), before.headers["ETag"]
    _post(client, "/agents", {**gov, "name": "Dispatch Two", "job_role_id": team["job_role_id"], "industry_id": team["industry_id"],
                              "skill_ids": [s["id"] for s in world["skills"]], "team_id": team["id"]})
    after = client.get(url)
    assert after.get_json()["version"] == 1 and after.get_json()["free_seats"] == before.get_json()["free_seats"] - 1
    assert after.headers["ETag"] != before.headers["ETag"]
    stale = client.patch(url, json={"description": "must not land"}, headers={"If-Match": before.headers["ETag"]})
    assert stale.status_code == 409 and stale.get_json()["type"] == "/problems/precondition-failed"
    by_tag = client.patch(url, json={"description": "by the full tag"}, headers={"If-Match": after.headers["ETag"]})
    assert by_tag.status_code == 200 and by_tag.headers["ETag"] == after.headers["ETag"].replace('"1.', '"2.')
    by_version = client.patch(url, json={"description": "by the version"}, headers={"If-Match": '"2"'})
    assert by_version.status_code == 200 and by_version.get_json()["version"] == 3
    assert client.get(f"{API}/genesis/industries/{world['industry']['id']}").headers["ETag"] == '"1"'


def test_lists_filter_and_paginate(client, world, gov) -> None:
    skills = client.get(f"{API}/genesis/skills", query_string={"industry_id": world["industry"]["id"], "page_size": 1}).get_json()
    assert len(skills["items"]) == 1 and skills["next_page_token"]
    rest = client.get(f"{API}/genesis/skills", query_string={"industry_id": world["industry"]["id"], "page_token": skills["next_page_token"]}).get_json()
    assert {s["id"] for s in skills["items"] + rest["items"]} == {s["id"] for s in world["skills"]}
    assert rest["next_page_token"] is None
    assert client.get(f"{API}/genesis/skills", query_string={"category": "soft_skill", "industry_id": world["industry"]["id"]}).get_json()["items"] == []
    assert client.get(f"{API}/agents", query_string={"team_id": world["team"]["id"]}).get_json()["items"][0]["id"] == world["agent"]["id"]
    assert client.get(f"{API}/genesis/skills", query_string={"status": "bogus"}).status_code == 422


def test_semantic_search_ranks_the_closest_skill_first(client, world) -> None:
    result = client.get(f"{API}/genesis/skills/search", query_string={"q": "fleet telemetry", "k": 2}).get_json()
    assert result["items"][0]["skill"]["name"] == "Fleet Telemetry"
    scores = [i["score"] for i in result["items"]]
    assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1
    assert client.get(f"{API}/genesis/skills/search").status_code == 422


def test_changing_text_recomputes_the_embedding(client, world) -> None:
    skill = world["skills"][0]
    client.patch(f"{API}/genesis/skills/{skill['id']}", json={"name": "Cold Chain Monitoring", "description": "Keeps refrigerated cargo cold"})
    top = client.get(f"{API}/genesis/skills/search", query_string={"q": "cold chain monitoring", "k": 1}).get_json()
    assert top["items"][0]["skill"]["id"] == skill["id"]


def test_rules_catalogue(client) -> None:
    rules = {r["id"]: r for r in client.get(f"{API}/rules").get_json()["items"]}
    assert {"L0-01", "L0-05", "SKILL-03", "JOBROLE-01", "TEAM-02", "AGENT-03", "INDUSTRY-01"} <= set(rules)
    assert rules["TEAM-01"]["severity"] == "warning" and not rules["TEAM-01"]["gates_writes"]
    assert rules["L0-01"]["entity_type"] is None and rules["SKILL-01"]["entity_type"] == "skill"
    # Every rule about an entity's own field names it; those about its chain and the database none.
    assert {rid for rid, rule in rules.items() if rule["field"] is None} == {"L0-02", "L0-03", "L0-04", "L0-05", "TEAM-01"}
    assert (rules["L0-01"]["field"], rules["TEAM-03"]["field"], rules["AGENT-04"]["field"]) == (
        "governance_agent_id", "capacity", "team_id")


def test_sixteen_concurrent_patches_give_a_linear_chain(app, world, keyring, admin_key) -> None:
    url = f"{API}/genesis/industries/{world['industry']['id']}"

    def patch(n: int) -> int:
        return app.test_client().patch(url, json={"description": f"concurrent edit {n}"},
                                       headers={"Authorization": f"Bearer {admin_key}"}).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(patch, range(16)))
    assert statuses == [200] * 16
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    items = client.get(url + "/history").get_json()["items"]
    assert [v["version"] for v in items] == list(range(1, 18))
    assert all(b["prev_link"] == a["link_hash"] for a, b in zip(items, items[1:], strict=False))
    assert client.get(url).get_json()["version"] == 17


# Team membership follows the assignment rules whichever write sets it (models.membership).


def _agent(client, world, gov, name, status=201, **fields) -> dict:
    body = {**gov, "name": name, "job_role_id": world["role"]["id"], "industry_id": world["industry"]["id"],
            "skill_ids": [s["id"] for s in world["skills"]], "team_id": world["team"]["id"], **fields}
    return _post(client, "/agents", body, status=status)


def test_an_agent_written_into_a_full_team_is_409_team_full(client, world, gov) -> None:
    _agent(client, world, gov, "Dispatch Two")
    _agent(client, world, gov, "Dispatch Three")  # the team's 3 seats are taken
    refused = _agent(client, world, gov, "Dispatch Four", status=409)
    assert refused["type"].endswith("/team-full") and refused["field"] == "team_id"
    outsider = _agent(client, world, gov, "Dispatch Five", team_id=None)
    response = client.patch(f"{API}/agents/{outsider['id']}", json={"team_id": world["team"]["id"]})
    assert response.status_code == 409 and response.get_json()["type"].endswith("/team-full")
    team = client.get(f"{API}/teams/{world['team']['id']}").get_json()
    assert len(team["members"]) == 3 and team["free_seats"] == 0


def test_an_agent_written_into_a_team_it_does_not_qualify_for_is_422(client, world, gov) -> None:
    refused = _agent(client, world, gov, "Unskilled", status=422, skill_ids=[])
    assert refused["type"].endswith("/not-eligible") and refused["field"] == "team_id"
    assert refused["reasons"] == ["agent lacks 2 required skill(s)"]
    other_role = _post(client, "/genesis/job-roles", {**gov, "name": "Loader", "seniority": "junior",
                                                       "required_skill_ids": [world["skills"][0]["id"]]})
    assert _agent(client, world, gov, "Loader One", status=422, job_role_id=other_role["id"])["reasons"] == [
        "team's job role is not the agent's"]


def test_an_agent_in_a_team_leaves_it_to_stop_qualifying(client, world) -> None:
    path = f"{API}/agents/{world['agent']['id']}"
    for change in ({"status": "retired"}, {"skill_ids": [world["skills"][0]["id"]]}):
        refused = client.patch(path, json=change)
        assert refused.status_code == 422 and refused.get_json()["type"].endswith("/not-eligible"), change
    assert client.get(path).get_json()["version"] == 1  # nothing was written
    left = client.patch(path, json={"status": "retired", "team_id": None})
    assert left.status_code == 200 and left.get_json()["team_id"] is None
    assert client.patch(path, json={"description": "retired after ten years"}).status_code == 200


def test_a_team_cannot_shrink_below_or_change_away_from_its_members(client, world, gov) -> None:
    _agent(client, world, gov, "Dispatch Two")
    path = f"{API}/teams/{world['team']['id']}"
    shrink = client.patch(path, json={"capacity": 1})
    assert shrink.status_code == 409 and shrink.get_json()["field"] == "capacity"
    assert shrink.get_json()["member_count"] == 2
    assert client.patch(path, json={"capacity": 2}).status_code == 200
    retire = client.patch(path, json={"status": "retired"})
    assert retire.status_code == 409 and retire.get_json()["field"] == "status"
    assert {m["agent_id"] for m in retire.get_json()["members"]} >= {world["agent"]["id"]}
    other_role = _post(client, "/genesis/job-roles", {**gov, "name": "Loader", "seniority": "junior",
                                                       "required_skill_ids": [world["skills"][0]["id"]]})
    assert client.patch(path, json={"job_role_id": other_role["id"]}).status_code == 409
    team = client.get(path).get_json()
    assert (team["capacity"], team["status"], team["job_role_id"]) == (2, "active", world["role"]["id"])


def test_a_job_role_cannot_require_a_skill_its_seated_agents_lack(client, world, gov) -> None:
    path = f"{API}/genesis/job-roles/{world['role']['id']}"
    extra = _post(client, "/genesis/skills", {**gov, "name": "Cold Chain", "category": "technical",
                                              "description": "Keeping freight cold"})
    wanted = [*(s["id"] for s in world["skills"]), extra["id"]]
    refused = client.patch(path, json={"required_skill_ids": wanted})
    assert refused.status_code == 409 and refused.get_json()["field"] == "required_skill_ids"
    assert refused.get_json()["members"] == [{"agent_id": world["agent"]["id"], "team_id": world["team"]["id"],
                                             "reasons": ["agent lacks 1 required skill(s)"]}]
    assert client.get(path).get_json()["version"] == 1  # nothing was written
    # Dropping a requirement admits everyone still; once the agent holds the skill, requiring it is fine.
    assert client.patch(path, json={"required_skill_ids": wanted[:1]}).status_code == 200
    assert client.patch(f"{API}/agents/{world['agent']['id']}", json={"skill_ids": wanted}).status_code == 200
    assert client.patch(path, json={"required_skill_ids": wanted}).status_code == 200


def test_parallel_agent_writes_into_one_team_never_exceed_its_capacity(app, admin_key, world, gov) -> None:
    outsiders = [_agent(app_client(app, admin_key), world, gov, f"Parallel {n}", team_id=None)["id"] for n in range(12)]

    def join(agent_id: str) -> int:
        return app_client(app, admin_key).patch(f"{API}/agents/{agent_id}", json={"team_id": world["team"]["id"]}).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = sorted(pool.map(join, outsiders))
    assert statuses == [200] * 2 + [409] * 10  # 3 seats, 1 already taken
    assert len(app_client(app, admin_key).get(f"{API}/teams/{world['team']['id']}").get_json()["members"]) == 3


def app_client(app, admin_key):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    return client


def test_an_entity_edited_in_sql_to_hold_a_number_too_large_for_a_float_is_still_served_as_json(client, gov, engine) -> None:
    """jsonb keeps ``1e400 + 0.5`` exactly; Python reads such a fraction as infinity and wrote it
    back as ``Infinity``, which is not JSON: a strict client could read neither the entity nor
    any page listing it. It reads as the marker for JSON Python cannot read (models.db.load_json)."""
    industry = _post(client, "/genesis/industries", {**gov, "name": "Huge", "code": "HUG"})
    with engine.begin() as connection:
        connection.execute(text("UPDATE industries SET attributes = jsonb_build_object('x', 1e400::numeric + 0.5) "
                                "WHERE id = :id"), {"id": industry["id"]})

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    for path in (f"/genesis/industries/{industry['id']}", "/genesis/industries"):
        response = client.get(API + path)
        assert response.status_code == 200
        body = json.loads(response.get_data(as_text=True), parse_constant=refuse)
        shown = body if "id" in body else next(item for item in body["items"] if item["id"] == industry["id"])
        assert shown["attributes"] == UNREADABLE_JSON


@pytest.mark.parametrize("raw,field", [
    ('{"x": 1e300}', "$.attributes.x"),
    ('{"x": [1, {"y": -1.5e21}]}', "$.attributes.x[1].y"),
    ('{"x": 1e21}', "$.attributes.x"),
])
def test_a_float_jsonb_would_give_back_as_an_integer_is_refused(client, gov, raw, field) -> None:
    """jsonb writes ``1e+21`` back as ``1000000000000000000000``, an integer beyond 2**53: the
    row could never match the version that signed it, and the entity was reported tampered
    from its creation on, every later write refused (helper-65)."""
    body = json.dumps({**gov, "name": "Big Numbers", "code": "BIG"})[:-1] + f', "attributes": {raw}}}'
    response = client.post(f"{API}/genesis/industries", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.get_json()["field"] == field


def test_floats_jsonb_gives_back_as_they_are_are_kept_and_the_entity_stays_untampered(client, gov) -> None:
    attributes = {"small": 1e-300, "fraction": 2.5, "large": 9.007199254740991e15, "negative": -123.456, "tiny_negative": -5e-324}
    created = _post(client, "/genesis/industries", {**gov, "name": "Floats", "code": "FLT", "attributes": attributes})
    assert client.get(f"{API}/genesis/industries/{created['id']}").get_json()["attributes"] == attributes
    patched = client.patch(f"{API}/genesis/industries/{created['id']}", json={"description": "a later edit"})
    assert patched.status_code == 200, patched.get_json()
    assert client.get(f"{API}/audit/tampering/{created['id']}").get_json()["tampered"] is False


def test_serving_a_team_asks_the_catalog_nothing(client, world, app) -> None:
    """A served team re-evaluates only L1's member rules, which read no database guard: its GET
    (and every page of teams) ran the append-only triggers' catalog query all the same."""
    from sqlalchemy import event

    engine = app.extensions["plant"].engine
    statements: list[str] = []

    def note(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        assert client.get(f"{API}/teams/{world['team']['id']}").status_code == 200
        assert client.get(f"{API}/teams").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert statements and not [s for s in statements if "pg_trigger" in s]
