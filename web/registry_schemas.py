"""Request and response models of the governed registry API.

Create models describe every writable field; each PATCH model is derived from its
create model (every field optional, explicit null refused where the column cannot be
null). Blank names and descriptions are left to the constitution, so a write that
breaks an L1 rule is refused with the rule ids rather than a generic length error.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model, field_serializer, model_validator

from models.entities import AgentStatus, LifecycleStatus, Seniority, SkillCategory
from models.skill_keys import SKILL_KEY_LENGTH
from web.schemas import QueryModel, members_refused, rfc3339_utc

Name = Field(max_length=200)
Text = Field(default="", max_length=20_000)


class GovernanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_key: StrictStr | None = Field(default=None, max_length=128)
    tags: list[Annotated[StrictStr, Field(max_length=100)]] = Field(default_factory=list, max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict)
    governance_notes: StrictStr | None = Field(default=None, max_length=20_000)
    governance_agent_id: uuid.UUID | None = None
    parent_id: uuid.UUID | None = None


class IndustryIn(GovernanceIn):
    name: StrictStr = Name
    code: StrictStr = Field(pattern=r"^[A-Z][A-Z0-9]{1,7}$", description="short upper-case code, e.g. MKT; GEN is reserved "
                      "(certificates name it for skills with no industry)")
    description: StrictStr = Text
    status: LifecycleStatus = LifecycleStatus.ACTIVE


class SkillIn(GovernanceIn):
    name: StrictStr = Name
    skill_key: StrictStr | None = Field(
        default=None, max_length=SKILL_KEY_LENGTH, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$",
        description="slug; derived from the name if omitted: its ASCII letters and digits, hyphenated, or for a "
                    "name with none, 'skill-' and the first 16 hex digits of the SHA-256 of its NFC form",
    )
    description: StrictStr = Text
    category: SkillCategory
    industry_id: uuid.UUID | None = None
    status: Literal["draft", "pending_certification", "retired"] = "draft"


class JobRoleIn(GovernanceIn):
    name: StrictStr = Name
    description: StrictStr = Text
    required_skill_ids: list[uuid.UUID] = Field(default_factory=list, max_length=200)
    seniority: Seniority
    industry_id: uuid.UUID | None = None
    status: LifecycleStatus = LifecycleStatus.ACTIVE


class TeamIn(GovernanceIn):
    name: StrictStr = Name
    description: StrictStr = Text
    job_role_id: uuid.UUID
    industry_id: uuid.UUID | None = None
    capacity: StrictInt = Field(ge=1, le=100_000)
    status: LifecycleStatus = LifecycleStatus.ACTIVE


class AgentIn(GovernanceIn):
    name: StrictStr = Name
    description: StrictStr = Text
    skill_ids: list[uuid.UUID] = Field(default_factory=list, max_length=500)
    job_role_id: uuid.UUID | None = None
    industry_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    status: AgentStatus = AgentStatus.ACTIVE


def patch_model(create: type[BaseModel], *, not_null: tuple[str, ...] = ()) -> type[BaseModel]:
    """Every field optional; a field that cannot be null may be omitted but not nulled.

    ``not_null`` names fields that a create may leave null (the server fills them in) but a
    patch may not null."""
    not_nullable = {name for name, f in create.model_fields.items() if type(None) not in get_args(f.annotation)}
    not_nullable |= set(not_null)

    def refuse_nulls(self: BaseModel) -> BaseModel:
        nulled = sorted(n for n in self.model_fields_set & not_nullable if getattr(self, n) is None)
        if nulled:
            raise members_refused(f"these fields cannot be null: {', '.join(nulled)}", *nulled)
        return self

    if not create.__name__.endswith("In"):
        raise ValueError(f"a create model's name ends in 'In', not {create.__name__!r}")
    fields = {name: (Optional[f.annotation], Field(default=None, **_constraints(f))) for name, f in create.model_fields.items()}  # noqa: UP045
    return create_model(
        create.__name__.removesuffix("In") + "Patch",  # IndustryIn -> IndustryPatch (not the "In" of "Industry")
        __config__=ConfigDict(extra="forbid"),
        __validators__={"refuse_nulls": model_validator(mode="after")(refuse_nulls)},
        **fields,
    )


def _constraints(field: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in field.metadata:
        for key in ("max_length", "ge", "le", "pattern"):
            if getattr(meta, key, None) is not None:
                out[key] = getattr(meta, key)
    return out


IndustryPatch = patch_model(IndustryIn)
SkillPatch = patch_model(SkillIn, not_null=("skill_key",))  # derived from the name only at creation
JobRolePatch = patch_model(JobRoleIn)
TeamPatch = patch_model(TeamIn)
AgentPatch = patch_model(AgentIn)


class ConstitutionOut(BaseModel):
    l0: dict[str, Any] | None
    l1: dict[str, Any] | None


class EntityOut(BaseModel):
    """Governance sections shared by every entity resource; each type's own (``SkillOut``...)
    adds its fields."""

    model_config = ConfigDict(extra="allow")
    id: uuid.UUID
    entity_type: str
    external_key: str | None
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None
    version: int
    head_link_hash: str | None
    constitution: ConstitutionOut
    tags: list[str]
    attributes: dict[str, Any]
    governance_notes: str | None
    governance_agent_id: uuid.UUID | None
    parent_id: uuid.UUID | None

    @field_serializer("created_at", "updated_at", "deleted_at")
    def _utc(self, value: dt.datetime | None) -> str | None:
        return rfc3339_utc(value)


class IndustryOut(EntityOut):
    name: str
    code: str
    description: str


class SkillOut(EntityOut):
    name: str
    skill_key: str
    description: str
    category: str
    industry_id: uuid.UUID | None
    certificate: dict[str, Any] | None = Field(description="the certificate a certification issued; null until then")


class JobRoleOut(EntityOut):
    name: str
    description: str
    required_skill_ids: list[uuid.UUID]
    seniority: str
    industry_id: uuid.UUID | None


class TeamOut(EntityOut):
    name: str
    description: str
    job_role_id: uuid.UUID
    industry_id: uuid.UUID | None
    capacity: int
    members: list[uuid.UUID] = Field(description="the ids of the agents seated in the team; no chain version records a "
                                                "change of them (the ETag does)")
    free_seats: int = Field(description="capacity less the members")


class AgentOut(EntityOut):
    name: str
    description: str
    skill_ids: list[uuid.UUID]
    job_role_id: uuid.UUID | None
    industry_id: uuid.UUID | None
    team_id: uuid.UUID | None


class IndustryList(BaseModel):
    items: list[IndustryOut]
    next_page_token: str | None


class SkillList(BaseModel):
    items: list[SkillOut]
    next_page_token: str | None


class JobRoleList(BaseModel):
    items: list[JobRoleOut]
    next_page_token: str | None


class TeamList(BaseModel):
    items: list[TeamOut]
    next_page_token: str | None


class AgentList(BaseModel):
    items: list[AgentOut]
    next_page_token: str | None


class VersionOut(BaseModel):
    version: int
    content: str = Field(description="the stored canonical RFC 8785 JSON, exactly as hashed")
    content_hash: str
    prev_link: str
    link_hash: str
    kid: str
    signature: str = Field(description="base64url, no padding")
    actor: str
    created_at: str


class HistoryOut(BaseModel):
    entity_type: str
    entity_id: uuid.UUID
    items: list[VersionOut]


class EntityPath(BaseModel):
    entity_id: uuid.UUID


class PageQuery(QueryModel):
    page_size: int = Field(default=50, ge=1, le=500)
    page_token: str | None = Field(default=None, max_length=512)


class SkillListQuery(PageQuery):
    category: SkillCategory | None = None
    status: Literal["draft", "pending_certification", "certified", "rejected", "retired"] | None = None
    industry_id: uuid.UUID | None = None


class JobRoleListQuery(PageQuery):
    status: LifecycleStatus | None = None
    seniority: Seniority | None = None
    industry_id: uuid.UUID | None = None


class IndustryListQuery(PageQuery):
    status: LifecycleStatus | None = None


class TeamListQuery(PageQuery):
    status: LifecycleStatus | None = None
    job_role_id: uuid.UUID | None = None
    industry_id: uuid.UUID | None = None


class AgentListQuery(PageQuery):
    status: AgentStatus | None = None
    job_role_id: uuid.UUID | None = None
    industry_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None


class SkillSearchQuery(QueryModel):
    q: str = Field(min_length=1, max_length=1000)  # query strings are text by nature
    k: int = Field(default=10, ge=1, le=100)


class ScoredSkillOut(BaseModel):
    score: float
    skill: SkillOut


class SkillSearchOut(BaseModel):
    query: str
    items: list[ScoredSkillOut]


class RuleOut(BaseModel):
    id: str
    level: str
    entity_type: str | None
    description: str
    severity: str
    gates_writes: bool
    field: str | None = Field(description="the entity's field the rule judges (a refusal's violation names it); "
                                          "null for the L0 rules about the chain and the database")


class RuleList(BaseModel):
    version: str = Field(description="SHA-256 (hex) of the catalogue's declared rules (id, level, entity type, "
                                     "description, severity) and its checks' revision: audit summaries name it")
    items: list[RuleOut]
