"""The governed registry's HTTP API: industries, skills, job roles, teams, agents.

Each entity type gets the same five routes (list, create, show, patch, history), built
from one table of :class:`EntityRoute` specs so every type behaves identically. A create
honours ``Idempotency-Key`` as a job submission does (``models.idempotency``): the same key
and body get the entity it created, 201 with ``Idempotent-Replayed: true``. Writes
go through ``models.registry``; responses carry ``ETag: "<version>"`` (a team's also names
its members: ``"<version>.<members>"``) and PATCH honours ``If-Match`` (a stale version
answers 409 ``precondition-failed``, safe to retry after re-reading).
"""

from __future__ import annotations

import base64
import hashlib
import json as plain_json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, json, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel

from models.chain import EntityVersion, history
from models import constitution
from models.constitution import Severity
from models.entities import EntityType, GovernedEntity, Team, governed_content
from models.key_seals import published_keyring
from models.entity_locks import lock_entity
from models.idempotency import claim_key_for_entity
from models.registry import (
    WriteContext, create_entity, get_entity, list_entities, search_skills, served_team_l1, team_members,
    update_entity,
)
from web.registry_schemas import (
    AgentIn, AgentList, AgentListQuery, AgentOut, AgentPatch, EntityPath, HistoryOut, IndustryIn, IndustryList,
    IndustryListQuery, IndustryOut, IndustryPatch, JobRoleIn, JobRoleList, JobRoleListQuery, JobRoleOut, JobRolePatch,
    RuleList, SkillIn, SkillList, SkillListQuery, SkillOut, SkillPatch, SkillSearchOut, SkillSearchQuery, TeamIn,
    TeamList, TeamListQuery, TeamOut, TeamPatch,
)
from web.idempotency_http import idempotency_key, key_owner, mark_replayed
from web.openapi_headers import (
    ENTITY_ETAG, ENTITY_IDEMPOTENCY_KEY, ENTITY_LOCATION, ENTITY_REPLAYED, IF_MATCH, documents_headers,
)
from web.schemas import API_PROBLEMS, problems, rfc3339_utc
from web.auth import BEARER, current_actor
from web.services import db_session, services

registry_api = APIBlueprint("registry", __name__, url_prefix="/api/v1", abp_security=BEARER, abp_responses=API_PROBLEMS)


@dataclass(frozen=True)
class EntityRoute:
    entity_type: EntityType
    path: str
    create: type[BaseModel]
    patch: type[BaseModel]
    list_query: type[BaseModel]
    out: type[BaseModel]  # the resource, as /openapi.json documents it
    list_out: type[BaseModel]

    @property
    def name(self) -> str:
        return self.entity_type.value


ROUTES = (
    EntityRoute(EntityType.INDUSTRY, "/genesis/industries", IndustryIn, IndustryPatch, IndustryListQuery, IndustryOut,
                IndustryList),
    EntityRoute(EntityType.SKILL, "/genesis/skills", SkillIn, SkillPatch, SkillListQuery, SkillOut, SkillList),
    EntityRoute(EntityType.JOB_ROLE, "/genesis/job-roles", JobRoleIn, JobRolePatch, JobRoleListQuery, JobRoleOut,
                JobRoleList),
    EntityRoute(EntityType.TEAM, "/teams", TeamIn, TeamPatch, TeamListQuery, TeamOut, TeamList),
    EntityRoute(EntityType.AGENT, "/agents", AgentIn, AgentPatch, AgentListQuery, AgentOut, AgentList),
)


def hex_or_none(value: bytes | None) -> str | None:
    return bytes(value).hex() if value is not None else None


def entity_resource(entity: GovernedEntity) -> dict[str, Any]:
    """The JSON resource: governance sections, type fields, and relationship views."""
    body = governed_content(entity)
    body.update(
        created_at=rfc3339_utc(entity.created_at),
        updated_at=rfc3339_utc(entity.updated_at),
        version=entity.version,
        head_link_hash=hex_or_none(entity.head_link_hash),
        constitution={"l0": entity.constitution_l0, "l1": entity.constitution_l1},
    )
    if isinstance(entity, Team):  # members change with no new version: so do the rules that read them
        session = db_session()
        members = team_members(session, team_id=entity.id)
        body.update(members=[str(m) for m in members], free_seats=entity.capacity - len(members),
                    constitution={"l0": entity.constitution_l0, "l1": served_team_l1(session, entity, len(members))})
    return body


def members_tag(members: list[str]) -> str:
    """16 hex digits of the SHA-256 of a team's member ids, in the order its resource lists them."""
    return hashlib.sha256(",".join(members).encode()).hexdigest()[:16]


def entity_tag(entity: GovernedEntity, resource: dict[str, Any]) -> str:
    """The strong ETag's value: the version, which covers every governed field. A team's
    resource also lists its ``members`` (and ``free_seats``), which change with no new
    version, so its tag is ``<version>.<members_tag>``: one tag, one representation."""
    if isinstance(entity, Team):
        return f"{entity.version}.{members_tag(resource['members'])}"
    return str(entity.version)


def entity_response(entity: GovernedEntity, status: int = 200) -> Response:
    resource = entity_resource(entity)
    response = Response(json.dumps(resource), status=status, mimetype="application/json")
    response.set_etag(entity_tag(entity, resource))
    if status == 201:
        response.headers["Location"] = request.path.rstrip("/") + f"/{entity.id}"
    return response


def write_context() -> WriteContext:
    svc = services()
    return WriteContext(actor=current_actor(), keyring=svc.keyring, embedder=svc.embedder)


VERSION_TAG = re.compile(r"[1-9][0-9]{0,9}")  # versions are int4; int() caps at 4,300 digits
TEAM_TAG = re.compile(r"([1-9][0-9]{0,9})\.([0-9a-f]{16})")


def expected_versions(current_members_tag: Callable[[], str] | None = None) -> frozenset[int] | None:
    """The versions named by ``If-Match``; the write goes ahead when the entity is at any
    of them (RFC 9110, strong comparison).

    ``"<version>"`` names that version, for every type: for a team it compares the
    governed version alone, as it always has. A team's full tag ``"<version>.<members>"``
    names its version only while ``<members>`` is the team's (``current_members_tag``, read
    under the team's row lock), so it matches exactly when it is the current ETag.
    Only a version's own spelling names it, as the ETag writes it: ASCII digits with no
    leading zero (``str.isdigit`` also accepts characters such as "²" that ``int`` cannot
    read, and ``int`` reads "01" as 1). A tag that names no version matches nothing.

    An ``If-Match`` sent but unreadable (blank, ``""``, a list missing its commas, an
    unterminated tag) names no version either: werkzeug parses it to no tags (or to None
    for ``""``), and taking that for no header applied the write unconditionally, the lost
    update the client sent the header to prevent.
    """
    if request.headers.get("If-Match") is None or request.if_match.star_tag:
        return None
    # Strong tags only: a weak one never matches If-Match. werkzeug reads '""' as the tag None.
    tags = {tag for tag in request.if_match.as_set() if tag is not None}
    versions = {int(tag) for tag in tags if VERSION_TAG.fullmatch(tag)}
    team_tags = [m for m in map(TEAM_TAG.fullmatch, tags) if m]
    if team_tags and current_members_tag is not None:
        members = current_members_tag()
        versions |= {int(m[1]) for m in team_tags if m[2] == members}
    return frozenset(versions)


def _current_members_tag(entity_type: EntityType, entity_id: Any) -> Callable[[], str] | None:
    """For a team, what reads its members tag as a PATCH's precondition needs it: under the
    team's row lock, which a seat taken in it also takes (update_entity takes it again)."""
    if entity_type is not EntityType.TEAM:
        return None

    def read() -> str:
        session = db_session()
        lock_entity(session, EntityType.TEAM, entity_id)
        return members_tag([str(m) for m in team_members(session, team_id=entity_id)])

    return read


def _create_view(route: EntityRoute) -> Callable[..., Response]:
    def view(body: BaseModel) -> Response:
        data = body.model_dump(mode="python")
        session = db_session()
        entity_id = None
        if (key := idempotency_key()) is not None:
            claim = claim_key_for_entity(session, owner=key_owner(), key=key, fingerprint=_create_fingerprint(route, body),
                                         ttl_seconds=services().settings.idempotency_ttl_seconds)
            if claim.replayed:
                session.commit()
                entity = get_entity(session, entity_type=route.entity_type, entity_id=claim.entity_id)
                return mark_replayed(entity_response(entity, status=201))
            entity_id = claim.entity_id
        entity = create_entity(session, entity_type=route.entity_type, data=_enum_values(data), ctx=write_context(),
                               entity_id=entity_id)
        session.commit()
        return entity_response(entity, status=201)

    return _named(view, f"create_{route.name}", f"Create a {route.name}; answers 201.", body=route.create)


def _create_fingerprint(route: EntityRoute, body: BaseModel) -> bytes:
    """The SHA-256 an ``Idempotency-Key`` is stored with: the entity type and the body as read
    (so member order, spacing and defaults spelt out make no difference). Plain sorted JSON,
    not canonical JSON: what canonical JSON refuses, the create refuses with its field named.
    So it encodes a lone surrogate (JSON's "\\ud800", which UTF-8 cannot hold) rather than
    raise before the create can refuse it (a 500); every other string's bytes are UTF-8's."""
    payload = {"create": route.name, "body": body.model_dump(mode="json")}
    text = plain_json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _patch_view(route: EntityRoute) -> Callable[..., Response]:
    def view(path: EntityPath, body: BaseModel) -> Response:
        changes = _enum_values({k: getattr(body, k) for k in body.model_fields_set})
        session = db_session()
        entity = update_entity(
            session, entity_type=route.entity_type, entity_id=path.entity_id, changes=changes,
            ctx=write_context(), expected_versions=expected_versions(_current_members_tag(route.entity_type, path.entity_id)),
        )
        session.commit()
        return entity_response(entity)

    return _named(view, f"update_{route.name}", f"Change a {route.name}; appends one chain version.",
                  path=EntityPath, body=route.patch)


def _show_view(route: EntityRoute) -> Callable[..., Response]:
    def view(path: EntityPath) -> Response:
        return entity_response(get_entity(db_session(), entity_type=route.entity_type, entity_id=path.entity_id))

    return _named(view, f"show_{route.name}", f"Show a {route.name}.", path=EntityPath)


def _list_view(route: EntityRoute) -> Callable[..., Response]:
    def view(query: BaseModel) -> dict[str, Any]:
        filters = _enum_values(query.model_dump(exclude={"page_size", "page_token"}))
        page = list_entities(db_session(), entity_type=route.entity_type, filters=filters,
                             page_size=query.page_size, page_token=query.page_token)  # type: ignore[attr-defined]
        return {"items": [entity_resource(e) for e in page.items], "next_page_token": page.next_page_token}

    return _named(view, f"list_{route.name}s", f"List {route.name}s, newest first, cursor-paginated.",
                  query=route.list_query)


def _history_view(route: EntityRoute) -> Callable[..., dict[str, Any]]:
    def view(path: EntityPath) -> dict[str, Any]:
        session = db_session()
        get_entity(session, entity_type=route.entity_type, entity_id=path.entity_id)
        return {
            "entity_type": route.name,
            "entity_id": str(path.entity_id),
            "items": [version_resource(v) for v in history(session, entity_id=path.entity_id)],
        }

    return _named(view, f"{route.name}_history", f"Every chain version of a {route.name}.", path=EntityPath)


def version_resource(row: EntityVersion) -> dict[str, Any]:
    return {
        "version": row.version,
        "content": bytes(row.content).decode("utf-8"),
        "content_hash": bytes(row.content_hash).hex(),
        "prev_link": bytes(row.prev_link).hex(),
        "link_hash": bytes(row.link_hash).hex(),
        "kid": row.kid,
        "signature": base64.urlsafe_b64encode(bytes(row.signature)).decode().rstrip("="),
        "actor": row.actor,
        "created_at": rfc3339_utc(row.created_at),
    }


def _named(view: Callable[..., Any], name: str, doc: str, **annotations: type) -> Callable[..., Any]:
    view.__name__ = view.__qualname__ = name
    view.__doc__ = doc
    view.__annotations__ = {**annotations, "return": Response}
    return view


def _enum_values(data: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in data.items()}


ERRORS = problems(404, 409, 422)


def register_entity_routes(bp: APIBlueprint) -> None:
    for route in ROUTES:
        tags = [Tag(name=route.name)]
        item = route.path + "/<entity_id>"
        bp.get(route.path, tags=tags, responses={200: route.list_out, **problems(422)})(_list_view(route))
        bp.post(route.path, tags=tags, responses={201: route.out, **ERRORS})(
            documents_headers(request=[ENTITY_IDEMPOTENCY_KEY], responses={
                201: {"ETag": ENTITY_ETAG, "Location": ENTITY_LOCATION, "Idempotent-Replayed": ENTITY_REPLAYED}})(
                _create_view(route)))
        bp.get(item, tags=tags, responses={200: route.out, **problems(404)})(
            documents_headers(responses={200: {"ETag": ENTITY_ETAG}})(_show_view(route)))
        bp.patch(item, tags=tags, responses={200: route.out, **ERRORS})(
            documents_headers(request=[IF_MATCH], responses={200: {"ETag": ENTITY_ETAG}})(_patch_view(route)))
        bp.get(item + "/history", tags=tags, responses={200: HistoryOut, **problems(404)})(_history_view(route))


@registry_api.get("/genesis/skills/search", tags=[Tag(name="skill")], responses={200: SkillSearchOut, **problems(422)})
def search_skills_view(query: SkillSearchQuery) -> dict[str, Any]:
    """Semantic search: skills ranked by cosine similarity to ``q``, with scores."""
    hits = search_skills(db_session(), query=query.q, k=query.k, embedder=services().embedder)
    return {"query": query.q, "items": [{"score": h.score, "skill": entity_resource(h.skill)} for h in hits]}


register_entity_routes(registry_api)


@registry_api.get("/rules", tags=[Tag(name="constitution")], responses={200: RuleList})
def list_rules() -> dict[str, Any]:
    """The constitution's rule catalogue, and its version: what audit summaries and stored rule
    results name (``models.constitution.constitution_version``)."""
    return {
        "version": constitution.constitution_version(),
        "items": [
            {
                "id": r.id, "level": r.level, "entity_type": r.entity_type.value if r.entity_type else None,
                "description": r.description, "severity": r.severity.value,
                "gates_writes": r.severity is Severity.ERROR, "field": constitution.RULE_FIELDS.get(r.id),
            }
            for r in constitution.RULES
        ]
    }


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


@registry_api.get("/signing-keys", tags=[Tag(name="constitution")], responses={200: Jwks})
def signing_keys() -> dict[str, Any]:
    """Public keys (JWK Set) that verify every chain signature, active key first; a retired key's
    entry says so (``plant_retired``), and an upcoming key's (``plant_upcoming``). A sealed key's
    entry names its seal time and, where its seal lists them, the SHA-256 of every signature it
    made outside the chain (``plant_sealed_at``, ``plant_sealed_signatures``); 503
    ``seal-list-invalid`` while the database's list does not match its seal."""
    return published_keyring(services().keyring, db_session()).jwks()

