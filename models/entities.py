"""The governed registry's tables: industries, skills, job roles, teams and agents.

Every entity carries the seven governance sections of the original BaseEntity
(identity, lifecycle, versioning, constitutional alignment, audit trail, metadata,
relationships) through :class:`GovernedEntity`; the audit trail itself is the
``entity_versions`` chain (``models.chain``). The fields listed in ``GOVERNED_FIELDS``
are exactly what each chain version's canonical content holds, so an entity row can
always be compared with its head version; :func:`load_entities` reads rows as plain
snapshots of those fields, for the audit and the rules about seats.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    ARRAY, CheckConstraint, Column, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Table, Text, Uuid, select, text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column, relationship

from models.base import Base, CreatedAt, Timestamp, UpdatedAt, UUIDPk
from models.canonical import rfc3339_utc
from models.embeddings import EMBEDDING_DIM


class EntityType(str, enum.Enum):
    INDUSTRY = "industry"
    SKILL = "skill"
    JOB_ROLE = "job_role"
    TEAM = "team"
    AGENT = "agent"


class SkillCategory(str, enum.Enum):
    TECHNICAL = "technical"
    SOFT_SKILL = "soft_skill"
    DOMAIN_EXPERTISE = "domain_expertise"
    CERTIFICATION = "certification"


class SkillStatus(str, enum.Enum):
    DRAFT = "draft"
    PENDING_CERTIFICATION = "pending_certification"
    CERTIFIED = "certified"
    REJECTED = "rejected"
    RETIRED = "retired"


class Seniority(str, enum.Enum):
    JUNIOR = "junior"
    MID = "mid"
    SENIOR = "senior"


class AgentStatus(str, enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


class LifecycleStatus(str, enum.Enum):
    """Status of industries, job roles and teams."""

    ACTIVE = "active"
    RETIRED = "retired"


def sql_in(column: str, values: type[enum.Enum]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v.value}'" for v in values) + ")"


class GovernedEntity(Base):
    """Columns shared by every governed entity.

    Embeddings are deferred (loaded on first access): most reads never need 384 floats,
    and parsing them dominated bulk reads.
    """

    __abstract__ = True
    entity_type_value: EntityType
    status_enum: type[enum.Enum] = LifecycleStatus

    # identity
    id: Mapped[UUIDPk]
    external_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    # lifecycle (status is declared per table: its allowed values differ)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    deleted_at: Mapped[Timestamp | None]
    # versioning
    version: Mapped[int] = mapped_column(Integer, server_default="0")
    head_link_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # constitutional alignment (last evaluation)
    constitution_l0: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    constitution_l1: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # metadata
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    governance_notes: Mapped[str | None] = mapped_column(Text)
    # relationships
    @declared_attr
    def governance_agent_id(cls) -> Mapped[uuid.UUID | None]:  # noqa: N805
        return mapped_column(
            UUID(as_uuid=True),
            ForeignKey("agents.id", use_alter=True, deferrable=True, initially="DEFERRED"),
        )

    @declared_attr
    def parent_id(cls) -> Mapped[uuid.UUID | None]:  # noqa: N805
        return mapped_column(UUID(as_uuid=True), ForeignKey(f"{cls.__tablename__}.id"))

    @declared_attr
    def entity_type(cls) -> Mapped[str]:  # noqa: N805
        return mapped_column(String(16), server_default=cls.entity_type_value.value)

    @declared_attr.directive
    def __table_args__(cls) -> tuple:  # noqa: N805
        return (
            CheckConstraint(f"entity_type = '{cls.entity_type_value.value}'", name="entity_type_fixed"),
            CheckConstraint(sql_in("status", cls.status_enum), name="status_valid"),
            CheckConstraint("version >= 0", name="version_non_negative"),
            *cls.extra_table_args(),
        )

    @classmethod
    def extra_table_args(cls) -> tuple:
        return ()


def _hnsw(table: str) -> Index:
    return Index(
        f"ix_{table}_embedding_hnsw",
        "embedding",
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )


job_role_skills = Table(
    "job_role_skills",
    Base.metadata,
    Column("job_role_id", ForeignKey("job_roles.id", ondelete="CASCADE"), primary_key=True),
    Column("skill_id", ForeignKey("skills.id", ondelete="RESTRICT"), primary_key=True, index=True),
)

agent_skills = Table(
    "agent_skills",
    Base.metadata,
    Column("agent_id", ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
    Column("skill_id", ForeignKey("skills.id", ondelete="RESTRICT"), primary_key=True, index=True),
)


# The code a certificate names for a skill with no industry (SKILL-GEN-001): no industry holds it,
# or its skills' certificates and the industry-less ones would be one series that no id tells apart.
NO_INDUSTRY_CODE = "GEN"


class Industry(GovernedEntity):
    __tablename__ = "industries"
    entity_type_value = EntityType.INDUSTRY

    status: Mapped[str] = mapped_column(String(32), server_default=LifecycleStatus.ACTIVE.value)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    code: Mapped[str] = mapped_column(String(8), unique=True)
    description: Mapped[str] = mapped_column(Text, server_default="")
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM), deferred=True)

    @classmethod
    def extra_table_args(cls) -> tuple:
        return (CheckConstraint("code ~ '^[A-Z][A-Z0-9]{1,7}$'", name="code_format"), _hnsw("industries"))


class Skill(GovernedEntity):
    __tablename__ = "skills"
    entity_type_value = EntityType.SKILL
    status_enum = SkillStatus

    status: Mapped[str] = mapped_column(String(32), server_default=SkillStatus.DRAFT.value)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    skill_key: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, server_default="")
    category: Mapped[str] = mapped_column(String(32))
    industry_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("industries.id"), index=True)
    certificate: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM), deferred=True)
    # The vector of what the text reads as (models.lookalikes.skeleton) where that is not the
    # text itself (letters drawn alike), else NULL: the duplicate gate finds a plain copy of a
    # certified look-alike spelling by it (models.certification_gates). Derived, like embedding.
    reading_embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM), deferred=True)

    @classmethod
    def extra_table_args(cls) -> tuple:
        return (
            CheckConstraint("skill_key ~ '^[a-z0-9]+(-[a-z0-9]+)*$'", name="skill_key_slug"),
            # Category is also an L1 rule (SKILL-03); the database keeps it even if code forgets.
            CheckConstraint(sql_in("category", SkillCategory), name="category_valid"),
            Index("ix_skills_category_status", "category", "status"),
            _hnsw("skills"),
        )


class JobRole(GovernedEntity):
    __tablename__ = "job_roles"
    entity_type_value = EntityType.JOB_ROLE

    status: Mapped[str] = mapped_column(String(32), server_default=LifecycleStatus.ACTIVE.value)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, server_default="")
    seniority: Mapped[str] = mapped_column(String(16))
    industry_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("industries.id"), index=True)
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM), deferred=True)
    required_skills: Mapped[list[Skill]] = relationship(secondary=job_role_skills, order_by=Skill.id)

    @classmethod
    def extra_table_args(cls) -> tuple:
        return (CheckConstraint(sql_in("seniority", Seniority), name="seniority_valid"), _hnsw("job_roles"))


class Team(GovernedEntity):
    __tablename__ = "teams"
    entity_type_value = EntityType.TEAM

    status: Mapped[str] = mapped_column(String(32), server_default=LifecycleStatus.ACTIVE.value)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, server_default="")
    job_role_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("job_roles.id"), index=True)
    industry_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("industries.id"), index=True)
    capacity: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM), deferred=True)

    @classmethod
    def extra_table_args(cls) -> tuple:
        return (CheckConstraint("capacity >= 1", name="capacity_positive"), _hnsw("teams"))


class Agent(GovernedEntity):
    __tablename__ = "agents"
    entity_type_value = EntityType.AGENT
    status_enum = AgentStatus

    status: Mapped[str] = mapped_column(String(32), server_default=AgentStatus.ACTIVE.value)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, server_default="")
    job_role_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("job_roles.id"), index=True)
    industry_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("industries.id"), index=True)
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id"), index=True)
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM), deferred=True)
    skills: Mapped[list[Skill]] = relationship(secondary=agent_skills, order_by=Skill.id)

    @classmethod
    def extra_table_args(cls) -> tuple:
        return (_hnsw("agents"),)


ENTITY_MODELS: dict[EntityType, type[GovernedEntity]] = {
    EntityType.INDUSTRY: Industry,
    EntityType.SKILL: Skill,
    EntityType.JOB_ROLE: JobRole,
    EntityType.TEAM: Team,
    EntityType.AGENT: Agent,
}

_COMMON_GOVERNED = (
    "id", "entity_type", "external_key", "status", "deleted_at",
    "tags", "attributes", "governance_notes", "governance_agent_id", "parent_id",
)

# What each chain version's content holds. Derived data (embedding, constitution
# results) and bookkeeping (timestamps, version, head hash) are not governed content:
# the version row records version and time itself.
GOVERNED_FIELDS: dict[EntityType, tuple[str, ...]] = {
    EntityType.INDUSTRY: _COMMON_GOVERNED + ("name", "code", "description"),
    EntityType.SKILL: _COMMON_GOVERNED + ("name", "skill_key", "description", "category", "industry_id", "certificate"),
    EntityType.JOB_ROLE: _COMMON_GOVERNED + ("name", "description", "seniority", "industry_id", "required_skill_ids"),
    EntityType.TEAM: _COMMON_GOVERNED + ("name", "description", "job_role_id", "industry_id", "capacity"),
    EntityType.AGENT: _COMMON_GOVERNED + ("name", "description", "job_role_id", "industry_id", "team_id", "skill_ids"),
}


def governed_content(entity: Any) -> dict[str, Any]:
    """The entity's governed fields as plain JSON-able values (ids as strings, sorted lists).

    ``entity`` is a mapped entity or an :class:`EntitySnapshot` (the audit's plain rows);
    a snapshot carries its skill-id lists directly instead of relationships.
    """
    entity_type = EntityType(entity.entity_type_value)
    content: dict[str, Any] = {}
    for field in GOVERNED_FIELDS[entity_type]:
        if field in SKILL_ID_FIELDS:
            value: Any = sorted(str(i) for i in _skill_ids(entity, field))
        elif field == "entity_type":
            value = entity_type.value
        else:
            value = getattr(entity, field)
        content[field] = _plain(value)
    return content


# Many-to-many inputs: field in the API and the content -> relationship attribute.
SKILL_ID_FIELDS = {"required_skill_ids": "required_skills", "skill_ids": "skills"}


def _skill_ids(entity: Any, field: str) -> list[uuid.UUID]:
    if isinstance(entity, EntitySnapshot):
        return getattr(entity, field)
    return [skill.id for skill in getattr(entity, SKILL_ID_FIELDS[field])]


class EntitySnapshot:
    """A read-only entity built from a plain row (plus skill ids), for bulk reads."""

    def __init__(self, entity_type: EntityType, row: Mapping[str, Any], **extra: Any) -> None:
        self.entity_type_value = entity_type
        self.__dict__.update(row)
        self.__dict__.update(extra)


def typed_content(entity_type: EntityType, content: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`governed_content`: each field as its column holds it (ids as
    UUIDs, times as datetimes, skill lists as UUID lists), read from the model's own
    columns. The id and type are the chain's own and are left out."""
    columns = ENTITY_MODELS[entity_type].__table__.c
    data: dict[str, Any] = {}
    for name, value in content.items():
        if name in ("id", "entity_type"):
            continue
        if name in SKILL_ID_FIELDS:
            value = [uuid.UUID(skill_id) for skill_id in value]
        elif value is not None and name in columns:
            if isinstance(columns[name].type, Uuid):
                value = uuid.UUID(value)
            elif isinstance(columns[name].type, DateTime):
                value = dt.datetime.fromisoformat(value)
        data[name] = value
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return rfc3339_utc(value)
    if isinstance(value, list):
        return sorted(value) if all(isinstance(v, str) for v in value) else value
    return value


def load_entities(session: Session, entity_type: EntityType, ids_query: Any, *, for_share: bool = False) -> list[EntitySnapshot]:
    """The entities as stored, as plain snapshots (an audit reads hundreds of thousands).

    ``for_share`` locks the rows (``FOR SHARE``, in id order) until the transaction ends:
    a registry write in flight on one of them finishes first, and none can start.
    """
    table = ENTITY_MODELS[entity_type].__table__
    # Only what the checks read: never the embedding or the stored rule results.
    columns = [table.c[name] for name in (*GOVERNED_FIELDS[entity_type], "version", "head_link_hash") if name in table.c]
    query = select(*columns).where(table.c.id.in_(ids_query)).order_by(table.c.id)
    result = session.execute(query.with_for_update(read=True) if for_share else query)
    # Plain dicts from tuples: a RowMapping rebuilds its key view for every row it is copied from.
    keys = tuple(result.keys())
    rows = [dict(zip(keys, row, strict=True)) for row in result.all()]
    link = LINK_TABLES.get(entity_type)
    if link is None:
        return [EntitySnapshot(entity_type, row) for row in rows]
    table_link, owner, field = link
    skills: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    ids = [row["id"] for row in rows]
    for owner_id, skill_id in session.execute(select(table_link.c[owner], table_link.c.skill_id).where(table_link.c[owner].in_(ids))):
        skills[owner_id].append(skill_id)
    return [EntitySnapshot(entity_type, row, **{field: skills.get(row["id"], [])}) for row in rows]


LINK_TABLES = {
    EntityType.JOB_ROLE: (job_role_skills, "job_role_id", "required_skill_ids"),
    EntityType.AGENT: (agent_skills, "agent_id", "skill_ids"),
}
