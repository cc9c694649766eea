"""Compliance audit of governed entities: chains, signatures, rows and rules.

``audit_batch`` checks a batch of entities of one type against their stored versions
(loaded in one query) and the constitution, returning finding rows. Each kind of
tampering has its own code (see ``models.chain_verification``); rule results use ``rule-violation``
(error) and ``rule-warning`` (warning) with the rule id. ``check_entity`` does the same
for one entity, plus a comparison with the stored ledger digest the incremental audit
trusts, for the synchronous tampering endpoint: the newest one Plant signed whose signature
and root check out (``models.ledger_store.newest_trusted_digest``); each newer row is
``digest-invalid``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from models.audit_tables import LedgerDigestHead
from models.certification_gates import gates_rechecked
from models.chain import GENESIS_LINK, ChainFinding, EntityVersion, versions_by_entity
from models.chain_verification import verify_loaded
from models.seal_check import seal_findings
from models.constitution import L0, L1, RULES_BY_ID, SEAT_RULES, RuleSubject, append_only_enforced, evaluate
from models.db_statements import uuid_in
from models.entities import ENTITY_MODELS, Agent, EntitySnapshot, EntityType, governed_content, load_entities
from models.embeddings import Embedder
from models.errors import NotFound
from models.ledger_compare import compare_heads, stored_leaves
from models.ledger_store import LATEST_DIGESTS_READ, newest_trusted_digest
from models.ledger_trust import stored_digest_problem
from models.membership import seat_problems, signed_member_counts
from models.signing import KeyRing

SEVERITY_BY_CODE = {"rule-violation": "error", "rule-warning": "warning", "certified-near-duplicate": "error"}
TAMPER_SEVERITY = "critical"
FAILING_SEVERITIES = ("critical", "error")


@dataclass(frozen=True)
class FindingRow:
    entity_type: str | None
    entity_id: uuid.UUID | None
    version: int | None
    code: str
    detail: str
    rule_id: str | None = None

    @property
    def severity(self) -> str:
        return SEVERITY_BY_CODE.get(self.code, TAMPER_SEVERITY)

    def as_json(self) -> dict[str, Any]:
        return {
            "entity_type": self.entity_type, "entity_id": str(self.entity_id) if self.entity_id else None,
            "version": self.version, "code": self.code, "severity": self.severity, "rule_id": self.rule_id,
            "detail": self.detail,
        }


@dataclass
class BatchResult:
    findings: list[FindingRow] = field(default_factory=list)
    entities: int = 0
    versions_verified: int = 0


def audit_batch(
    session: Session, entities: list[EntitySnapshot], *, keyring: KeyRing, embedder: Embedder, signatures: str,
    append_only: bool,
) -> BatchResult:
    """Verify each entity's chain, head, row and rules; nothing is written.

    The rows were read before their versions, by another statement: a registry write
    that commits in between shows a version past the row's head, which looks like
    tampering. So each entity with a tampering finding is read and checked once more
    with its row share-locked (:func:`suspects_rechecked`).

    Certified skills also go through the duplicate gate again, from their signed texts
    (:func:`models.certification_gates.gates_rechecked`), with ``embedder`` (the configured one).
    """
    def check(batch: list[EntitySnapshot]) -> BatchResult:
        return _check_batch(session, batch, keyring=keyring, embedder=embedder, signatures=signatures,
                            append_only=append_only)

    return suspects_rechecked(session, check(entities), entities, check)


def suspects_rechecked(
    session: Session, result: BatchResult, entities: list[EntitySnapshot],
    check: Callable[[list[EntitySnapshot]], BatchResult],
) -> BatchResult:
    """``result`` with each suspect's findings replaced by a second ``check`` of it, made
    with its row locked ``FOR SHARE``: no write can be halfway then, so what is found
    again is in the data. Suspects are the entities with a tampering finding, and those
    breaking a rule about seats (:data:`models.constitution.SEAT_RULES`), whose facts were
    read by statements other than their row's: an agent seated or moved, a team's capacity
    raised, in between looked like a seat the rules refuse. Locked, a team takes no new
    member (a seat is taken under its team's row lock) and an agent keeps its seat, and the
    writes that could make a seat break a rule are refused while the seat stands. Only
    suspects are locked, until the transaction ends; a clean batch costs nothing more."""
    suspects = sorted({f.entity_id for f in result.findings
                       if (f.severity == TAMPER_SEVERITY or f.rule_id in SEAT_RULES) and f.entity_id})
    if not suspects:
        return result
    again = check(load_entities(session, entities[0].entity_type_value, suspects, for_share=True))
    rechecked = set(suspects)
    kept = [f for f in result.findings if f.entity_id not in rechecked]
    return BatchResult(kept + again.findings, result.entities, result.versions_verified)


def _check_batch(
    session: Session, entities: list[EntitySnapshot], *, keyring: KeyRing, embedder: Embedder, signatures: str,
    append_only: bool,
) -> BatchResult:
    result = BatchResult()
    if not entities:
        return result
    versions = versions_by_entity(session, [e.id for e in entities])
    seats = seat_facts(session, entities, keyring)
    sealed = seal_findings(session, ((entity, versions.get(entity.id, [])) for entity in entities), keyring)
    for entity in entities:
        rows = versions.get(entity.id, [])
        content = governed_content(entity)
        verification = verify_loaded(entity, rows, keyring=keyring, signatures=signatures, content=content)
        kind = entity.entity_type_value.value
        found = [*verification.findings, *([sealed[entity.id]] if entity.id in sealed else [])]
        result.findings += [FindingRow(kind, entity.id, f.version, f.code, f.detail) for f in found]
        result.findings += rule_findings(entity, content, rows, append_only, seats)
        result.entities += 1
        result.versions_verified += len(rows)
    result.findings += gate_findings(session, entities, result.findings, keyring=keyring, embedder=embedder)
    return result


def gate_findings(session: Session, entities: list[EntitySnapshot], checked: list[FindingRow], *, keyring: KeyRing,
                  embedder: Embedder) -> list[FindingRow]:
    """The duplicate gate's second look at the certified skills among ``entities`` (all of
    one type; [] for any other) that ``checked``, this batch's findings so far, found to be
    their signed head versions (no tampering finding):
    :func:`models.certification_gates.gates_rechecked`."""
    if not entities or entities[0].entity_type_value is not EntityType.SKILL:
        return []
    tampered = {f.entity_id for f in checked if f.severity == TAMPER_SEVERITY}
    return [FindingRow(EntityType.SKILL.value, g.skill_id, None, g.code, g.detail) for g in gates_rechecked(
        session, [e for e in entities if e.id not in tampered], keyring=keyring, embedder=embedder)]


@dataclass(frozen=True)
class SeatFacts:
    """What the rules about seats read beyond an entity's own row, for a batch of one type:
    each team's members by the agents' rows (TEAM-01) and as counted for its capacity
    (TEAM-03), and why each agent may not sit in its team (AGENT-04)."""

    members: dict[uuid.UUID, int] = field(default_factory=dict)
    seated: dict[uuid.UUID, int] = field(default_factory=dict)
    problems: dict[uuid.UUID, tuple[str, ...]] = field(default_factory=dict)


def seat_facts(session: Session, entities: list[EntitySnapshot], keyring: KeyRing) -> SeatFacts:
    """The seat facts of ``entities`` (all of one type; none for types without seats), read
    as writes read them (``models.membership``), in a few set-based queries per batch: one
    for the teams' member counts, two for the agents' teams and roles; more only where those
    rows find a team over its capacity or an agent that does not qualify."""
    kind = entities[0].entity_type_value if entities else None
    if kind is EntityType.TEAM:
        ids = [e.id for e in entities]
        members = dict(session.execute(select(Agent.team_id, func.count()).where(uuid_in(Agent.team_id, ids))
                                       .group_by(Agent.team_id)).all())
        return SeatFacts(members=members, seated=signed_member_counts(session, entities, members, keyring))
    if kind is EntityType.AGENT:
        return SeatFacts(problems=seat_problems(session, [(e, e.skill_ids) for e in entities], keyring))
    return SeatFacts()


def rule_findings(
    entity: EntitySnapshot, content: dict[str, Any], rows: list[Any], append_only: bool, seats: SeatFacts
) -> list[FindingRow]:
    kind = entity.entity_type_value
    subject = RuleSubject(
        entity_type=kind,
        content=content,
        versions=len(rows),
        head_link_hash=bytes(entity.head_link_hash) if entity.head_link_hash is not None else None,
        genesis_linked=bool(rows) and bytes(rows[0].prev_link) == GENESIS_LINK,
        append_only_enforced=append_only,
        members=seats.members.get(entity.id, 0) if kind is EntityType.TEAM else None,
        seated=seats.seated.get(entity.id, 0) if kind is EntityType.TEAM else None,
        seat_problems=seats.problems.get(entity.id, ()) if kind is EntityType.AGENT else None,
    )
    out = []
    for level in (L0, L1):
        outcome = evaluate(subject, level)
        out += [FindingRow(kind.value, entity.id, None, "rule-violation", _violated(rid, subject), rid)
                for rid in outcome.violations]
        out += [FindingRow(kind.value, entity.id, None, "rule-warning", f"{rid} not met", rid) for rid in outcome.warnings]
    return out


def _violated(rule_id: str, subject: RuleSubject) -> str:
    explain = RULES_BY_ID[rule_id].explain
    return f"{rule_id} violated" + (f": {explain(subject)}" if explain is not None else "")


@dataclass(frozen=True)
class TamperCheck:
    entity_id: uuid.UUID
    entity_type: str
    versions: int
    findings: list[FindingRow]

    @property
    def tampered(self) -> bool:
        return any(f.severity == TAMPER_SEVERITY for f in self.findings)

    def as_json(self) -> dict[str, Any]:
        return {
            "entity_id": str(self.entity_id), "entity_type": self.entity_type, "tampered": self.tampered,
            "versions": self.versions, "findings": [f.as_json() for f in self.findings],
        }


def check_entity(session: Session, *, entity_id: uuid.UUID, keyring: KeyRing, embedder: Embedder) -> TamperCheck:
    """Synchronous full check of one entity, including the stored ledger digest the
    incremental audit trusts (:func:`_digest_findings`)."""
    for entity_type in EntityType:
        entities = load_entities(session, entity_type, [entity_id])
        if entities:
            result = audit_batch(session, entities, keyring=keyring, embedder=embedder, signatures="all",
                                 append_only=append_only_enforced(session))
            return TamperCheck(entity_id, entity_type.value, result.versions_verified,
                               result.findings + _digest_findings(session, entity_id, keyring))
    digest_findings = _digest_findings(session, entity_id, keyring)
    own = [f for f in digest_findings if f.entity_id == entity_id]
    if own:  # deleted since the digest: still evidence
        return TamperCheck(entity_id, own[0].entity_type or "unknown", 0, digest_findings)
    raise NotFound(f"no entity with id {entity_id}", id=str(entity_id))


def _digest_findings(session: Session, entity_id: uuid.UUID, keyring: KeyRing) -> list[FindingRow]:
    """The entity's leaf in the stored digest the incremental audit trusts
    (:func:`models.ledger_store.newest_trusted_digest`: the newest one Plant signed whose rows
    verify, among a bounded number of rows) compared with its chain, after a ``digest-invalid``
    finding for each newer row passed over. The latest row as it came let one row INSERTed
    through SQL (or signed by a key this process's ring does not hold yet) hide every entity's
    evidence behind a run-level finding until the next digest."""
    digest, passed = newest_trusted_digest(session, keyring)
    findings = passed_over_findings(digest, passed)
    if digest is None:
        return findings + ([none_trusted_among(LATEST_DIGESTS_READ)] if len(passed) == LATEST_DIGESTS_READ else [])
    # A leaf at the genesis link is a placeholder (models.digest_check): it vouches for nothing to compare with.
    leaves = [leaf for leaf in stored_leaves(session, digest.id, [entity_id]) if leaf[2] != GENESIS_LINK]
    # The digest was checked before its leaf was read: a leaf row deleted in between (the guard
    # lets an unkept digest's go) is then missing from this count, never silently absent.
    left = session.scalar(select(func.count()).select_from(LedgerDigestHead).where(LedgerDigestHead.digest_id == digest.id))
    if left != digest.entity_count:
        findings.append(FindingRow(None, None, None, "digest-invalid", (
            f"stored ledger digest {digest.id} ({digest.as_of.isoformat()}): {left} of its {digest.entity_count} leaf rows "
            "are left after it was checked (pruned or deleted meanwhile): the entity's leaf may be among those gone")))
    return findings + [finding_from_chain(h.entity_type, h.entity_id, h.finding) for h in compare_heads(session, leaves)]


def passed_over_findings(digest: Any, passed: list[tuple[Any, str]]) -> list[FindingRow]:
    """A run-level ``digest-invalid`` finding for each stored digest ``passed`` over (with
    why), saying which one, if any, is trusted instead."""
    trusted = "" if digest is None or any(d is digest for d, _ in passed) else (
        f"; passed over for digest {digest.id}, the newest that verifies")
    return [FindingRow(None, None, None, "digest-invalid", (
        f"stored ledger digest {newer.id} ({newer.as_of.isoformat()}): {problem}; its leaves are not trusted{trusted}"))
        for newer, problem in passed]


def none_trusted_among(rows: int) -> FindingRow:
    return FindingRow(None, None, None, "digest-invalid", (
        f"none of the {rows} newest stored ledger digests is one Plant signed whose rows verify (more are not read, "
        "so forged rows cannot make the check unbounded): no digest vouches for anything here, run a full audit"))


def stored_digest_invalid(session: Session, digest: Any, keyring: KeyRing) -> FindingRow | None:
    """The run-level ``digest-invalid`` finding when the stored ``digest`` cannot be trusted."""
    problem = stored_digest_problem(session, digest, keyring)
    if problem is None:
        return None
    return FindingRow(None, None, None, "digest-invalid",
                      f"stored ledger digest {digest.id} ({digest.as_of.isoformat()}): {problem}; its leaves are not trusted")


def finding_from_chain(entity_type: str | None, entity_id: uuid.UUID | None, finding: ChainFinding) -> FindingRow:
    return FindingRow(entity_type, entity_id, finding.version, finding.code, finding.detail)


ROW_MISSING = "entity-row-missing"


def rowless_chains(session: Session) -> list[FindingRow]:
    """A finding for each chain whose entity row is gone (:func:`rowless_chain_pages`), all at once."""
    return [finding for page in rowless_chain_pages(session) for finding in page]


# How many findings of chains whose row is gone are read at a time: a full run's start writes
# each page before it reads the next.
ROWLESS_PAGE = 1_000


def rowless_chain_pages(session: Session) -> Iterator[list[FindingRow]]:
    """A finding for each chain whose entity row is gone, in entity id order, :data:`ROWLESS_PAGE`
    at a time (one statement, read through a server-side cursor). Plant never deletes a row (a
    deletion is a signed version and a stamp): one gone was removed past its table's guard, and
    the chunks, which walk the rows, would never read its chain. One anti-join of the versions
    with every table's ids, grouped per chain: whether a chain has a row depends on its id alone.
    (It was the versions whose id is IN the anti-join's distinct ids: under statistics that
    believed ``entity_versions`` nearly empty, PostgreSQL ran that anti-join again for each
    version, a nested loop over every version per version, and a start timed out.) Every row
    can be gone (a table emptied past its guard): a page is let go as the next is read."""
    rows = union_all(*(select(model.id.label("id")) for model in ENTITY_MODELS.values())).subquery()
    has_a_row = select(rows.c.id).where(rows.c.id == EntityVersion.entity_id).exists()
    found = session.execute(
        select(EntityVersion.entity_type, EntityVersion.entity_id, func.count(), func.max(EntityVersion.version))
        .where(~has_a_row)
        .group_by(EntityVersion.entity_type, EntityVersion.entity_id).order_by(EntityVersion.entity_id)
        .execution_options(yield_per=ROWLESS_PAGE))
    for page in found.partitions():
        yield [FindingRow(entity_type, entity_id, head, ROW_MISSING,
                          f"its chain holds {count} version(s), up to version {head}; its row is gone from the registry")
               for entity_type, entity_id, count, head in page]
