"""Incremental audit: verify only what changed since the latest stored ledger digest.

The digest's leaves (kept in ``ledger_digest_heads``) are trusted heads, once the digest's
signed document and the root of its stored leaves check out (else the run reports
``digest-invalid`` and verifies nothing). An entity is examined when its row's head is
not its leaf (``IS DISTINCT FROM``: a NULL head counts), its row is marked deleted though
the digest held it live (by a signed version or by its row alone), or its chain grew past
the leaf (a row reset to the digest's head after later versions were appended). An examined
entity gets the full audit's checks on its whole chain, which was read anyway: every
version re-hashed and re-linked from genesis through its leaf, every signature after the
leaf, the row against its head version (``row-content-mismatch``, ``stale-head``...), and
the rules on its current state. The agents seated in a team or under a job role examined,
and the teams of the agents examined, are examined too: their seat rules read it. Leaves
whose head is no longer in the chain (rolled back, rewritten) or whose entity's row is gone
are reported, and so, when the counts show one, is every chain no row holds
(``entity-row-missing``, as in a full audit).

What it does not see, by design (a full audit does): rows and versions of entities
unchanged since the digest are not re-read, so a SQL edit of such a row's governed
fields without a new version (but for ``deleted_at``: a deleted row with a leaf is
examined), or of such an entity's old versions, goes unnoticed.
:func:`IncrementalResult.coverage` says so in every run's summary.

Cost: finding what changed compares every live head with its leaf (one join per entity
type); a chain grown behind its row is looked for per entity only when the ledger's
version count disagrees with what the leaves and the examined entities account for; the
leaves whose entity is gone only when the live entities with a leaf fall short of the
digest's leaves; checking the digest hashes every leaf once (and its rows are counted
again at the end: an unkept digest's rows may be deleted while the run reads them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, null, or_, select, text, union_all
from sqlalchemy.orm import Session, aliased

from models.audit import (
    BatchResult, FindingRow, gate_findings, load_entities, rowless_chains, rule_findings, seat_facts,
    stored_digest_invalid, suspects_rechecked, versions_by_entity,
)
from models.audit_tables import LedgerDigest, LedgerDigestHead, LedgerDigestTombstone
from models.canonical import strict_json_loads
from models.chain import GENESIS_LINK, ChainFinding, EntityVersion
from models.chain_verification import verify_loaded
from models.seal_check import seal_findings
from models.constitution import append_only_enforced
from models.digest_check import tombstones_of
from models.embeddings import Embedder
from models.db import uuid_in
from models.entities import ENTITY_MODELS, Agent, EntityType, governed_content
from models.errors import NotFound
from models.ledger_compare import compare_heads, latest_digest
from models.signing import KeyRing

BATCH = 500
Changed = list[tuple[uuid.UUID, int, bytes]]  # (entity id, leaf version or 0, leaf link or genesis)


@dataclass
class IncrementalResult:
    digest_id: int
    digest_as_of: str
    findings: list[FindingRow] = field(default_factory=list)
    entities: int = 0  # examined: changed since the digest, rolled back included
    versions_verified: int = 0  # after the leaf: hashed, linked and signature-checked
    versions_rehashed: dict[uuid.UUID, int] = field(default_factory=dict)  # up to the leaf: hashed and linked
    chains: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)  # examined: (versions read, leaf version)
    digest_trusted: bool = True
    digest_rows_kept: bool = True  # False: some of its rows went while the run read them (a digest-invalid finding says so)
    version_count_balanced: bool = True

    def coverage(self) -> dict[str, Any]:
        """What this run read and what it took on trust, for the summary: an incremental
        "clean" is not a full audit's."""
        verified = "verified" if self.digest_trusted else "NOT trusted: nothing was audited, run a full audit"
        if self.digest_trusted and not self.digest_rows_kept:
            verified = "verified at the start, but some of its rows went while the run read them: run a full audit"
        return {
            "mode": "incremental",
            "signatures": "all-after-digest" if self.digest_trusted else "none",
            "since_digest": self.digest_id,
            "digest_as_of": self.digest_as_of,
            "digest": f"signature and stored leaves' heads_root {verified}",
            "entities_examined": self.entities,
            "versions_signature_checked": self.versions_verified,
            "versions_rehashed_only": sum(self.versions_rehashed.values()),
            "version_count_balanced": self.version_count_balanced,
            "not_reread": "rows and versions of entities unchanged since the digest: a SQL edit of such a row's "
                          "governed fields without a new version (but for marking it deleted), or of its versions, "
                          "is not seen (a full audit sees it); nor entities deleted before the digest whose chains did not grow",
            "certifications": "each examined certified skill put through the duplicate gate again, from the signed "
                              "texts, and its stored embedding compared with its text's; an unchanged one's embedding "
                              "is not read (a full audit reads every one)",
            "trusted": "versions up to each digest head, through the digest's signed heads_root; for examined "
                       "entities they were re-hashed and re-linked, their signatures not re-checked; a digest "
                       "attests only heads verified from the newest digest it could trust (or from the genesis); "
                       "one that failed is held at its trusted leaf, so it is examined here",
        }


def audit_since_latest_digest(session: Session, *, keyring: KeyRing, embedder: Embedder) -> IncrementalResult:
    digest = latest_digest(session)
    if digest is None:
        raise NotFound("no ledger digest is stored yet; an incremental audit needs one")
    result = IncrementalResult(digest.id, digest.as_of.isoformat())
    invalid = stored_digest_invalid(session, digest, keyring)
    if invalid is not None:  # its leaves may have been edited to hide what changed
        result.findings.append(invalid)
        result.digest_trusted = False
        return result
    append_only = append_only_enforced(session)
    if not append_only:  # a version behind a leaf, or the digest's rows, may have been rewritten in place
        result.findings.append(_guards_lifted(digest))
        result.digest_trusted = False
        return result
    accounted = 0  # leaves whose entity is live, or deleted since the digest and examined here
    deleted: set[tuple[str, uuid.UUID]] = set()
    plan: dict[EntityType, Changed] = {}
    for entity_type in EntityType:
        plan[entity_type], with_leaf, deleted_ids, live_again = _changed_since(session, entity_type, digest)
        accounted += with_leaf
        deleted |= {(entity_type.value, entity_id) for entity_id in deleted_ids}
        result.findings += [FindingRow(entity_type.value, entity_id, version, "entity-undeleted",
                                       "live, though the digest keeps its deletion (a tombstone): Plant brings no deleted entity back")
                            for entity_id, version in live_again]
    for entity_type, ids in _seat_partners(session, plan).items():
        plan[entity_type] += _changed_since(session, entity_type, digest, ids)[0]
    for entity_type, changed in plan.items():
        _audit_in_batches(session, entity_type, changed, keyring, embedder, append_only, result)
    # Counted after the chains were read, not before: each statement sees the commits made
    # until it starts, so a version committed meanwhile is then either in both counts or in
    # the ledger's alone, which makes them disagree and the search below run. Counted first,
    # a write committed between the count and the reads added to the chains' side alone, and
    # hid as many versions forged behind rows left as they were.
    ledger_versions, leaf_versions = _version_totals(session, digest)
    if ledger_versions != leaf_versions + sum(length - leaf for length, leaf in result.chains.values()):
        result.version_count_balanced = False
        for entity_type, changed in _grown_behind_rows(session, digest, set(result.chains)).items():
            _audit_in_batches(session, entity_type, changed, keyring, embedder, append_only, result)
    # An entity has at most one leaf, so when every leaf is accounted for, none vanished: the
    # anti-join that names vanished leaves (a scan of every leaf) runs only when one did.
    leaves, tombstones = _row_counts(session, digest)
    # A chain whose row is gone (removed past its table's guard, or versions INSERTed under an
    # id no row has) is read by nothing above: its versions unbalance the counts (one in no
    # digest, or behind a tombstone), or its leaf is not accounted for. Then the full audit's
    # anti-join names them (entity-row-missing: entities of the run, non-compliant).
    if not result.version_count_balanced or leaves != accounted:
        rowless = rowless_chains(session)
        result.findings += rowless
        deleted |= {(f.entity_type, f.entity_id) for f in rowless}
    if leaves != accounted:
        result.findings += _vanished(session, digest.id, deleted)
    # Checked once, at the start, the digest's rows were read by later statements, each
    # seeing what had committed by then. Its rows take no UPDATE, nor an INSERT once it is
    # signed, but an unkept digest's may be DELETEd (pruning, or anyone with DML): gone
    # after the heads were compared with them, they left the searches above nothing to look
    # through, and a chain grown behind its reset row, or a vanished entity, went unreported.
    if leaves != digest.entity_count or tombstones != digest.document.get("tombstone_count", 0):
        result.findings.append(FindingRow(None, None, None, "digest-invalid", (
            f"stored ledger digest {digest.id} ({digest.as_of.isoformat()}): {leaves} leaf and {tombstones} tombstone rows "
            f"are left of its {digest.entity_count} and {digest.document.get('tombstone_count', 0)} while the audit read "
            "them (pruned or deleted meanwhile): what it found stands, but what it did not find is not vouched for; "
            "run a full audit")))
        result.digest_rows_kept = False
    return result


def _guards_lifted(digest: LedgerDigest) -> FindingRow:
    """The run-level finding of a run that found the guards lifted (rule L0-03): a full audit
    reports every entity under L0-03, and the digest vouches for nothing, since what it holds
    (the versions up to each leaf, its own rows) could have been rewritten in place and set
    back where no incremental audit reads."""
    return FindingRow(None, None, None, "digest-invalid", (
        f"stored ledger digest {digest.id} ({digest.as_of.isoformat()}): the append-only guards are lifted or not what "
        "the migrations made them (rule L0-03), so the versions and rows it vouches for could have been rewritten in "
        "place; its leaves are not trusted, nothing was examined: run a full audit"))


def _changed_since(session: Session, entity_type: EntityType, digest: LedgerDigest,
                   among: list[uuid.UUID] | None = None) -> tuple[Changed, int, list[uuid.UUID], list[tuple[uuid.UUID, int]]]:
    """(id, base version, base link) of each entity whose head is not the digest's (or of
    each one ``among`` these ids): live ones, deleted ones the digest held (deleted since,
    by a signed version or not), and deleted ones it has no head of (:func:`_unknown_to`);
    how many of the digest's leaves that accounts for (the live entities with a leaf, and
    the deleted ones with a leaf); the ids of the deleted ones; and (id, tombstone version)
    of the live ones the digest keeps a tombstone for. One statement, so one snapshot. An
    entity deleted before the digest is not in it, and not read."""
    digest_id, tombstones_id = digest.id, tombstones_of(digest)
    model = ENTITY_MODELS[entity_type]
    head, tomb = LedgerDigestHead, LedgerDigestTombstone
    # An entity the digest keeps a tombstone for (and no leaf) is examined from its deletion
    # when its row is live (Plant brings no deleted entity back) or names another head.
    changed = select(model.id, func.coalesce(head.version, tomb.version), func.coalesce(head.link_hash, tomb.link_hash),
                     case((model.deleted_at.is_not(None), 1), else_=0).label("deleted"), head.link_hash.is_not(None)).outerjoin(
        head, and_(head.digest_id == digest_id, head.entity_id == model.id, head.entity_type == entity_type.value)
    ).outerjoin(tomb, and_(tomb.digest_id == tombstones_id, tomb.entity_id == model.id, tomb.entity_type == entity_type.value,
                        head.link_hash.is_(None)))
    if among is None:
        changed = changed.where(or_(model.deleted_at.is_(None), head.link_hash.is_not(None), _tombstone_moved(model, tomb),
                                    _unknown_to(model, entity_type, digest)))  # IS DISTINCT FROM: a head set to NULL differs from its leaf too; a leaf of version 0 vouches for nothing
        # A deleted row with a leaf was live at the digest: examined even at its leaf's head
        # (which records no deletion, as no leaf's does), so a deletion its row alone states
        # is the row-content-mismatch the full audit reports, not a deletion.
        changed = changed.where(or_(head.link_hash.is_(None), head.link_hash.is_distinct_from(model.head_link_hash),
                                    head.version == 0, head.link_hash == GENESIS_LINK, model.deleted_at.is_not(None)))
    else:  # as asked: a deleted entity still at its tombstone whose chain grew behind it included
        changed = changed.where(uuid_in(model.id, among))
    live = select(null(), null(), null(), func.count(), null()).select_from(model).where(model.deleted_at.is_(None))
    rows = session.execute(union_all(changed, live)).all()
    live_count = next(row[3] for row in rows if row[0] is None)
    rows = sorted((row for row in rows if row[0] is not None), key=lambda row: row[0])
    new = sum(1 for row in rows if not row[4] and not row[3])
    deleted = [row[0] for row in rows if row[3]]
    with_leaf = live_count - new + sum(1 for row in rows if row[3] and row[4])
    changed_rows = [(r[0], r[1] or 0, bytes(r[2]) if r[2] is not None else GENESIS_LINK) for r in rows]
    live_again = [(r[0], r[1] or 0) for r in rows if not r[3] and not r[4] and r[2] is not None]
    return changed_rows, with_leaf, deleted, live_again


def _seat_partners(session: Session, plan: dict[EntityType, Changed]) -> dict[EntityType, list[uuid.UUID]]:
    """Entities not in ``plan`` whose seat rules read an entity in it: the agents seated in a
    team, or under a job role, changed since the digest (AGENT-04 judges them on it: a team
    deleted or retired by a signed version, a role requiring another skill), and the teams
    the agents changed since sit in, or sat in at the digest (TEAM-03 and TEAM-01 count
    them: a team its last agent left has none). Three queries, none when no team, role or
    agent changed."""
    examined = {entity_type: {entity_id for entity_id, _, _ in changed} for entity_type, changed in plan.items()}
    teams, roles, agents = examined[EntityType.TEAM], examined[EntityType.JOB_ROLE], examined[EntityType.AGENT]
    partners: dict[EntityType, list[uuid.UUID]] = {}
    if teams or roles:
        members = session.scalars(select(Agent.id).where(Agent.team_id.is_not(None), or_(
            uuid_in(Agent.team_id, sorted(teams)), uuid_in(Agent.job_role_id, sorted(roles))))).all()
        partners[EntityType.AGENT] = sorted(set(members) - agents)
    if agents:
        seats = session.scalars(select(Agent.team_id).distinct().where(
            Agent.team_id.is_not(None), uuid_in(Agent.id, sorted(agents)))).all()
        left = _teams_at_leaves(session, [(entity_id, version) for entity_id, version, _ in plan[EntityType.AGENT] if version])
        partners[EntityType.TEAM] = sorted({*seats, *left} - teams)
    return {entity_type: ids for entity_type, ids in partners.items() if ids}


def _teams_at_leaves(session: Session, leaves: list[tuple[uuid.UUID, int]]) -> set[uuid.UUID]:
    """The teams the agents' leaf versions, (id, version), seat them in. A version that is no
    readable JSON, or names no team id, names none (its chain has its own finding)."""
    if not leaves:
        return set()
    found = session.scalars(_LEAF_CONTENTS, {"ids": [i for i, _ in leaves], "versions": [v for _, v in leaves]})
    teams = set()
    for content in found:
        try:
            teams.add(uuid.UUID(strict_json_loads(bytes(content)).get("team_id")))
        except (ValueError, AttributeError, TypeError):
            continue
    return teams


_LEAF_CONTENTS = text(
    "SELECT v.content FROM entity_versions v JOIN unnest(CAST(:ids AS uuid[]), CAST(:versions AS integer[])) AS leaf(id, version) "
    "ON v.entity_id = leaf.id AND v.version = leaf.version WHERE v.entity_type = 'agent'")


def _tombstone_moved(model: Any, tomb: Any) -> Any:
    """The entity's row is no longer at the digest's tombstone ``tomb`` (joined to it), or
    that names no version: its head moved after its deletion, or the tombstone was held."""
    return and_(tomb.link_hash.is_not(None), or_(tomb.link_hash.is_distinct_from(model.head_link_hash), tomb.version == 0))


def _unknown_to(model: Any, entity_type: EntityType, digest: LedgerDigest) -> Any:
    """A deleted entity the digest holds no leaf of has no tombstone in it either (migration
    0018), of its type (a row of another type under a tombstone's id is not its entity):
    deleted since, or created after the digest's leaves were written, whatever its stamp.
    Before 0018 a digest kept no tombstone: its first version was stamped after the
    digest's ``as_of`` (not the row's time; a version stamped before it and committed after
    the leaves were written is then missed)."""
    if tombstones_of(digest) is None:
        first = aliased(EntityVersion)  # the caller may read the versions table itself: no correlation to it
        return select(first.id).where(first.entity_id == model.id, first.version == 1, first.created_at > digest.as_of).exists()
    tomb = aliased(LedgerDigestTombstone)
    return ~select(tomb.entity_id).where(tomb.digest_id == digest.id, tomb.entity_id == model.id,
                                         tomb.entity_type == entity_type.value).exists()


def _version_totals(session: Session, digest: LedgerDigest) -> tuple[int, int]:
    """Versions in the ledger (but, against a digest that keeps no tombstones, those of
    entities deleted before it), and the sum of the digest's leaf and tombstone versions
    (one snapshot).

    Version numbers run 1..n without gaps, so an entity whose chain still ends at its leaf
    holds exactly its leaf's version count: the ledger's total equals the leaves' sum
    plus what examined entities added, unless some unexamined chain grew (or lost history).
    An entity deleted before the digest has no leaf and, while its row stays at its
    tombstone, is not examined: it stands on its tombstone's version as a live one on its
    leaf's, so a version forged behind it unbalances the counts too. A digest stored before
    migration 0018 keeps no tombstone: such an entity's versions are then counted apart,
    from its row (one the digest has no head of is examined instead).
    """
    head, tomb, digest_id, tombstones_id = LedgerDigestHead, LedgerDigestTombstone, digest.id, tombstones_of(digest)
    leaves = select(func.coalesce(func.sum(head.version), 0)).where(head.digest_id == digest_id).scalar_subquery()
    ledger = select(func.count()).select_from(EntityVersion).scalar_subquery()
    no_leaf = [~select(head.entity_id).where(head.digest_id == digest_id, head.entity_id == model.id).exists()
               for model in ENTITY_MODELS.values()]
    if tombstones_id is None:
        apart = [select(func.count()).select_from(EntityVersion).join(model, model.id == EntityVersion.entity_id).where(
            model.deleted_at.is_not(None), EntityVersion.entity_type == entity_type.value, unleafed,
            ~_unknown_to(model, entity_type, digest),
        ).scalar_subquery() for (entity_type, model), unleafed in zip(ENTITY_MODELS.items(), no_leaf, strict=True)]
        counted, leaf_sum, *rest = session.execute(select(ledger, leaves, *apart)).one()
        return counted - sum(rest), leaf_sum
    # Every tombstone of an entity with no leaf: those examined from it (see _changed_since)
    # and those not, whose rows are still at it.
    from_tombstones = [select(func.coalesce(func.sum(tomb.version), 0)).join(model, model.id == tomb.entity_id).where(
        tomb.digest_id == tombstones_id, tomb.entity_type == entity_type.value, unleafed).scalar_subquery()
        for (entity_type, model), unleafed in zip(ENTITY_MODELS.items(), no_leaf, strict=True)]
    counted, leaf_sum, *rest = session.execute(select(ledger, leaves, *from_tombstones)).one()
    return counted, leaf_sum + sum(rest)


def _grown_behind_rows(session: Session, digest: LedgerDigest, examined: set[uuid.UUID]) -> dict[EntityType, Changed]:
    """Entities not yet examined whose chain has a version numbered after their leaf (or,
    deleted before the digest, their tombstone), or below 1: a row reset to the digest's
    head hides later versions from the head comparison, and a version INSERTed past a gap
    (or numbered 0) joins no head at all."""
    version, grown = EntityVersion, []
    for rows, digest_id in ((LedgerDigestHead, digest.id), (LedgerDigestTombstone, tombstones_of(digest))):
        if digest_id is None:
            continue
        beyond = or_(version.version > rows.version, version.version < 1)
        grown += session.execute(select(rows.entity_type, rows.entity_id).distinct().join(
            version, and_(version.entity_id == rows.entity_id, beyond)).where(rows.digest_id == digest_id)).all()
    by_type: dict[EntityType, list[uuid.UUID]] = {}
    for entity_type, entity_id in grown:
        if entity_id not in examined:
            by_type.setdefault(EntityType(entity_type), []).append(entity_id)
    return {entity_type: _changed_since(session, entity_type, digest, ids)[0]
            for entity_type, ids in by_type.items()}


def _row_counts(session: Session, digest: LedgerDigest) -> tuple[int, int]:
    """How many leaf rows, and tombstone rows (0 for a digest that keeps none), the digest has now (one snapshot)."""
    leaves = select(func.count()).select_from(LedgerDigestHead).where(LedgerDigestHead.digest_id == digest.id)
    tombstones_id = tombstones_of(digest)
    if tombstones_id is None:
        return session.scalar(leaves), 0
    tombstones = select(func.count()).select_from(LedgerDigestTombstone).where(LedgerDigestTombstone.digest_id == tombstones_id)
    leaf_count, tombstone_count = session.execute(select(leaves.scalar_subquery(), tombstones.scalar_subquery())).one()
    return leaf_count, tombstone_count


def _audit_in_batches(session: Session, entity_type: EntityType, changed: Changed, keyring: KeyRing, embedder: Embedder,
                      append_only: bool, result: IncrementalResult) -> None:
    for start in range(0, len(changed), BATCH):
        _audit_changed(session, entity_type, changed[start : start + BATCH], keyring, embedder, append_only, result)


def _audit_changed(session: Session, entity_type: EntityType, changed: Changed, keyring: KeyRing, embedder: Embedder,
                   append_only: bool, result: IncrementalResult) -> None:
    base = {entity_id: (version, link) for entity_id, version, link in changed}
    # Keyed by entity: a suspect is checked twice (the second time locked), and what its
    # second check found replaces its first, here as in its findings; a list took it twice.
    rolled: dict[uuid.UUID, tuple[uuid.UUID, int | None, bytes]] = {}

    def check(entities: list) -> BatchResult:
        return _check_changed(session, entities, base, keyring, embedder, append_only, rolled, result)

    entities = load_entities(session, entity_type, list(base))
    # Rows and versions are read by two statements: suspects are checked again, locked.
    batch = suspects_rechecked(session, check(entities), entities, check) if entities else BatchResult()
    result.findings += batch.findings
    result.entities += batch.entities
    result.versions_verified += batch.versions_verified
    result.findings += [FindingRow(h.entity_type or entity_type.value, h.entity_id, h.finding.version, h.finding.code,
                                   h.finding.detail) for h in compare_heads(session, list(rolled.values()))]


def _check_changed(session: Session, entities: list, base: dict, keyring: KeyRing, embedder: Embedder, append_only: bool,
                   rolled: dict, result: IncrementalResult) -> BatchResult:
    """Each entity's whole chain; one whose leaf is gone from its chain is put in
    ``rolled`` (its rollback or rewrite is named by :func:`compare_heads`), one whose leaf
    is there taken out of it (a check made again decides), and every signature of its
    chain is checked. Certified skills among them go through the duplicate gate again, as
    in a full audit (:func:`models.certification_gates.gates_rechecked`)."""
    batch = BatchResult()
    versions = versions_by_entity(session, [entity.id for entity in entities])
    seats = seat_facts(session, entities, keyring)
    sealed = seal_findings(session, ((entity, versions.get(entity.id, [])) for entity in entities), keyring)
    kind = entities[0].entity_type_value.value if entities else ""
    for entity in entities:
        leaf = base[entity.id]
        rows = versions.get(entity.id, [])
        # Keyed: a suspect's second check overwrites. Only versions of the row's own type count:
        # a row of another type under an entity's id (a decoy INSERTed marked deleted, which the
        # digest holds no head of) reads that entity's chain, and counted it as its growth, which
        # balanced the counts over as many versions forged behind rows left at their leaves.
        result.chains[entity.id] = (sum(1 for row in rows if row.entity_type == kind), leaf[0])
        batch.entities += 1
        split = _after_leaf(rows, leaf)
        rolled.pop(entity.id, None)
        if split is None:  # the trusted head is gone: classified by compare_heads, and
            rolled[entity.id] = (entity.id, leaf[0], leaf[1])
            split = 0  # nothing of the chain is vouched for, so all of it is checked
        content = governed_content(entity)
        findings = _chain_findings(entity, rows, split, keyring, content) + ([sealed[entity.id]] if entity.id in sealed else [])
        batch.findings += [FindingRow(kind, entity.id, f.version, f.code, f.detail) for f in findings]
        batch.findings += rule_findings(entity, content, rows, append_only, seats)
        batch.versions_verified += len(rows) - split
        result.versions_rehashed[entity.id] = split
    batch.findings += gate_findings(session, entities, batch.findings, keyring=keyring, embedder=embedder)
    return batch


def _after_leaf(rows: list, leaf: tuple[int, bytes]) -> int | None:
    """How many of ``rows`` the leaf covers (0 for an entity new since the digest, or held
    at the placeholder: models.digest_check), or None when no version carries the leaf's
    link any more (a leaf of version 0 with another link: one its chain lost)."""
    if not leaf[0]:
        return 0 if leaf[1] == GENESIS_LINK else None
    return next((i + 1 for i, row in enumerate(rows) if bytes(row.link_hash) == leaf[1]), None)


def _chain_findings(entity: Any, rows: list, split: int, keyring: KeyRing, content: dict) -> list[ChainFinding]:
    """The full audit's checks over the whole chain (hashes and links from genesis, the
    head's signature, head and row against the last version), plus every other signature
    after the leaf. Versions up to the leaf are vouched for by the signed digest, so their
    signatures are not re-checked; a link into the leaf that no longer hashes is found.
    One pass: hashes and links from genesis, signatures from the first version after the leaf."""
    return verify_loaded(entity, rows, keyring=keyring, signatures="heads", content=content, signed_from=split).findings


def _vanished(session: Session, digest_id: int, examined: set[tuple[str, uuid.UUID]]) -> list[FindingRow]:
    """Leaves of the digest whose entity's row is not in its type's table (a row of another
    type under its id, say): an anti-join. A row marked deleted with a leaf was
    ``examined``, signed deletion or not, and a chain with no row at all was reported
    ``entity-row-missing`` (in ``examined`` too)."""
    findings = []
    for entity_type, model in ENTITY_MODELS.items():
        alive = select(model.id).where(model.id == LedgerDigestHead.entity_id, model.deleted_at.is_(None))
        gone = session.execute(
            select(LedgerDigestHead.entity_id, LedgerDigestHead.version).where(
                LedgerDigestHead.digest_id == digest_id, LedgerDigestHead.entity_type == entity_type.value,
                ~alive.exists())
        ).all()
        findings += [FindingRow(entity_type.value, entity_id, version, "entity-deleted", "in the digest, gone from the registry")
                     for entity_id, version in gone if (entity_type.value, entity_id) not in examined]
    return findings
