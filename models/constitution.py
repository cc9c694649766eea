"""The constitution: the rule catalogue every governed entity is checked against.

Rules are data (id, level, entity type, description, severity) plus a small check over
a :class:`RuleSubject`. L0 rules apply to every entity; L1 rules to one entity type.
Rules of severity ``error`` gate writes: a create that would break one is refused, and so
is a change that would break one the entity did not already break (:func:`enforce`),
listing every such rule id. ``warning`` rules (TEAM-01, which would make every new team
non-compliant) are reported by evaluations and audits but never block. The catalogue has
a version (:func:`constitution_version`) that audit summaries and stored results name.
"""

from __future__ import annotations

import enum
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.canonical import INVISIBLE, canonical_bytes, sha256
from models.entities import ENTITY_MODELS, EntityType, Seniority, SkillCategory
from models.errors import ConstitutionViolation


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class RuleSubject:
    """What a rule may look at: the governed content plus chain and database facts."""

    entity_type: EntityType
    content: dict[str, Any]
    versions: int
    head_link_hash: bytes | None
    genesis_linked: bool
    # Whether the database's guards hold (L0-03); None when not read: a subject that only L1's
    # member rules judge (a team as served, models.registry.served_team_l1), where no rule reads it.
    append_only_enforced: bool | None
    # A team's members, as the agents' rows place them (TEAM-01).
    members: int | None = None
    # A team's members for its capacity (TEAM-03): ``members``, but, where those exceed the
    # capacity, only agents whose rows are their signed heads (models.membership.signed_member_counts).
    seated: int | None = None
    # Why an agent may not sit in its team (AGENT-04; () when it may, or sits in none),
    # judged on the team's and its job role's signed heads (models.membership.seat_problems).
    seat_problems: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    level: str
    entity_type: EntityType | None
    description: str
    severity: Severity
    check: Callable[[RuleSubject], bool]
    # What a failed check found, where the rule id alone does not say (a finding's detail).
    explain: Callable[[RuleSubject], str] | None = None

    def applies_to(self, entity_type: EntityType) -> bool:
        return self.entity_type is None or self.entity_type is entity_type


def _reading(key: str, check: Callable[[RuleSubject], bool]) -> Callable[[RuleSubject], bool]:
    """``check``, marked as judging the entity's field ``key`` (:data:`RULE_FIELDS`)."""
    check.field = key  # type: ignore[attr-defined]
    return check


def _filled(key: str) -> Callable[[RuleSubject], bool]:
    return _reading(key, lambda s: isinstance(s.content.get(key), str) and visible(s.content[key]))


def visible(text: str) -> bool:
    """Whether ``text`` shows anything: it holds a character that is not whitespace, not a
    format or control character (Unicode categories Cf and Cc: U+200B ZERO WIDTH SPACE,
    the joiners U+200C and U+200D, the marks of direction) and not in :data:`INVISIBLE`.
    ``str.strip`` keeps all of those, so a name of U+200B alone passed for not blank."""
    return any(not (c.isspace() or c in INVISIBLE or unicodedata.category(c) in ("Cf", "Cc")) for c in text)


def _within_capacity(s: RuleSubject) -> bool:
    capacity = s.content.get("capacity")
    return s.seated is not None and isinstance(capacity, int) and s.seated <= capacity


def _seat_explained(s: RuleSubject) -> str:
    return f"in team {s.content.get('team_id')}: " + "; ".join(s.seat_problems or ("not judged",))


def _set(key: str) -> Callable[[RuleSubject], bool]:
    return _reading(key, lambda s: s.content.get(key) not in (None, "", []))


def _one_of(key: str, allowed: type[enum.Enum]) -> Callable[[RuleSubject], bool]:
    return _reading(key, lambda s: s.content.get(key) in {a.value for a in allowed})


L0, L1 = "L0", "L1"
E, W = Severity.ERROR, Severity.WARNING
T = EntityType

RULES: tuple[Rule, ...] = (
    Rule("L0-01", L0, None, "A governance agent is set", E, _set("governance_agent_id")),
    Rule("L0-02", L0, None, "History is tracked: the entity has at least one chain version", E, lambda s: s.versions >= 1),
    Rule("L0-03", L0, None, "Append-only is enforced on the version history, the ledger digests and the audit record", E,
         lambda s: s.append_only_enforced is True),
    Rule("L0-04", L0, None, "The chain is initialized from the genesis link", E, lambda s: s.genesis_linked),
    Rule("L0-05", L0, None, "A version hash is set on the entity head", E, lambda s: s.head_link_hash is not None and len(s.head_link_hash) == 32),
    Rule("SKILL-01", L1, T.SKILL, "Skill name is not blank", E, _filled("name")),
    Rule("SKILL-02", L1, T.SKILL, "Skill description is not blank", E, _filled("description")),
    Rule("SKILL-03", L1, T.SKILL, "Skill category is an allowed value", E, _one_of("category", SkillCategory)),
    Rule("JOBROLE-01", L1, T.JOB_ROLE, "Job role requires at least one skill", E, _set("required_skill_ids")),
    Rule("JOBROLE-02", L1, T.JOB_ROLE, "Job role seniority is an allowed value", E, _one_of("seniority", Seniority)),
    Rule("JOBROLE-03", L1, T.JOB_ROLE, "Job role name is not blank", E, _filled("name")),
    Rule("TEAM-01", L1, T.TEAM, "Team has at least one agent (audit warning only)", W, lambda s: (s.members or 0) >= 1),
    Rule("TEAM-02", L1, T.TEAM, "Team has a job role", E, _set("job_role_id")),
    Rule("TEAM-03", L1, T.TEAM, "Team's members do not exceed its capacity", E, _reading("capacity", _within_capacity),
         lambda s: f"{s.seated} members, capacity {s.content.get('capacity')}"),
    Rule("TEAM-04", L1, T.TEAM, "Team name is not blank", E, _filled("name")),
    Rule("AGENT-01", L1, T.AGENT, "Agent has at least one skill", E, _set("skill_ids")),
    Rule("AGENT-02", L1, T.AGENT, "Agent has a job role", E, _set("job_role_id")),
    Rule("AGENT-03", L1, T.AGENT, "Agent has an industry", E, _set("industry_id")),
    Rule("AGENT-04", L1, T.AGENT, "A seated agent qualifies for its team: both are active and not deleted, the team's job role is the "
         "agent's, their industries match where both are set, and the agent holds every skill its job role requires", E,
         _reading("team_id", lambda s: s.seat_problems == ()), _seat_explained),
    Rule("AGENT-05", L1, T.AGENT, "Agent name is not blank", E, _filled("name")),
    Rule("INDUSTRY-01", L1, T.INDUSTRY, "Industry name is not blank", E, _filled("name")),
)
RULES_BY_ID = {rule.id: rule for rule in RULES}
# The field of the entity each rule judges, where it judges one (a refusal names it; the L0
# rules about the chain and the database judge none).
RULE_FIELDS: dict[str, str] = {rule.id: rule.check.field for rule in RULES if hasattr(rule.check, "field")}
# The rules that read a team's members, which change when an agent takes or leaves a seat,
# with no new version of the team: what its last write stored of them goes stale, so they
# are evaluated again whenever the team is served (models.registry.served_team_l1).
MEMBER_RULES = frozenset({"TEAM-01", "TEAM-03"})
# The rules about seats, which read other entities' rows (a team's members; an agent's team
# and job role): an audit checks an entity that breaks one again with its row locked, as it
# does a suspect of tampering (models.audit.suspects_rechecked).
SEAT_RULES = frozenset({"TEAM-03", "AGENT-04"})
# The rules of each (level, entity type), in catalogue order: an audit evaluates both
# levels for every entity, hundreds of thousands of times.
RULES_FOR = {
    (level, kind): tuple(r for r in RULES if r.level == level and r.applies_to(kind)) for level in (L0, L1) for kind in EntityType
}

# Bump when a rule's check changes while its declared contract (id, level, entity type,
# description, severity) does not: a check's code cannot be hashed meaningfully, and the
# version must change whenever an entity's results could. 2: "not blank" also holds a
# string of characters that draw nothing (zero-width, fillers) blank (models.constitution.visible).
CHECKS_REVISION = 2
# Rules about the database every write relies on, not about the entity written: a write is
# refused while one breaks, whatever the entity broke before it.
WRITE_PRECONDITIONS = frozenset({"L0-03"})


def constitution_version() -> str:
    """The version of the catalogue this process checks entities against:
    :func:`catalogue_version` of :data:`RULES` and :data:`CHECKS_REVISION`."""
    return catalogue_version(RULES, CHECKS_REVISION)


@lru_cache(maxsize=4)
def catalogue_version(rules: tuple[Rule, ...], checks_revision: int) -> str:
    """SHA-256 (hex) of the RFC 8785 JSON of ``checks_revision`` and each rule's declared
    contract, in catalogue order. A rule added, removed, reworded, moved to another level
    or type, or given another severity changes it; so does a bump of the checks' revision.
    ``tests/test_constitution.py`` pins the current value."""
    return sha256(canonical_bytes({"checks_revision": checks_revision, "rules": [
        [r.id, r.level, r.entity_type.value if r.entity_type else None, r.description, r.severity.value] for r in rules
    ]})).hex()


@dataclass(frozen=True)
class LevelResult:
    level: str
    violations: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        """As an entity row stores it, naming the catalogue it was checked against: a result
        whose version is not the current one (``GET /rules``) predates a rule change."""
        return {"passed": self.passed, "violations": list(self.violations), "warnings": list(self.warnings),
                "constitution_version": constitution_version()}


def evaluate(subject: RuleSubject, level: str) -> LevelResult:
    """Run every rule of ``level`` that applies to the subject's type."""
    violations, warnings = [], []
    for rule in RULES_FOR[level, subject.entity_type]:
        if not rule.check(subject):
            (violations if rule.severity is Severity.ERROR else warnings).append(rule.id)
    return LevelResult(level, tuple(violations), tuple(warnings))


def reevaluated(stored: Any, subject: RuleSubject, level: str, rule_ids: frozenset[str]) -> LevelResult:
    """``stored`` (a :class:`LevelResult` as JSON) with the rules ``rule_ids`` evaluated again
    on ``subject``; the level's other rules as stored, in catalogue order. Every rule is
    evaluated when ``stored`` is not such a result (none stored, or edited through SQL), or
    was checked against another catalogue version than the current one."""
    fresh = evaluate(subject, level)
    kept = [stored.get(key) for key in ("violations", "warnings")] if isinstance(stored, dict) else None
    if kept is None or not all(isinstance(ids, list) for ids in kept) or stored.get("constitution_version") != constitution_version():
        return fresh  # (stored against another catalogue: none of it is kept under the current version's name)
    violations, warnings = [], []
    for rule in RULES_FOR[level, subject.entity_type]:
        failed, warned = (fresh.violations, fresh.warnings) if rule.id in rule_ids else kept
        if rule.id in failed:
            violations.append(rule.id)
        elif rule.id in warned:
            warnings.append(rule.id)
    return LevelResult(level, tuple(violations), tuple(warnings))


def enforce(subject: RuleSubject, *, content_before: dict[str, Any] | None,
            stands_down: bool = False) -> tuple[LevelResult, LevelResult]:
    """Evaluate L0 and L1 on ``subject`` (an entity as a write leaves it); raise
    ``ConstitutionViolation`` listing every error rule it breaks that the write must not.

    A new entity (``content_before`` None) must break none. A change of an existing one
    must break none its content before the write (``content_before``, judged with the
    subject's other facts) did not already break, and a change that ``stands_down`` the
    entity (retires, suspends, unseats it) may leave any broken: a rule a release adds or
    tightens never freezes the entities it finds against, not even against retiring them.
    They stay non-compliant (their stored results and every audit say so) until a change
    fixes them. The :data:`WRITE_PRECONDITIONS` are never left broken.
    """
    l0, l1 = evaluate(subject, L0), evaluate(subject, L1)
    violated = [*l0.violations, *l1.violations]
    left: set[str] = set()
    if violated and content_before is not None:  # judged only when it matters: most writes break nothing
        before = replace(subject, content=content_before)
        left = set(violated) if stands_down else {*evaluate(before, L0).violations, *evaluate(before, L1).violations}
        left -= WRITE_PRECONDITIONS
    refused = [rid for rid in violated if rid not in left]
    if refused:
        kept = [rid for rid in violated if rid in left]
        raise ConstitutionViolation(
            "violated rules: " + ", ".join(refused) + (f" (already broken, and left so: {', '.join(kept)})" if kept else ""),
            violations=[{"rule": rid, "description": RULES_BY_ID[rid].description,
                         **({"field": RULE_FIELDS[rid]} if rid in RULE_FIELDS else {})} for rid in refused],
        )
    return l0, l1


# The tables the database guards, each with its triggers (migrations 0002, 0006, 0013 to
# 0018): the chain and its repairs, the signed ledger digests an incremental audit compares
# against, the audit record a signed report is built from (findings, finished runs, the
# signatures handed out), and the entity rows, which are never deleted (only signed as
# deleted).
ENTITY_TABLES = tuple(model.__tablename__ for model in ENTITY_MODELS.values())
APPEND_ONLY_TRIGGERS: dict[str, tuple[str, ...]] = {
    **{table: (f"{table}_no_update_delete", f"{table}_no_truncate") for table in (
        "entity_versions", "entity_repairs", "ledger_digests", "audit_runs", "signed_exports", "audit_checkpoints",
        "issued_certificates")},  # the last: migration 0023
    **{table: (f"{table}_no_delete", f"{table}_no_truncate") for table in ENTITY_TABLES},
    "audit_runs_unsigned": ("audit_runs_unsigned_frozen", "audit_runs_unsigned_no_truncate"),  # migration 0015
    "ledger_digests_v2_began": ("ledger_digests_v2_began_no_update_delete", "ledger_digests_v2_began_no_truncate"),  # 0018
    # Migration 0017: no leaf row UPDATEd or TRUNCATEd, none added to a signed digest, nor a kept digest's DELETEd.
    # Migration 0018: likewise for the deleted entities' heads a digest keeps beside its leaves.
    **{table: (f"{table}_no_update", f"{table}_kept_no_delete", f"{table}_signed_no_insert", f"{table}_no_truncate")
       for table in ("ledger_digest_heads", "ledger_digest_tombstones")},
    # And no finding for a finished run (migration 0015), nor with an id ahead of its sequence (0016).
    "audit_findings": ("audit_findings_no_update_delete", "audit_findings_no_truncate", "audit_findings_no_insert_after_close",
                       "audit_findings_no_id_ahead"),
}


def append_only_enforced(session: Session, *, fingerprint_max_age: float = 0.0) -> bool:
    """True when every append-only trigger exists and is enabled ALWAYS on its table, and the
    guards are what the migrations made them (:data:`GUARDS_FINGERPRINT`).

    The triggers are always read. The fingerprint is read too, unless this process read it
    for the same database less than ``fingerprint_max_age`` seconds ago and found it right:
    registry writes pass 1 s (reading it costs a write session about 0.6 ms, some 16 % of a
    chain write's throughput), audits pass nothing and always read it.
    """
    pairs = [(table, name) for table, names in APPEND_ONLY_TRIGGERS.items() for name in names]
    database = session.get_bind().engine.url.render_as_string(hide_password=True)
    checked, asked = _FINGERPRINT_CHECKED.get(database), time.monotonic()  # stamped before the read
    fresh = checked is not None and asked - checked < fingerprint_max_age
    enabled, fingerprint = session.execute(
        _GUARDS_ENABLED if fresh else _GUARDS_ENABLED_AND_FINGERPRINT,
        {"tables": [table for table, _ in pairs], "names": [name for _, name in pairs]},
    ).one()
    if not fresh:
        if fingerprint != GUARDS_FINGERPRINT:
            _FINGERPRINT_CHECKED.pop(database, None)
            return False
        _FINGERPRINT_CHECKED[database] = asked
    return enabled == len(pairs)


# What the guards are, as the migrations leave them at head: every trigger on the tables of
# Plant's schema (table, name, function, timing and events, columns, WHEN clause, arguments,
# enabled), every function those triggers call (name, whether it lives in that schema,
# language, security definer, volatility, settings, body), and whatever else on those tables
# runs or hides rows (rules other than a view's, row-level security and its policies, tables
# inheriting from them), and the kind of every relation of that schema a guard function's
# body names (a sequence a guard reads, swapped for a view of the same name, would answer
# for it). A guard function rewritten in place, an extra trigger, a narrowed one, a rule, a
# policy, a child table or a relation swapped changes it, and L0-03 then fails. Plant's schema is
# the first in the session's search path holding entity_versions (never pg_temp).
# Migrations 0015 and 0016 wrote that schema's name into two guard functions; it is read as
# "@schema" there, and no other schema's or role's name goes in, so every install of the
# same head has the same fingerprint, whatever its schema (the same on PostgreSQL 16, 17 and
# 18, and under en_US collation: every name sorted is of type name, which sorts as "C"). A
# migration that changes a guard changes it too: tests/test_chain.py says the new value.
GUARDS_FINGERPRINT = "2bf2406ce469bfe30fe155f250a73de98be4aca53e13f3e4fedd0a87458031eb"
# Plant's schema, as the CTE ``s`` (nsp: its oid, name: its quoted name, nspname): the first schema of
# the session's search path holding entity_versions, never pg_temp (a session's own temporary
# copies of the guarded tables must not answer for them).
PLANT_SCHEMA_CTE = """s AS (SELECT n.oid AS nsp, quote_ident(n.nspname) AS name, n.nspname
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relname = 'entity_versions' AND c.relkind IN ('r', 'p') AND n.nspname = ANY(current_schemas(false))
             AND n.oid <> pg_my_temp_schema()  -- current_schemas lists pg_temp where the search path names it
           ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1)"""
GUARDS_SQL = f"""
WITH {PLANT_SCHEMA_CTE},
     tables AS (SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity
                FROM pg_class c JOIN s ON c.relnamespace = s.nsp WHERE c.relkind IN ('r', 'p')),
     triggers AS (SELECT t.*, tables.relname FROM pg_trigger t JOIN tables ON t.tgrelid = tables.oid
                  WHERE NOT t.tgisinternal)
SELECT encode(sha256(convert_to(concat_ws(' | ', (SELECT name IS NULL FROM (SELECT max(name) AS name FROM s) found),
  (SELECT string_agg(concat_ws(' ', 'trigger', quote_nullable(tr.relname), quote_nullable(tr.tgname), quote_nullable(p.proname),
                               tr.tgtype, tr.tgenabled, tr.tgnargs, encode(tr.tgargs, 'hex'), tr.tgconstraint <> 0,
                               tr.tgdeferrable, tr.tginitdeferred, quote_nullable(tr.tgoldtable), quote_nullable(tr.tgnewtable),
                               CASE WHEN tr.tgattr::text <> '' THEN quote_nullable((
                                 SELECT string_agg(a.attname, ',' ORDER BY a.attnum) FROM pg_attribute a
                                 WHERE a.attrelid = tr.tgrelid AND a.attnum = ANY (tr.tgattr))) ELSE '-' END,
                               CASE WHEN tr.tgqual IS NOT NULL THEN quote_nullable(
                                 substring(pg_get_triggerdef(tr.oid) FROM ' WHEN \\((.*)\\) EXECUTE ')) ELSE '-' END),
                     ' | ' ORDER BY tr.relname, tr.tgname)
     FROM triggers tr JOIN pg_proc p ON p.oid = tr.tgfoid),
  (SELECT string_agg(concat_ws(' ', 'function', quote_nullable(p.proname), p.pronamespace = s.nsp, l.lanname, p.prosecdef,
                               p.provolatile,
                               quote_nullable(replace(array_to_string(p.proconfig, ','), ', ' || s.name || ',', ', @schema,')),
                               quote_nullable(replace(p.prosrc, s.name || '.', '@schema.'))), ' | ' ORDER BY p.proname)
     FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang, s WHERE p.oid IN (SELECT tgfoid FROM triggers)),
  (SELECT string_agg(concat_ws(' ', 'relation', quote_nullable(c.relname), c.relkind), ' | ' ORDER BY c.relname)
     FROM pg_class c, s WHERE c.relnamespace = s.nsp AND c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
       AND EXISTS (SELECT FROM pg_proc p JOIN triggers tr ON tr.tgfoid = p.oid WHERE strpos(p.prosrc, c.relname) > 0)),
  (SELECT string_agg(concat_ws(' ', 'rule', quote_nullable(c.relname), quote_nullable(r.rulename)), ' | ' ORDER BY c.relname, r.rulename)
     FROM pg_rewrite r JOIN tables c ON c.oid = r.ev_class WHERE r.rulename <> '_RETURN'),
  (SELECT string_agg(concat_ws(' ', 'row-level security', quote_nullable(c.relname)), ' | ' ORDER BY c.relname)
     FROM tables c WHERE c.relrowsecurity OR c.relforcerowsecurity),
  (SELECT string_agg(concat_ws(' ', 'policy', quote_nullable(c.relname), quote_nullable(pol.polname)), ' | '
                     ORDER BY c.relname, pol.polname)
     FROM pg_policy pol JOIN tables c ON c.oid = pol.polrelid),
  (SELECT string_agg(concat_ws(' ', 'child', quote_nullable(c.relname)), ' | ' ORDER BY c.relname)
     FROM pg_inherits i JOIN tables c ON c.oid = i.inhparent)
), 'UTF8')), 'hex')
"""


_ENABLED_COUNT = (
    "SELECT count(*) FROM unnest(CAST(:tables AS text[]), CAST(:names AS text[])) AS guard(tbl, name) "
    "JOIN pg_class c ON c.relname = guard.tbl AND c.relnamespace = (SELECT nsp FROM s) "
    "JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname = guard.name WHERE t.tgenabled = 'A'")
_GUARDS_ENABLED = text(f"WITH {PLANT_SCHEMA_CTE} SELECT ({_ENABLED_COUNT}), NULL")
_GUARDS_ENABLED_AND_FINGERPRINT = text(f"WITH {PLANT_SCHEMA_CTE} SELECT ({_ENABLED_COUNT}), ({GUARDS_SQL})")
# When this process last found each database's guards fingerprint right (time.monotonic()).
_FINGERPRINT_CHECKED: dict[str, float] = {}


def guards_fingerprint(session: Session) -> str:
    """SHA-256 (hex) of the guards as the database holds them now (see :data:`GUARDS_FINGERPRINT`)."""
    return session.scalar(text(GUARDS_SQL))
