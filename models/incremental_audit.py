"""Incremental audit: verify only what changed since the latest stored ledger digest it can trust.

The digest's leaves (kept in ``ledger_digest_heads``) are trusted heads, once the digest's
signed document and the root of its stored leaves check out. Newer rows that do not (forged
or unsigned rows INSERTed through SQL, dated now; copies of the signed document whose rows
differ) are each reported ``digest-invalid`` and passed over, among a bounded number of rows
(:func:`models.ledger_store.newest_trusted_digest`); with none trusted the run reports
``digest-invalid`` and verifies nothing. An entity is examined when its row's head is
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
again at the end: an unkept digest's rows may be deleted while the run reads them). What
changed, and what the counts say, is read by :mod:`models.incremental_changes`.

Memory: every entity can fail the digest (each row changed through SQL since), so no finding
is kept: each is handed to the caller's sink as it is found (a batch's, a page of chains no
row holds, a run-level one), in the order a run records them, and the chains' counts are
summed a batch at a time (:class:`ChainTally`). What stays per examined entity is its place
in the plan (id and leaf) and, for the vanished-leaf search, the ids of the deleted ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from models.audit import (
    BatchResult, FindingRow, gate_findings, load_entities, none_trusted_among, passed_over_findings, rowless_chain_pages,
    rule_findings, seat_facts, suspects_rechecked, versions_by_entity,
)
from models.audit_tables import LedgerDigest
from models.chain import GENESIS_LINK, ChainFinding
from models.chain_verification import verify_loaded
from models.seal_check import seal_findings
from models.constitution import append_only_enforced
from models.embeddings import Embedder
from models.entities import EntityType, governed_content
from models.errors import NotFound
from models.incremental_changes import (
    Changed, changed_since, grown_behind_rows, row_counts, seat_partners, vanished, version_totals,
)
from models.ledger_compare import compare_heads
from models.ledger_store import LATEST_DIGESTS_READ, newest_trusted_digest
from models.signing import KeyRing

BATCH = 500

# Where a run's findings go as they are found (a run's start writes them: models.audit_runs),
# in the order found, a batch's (or a run-level finding) at a time.
FindingSink = Callable[[list[FindingRow]], object]


@dataclass
class ChainTally:
    """What the examined chains add up to, summed a batch at a time: each one's versions of its
    own type past its leaf (``grown``), and its versions up to the leaf re-hashed only
    (``rehashed``). An entity checked twice counts its last check: a suspect, checked again
    locked in its batch, and an id examined under two types (a row of another type under an
    entity's id), whose counts are kept apart (``last``) until the totals are read. The ids
    planned under two types are known before (``shared``); the others count as they come."""

    shared: set[uuid.UUID] = field(default_factory=set)
    grown: int = 0
    rehashed: int = 0
    last: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)
    unread: set[tuple[EntityType, uuid.UUID]] = field(default_factory=set)  # planned, but their row was not read

    def add(self, batch: dict[uuid.UUID, tuple[int, int]]) -> None:
        """Count a batch's chains, ``{entity id: (grown, rehashed)}``."""
        for entity_id, counts in batch.items():
            if entity_id in self.shared:
                self.last[entity_id] = counts
            else:
                self.grown += counts[0]
                self.rehashed += counts[1]

    def grown_total(self) -> int:
        return self.grown + sum(grown for grown, _ in self.last.values())

    def rehashed_total(self) -> int:
        return self.rehashed + sum(rehashed for _, rehashed in self.last.values())


@dataclass
class IncrementalResult:
    digest_id: int
    digest_as_of: str
    sink: FindingSink = field(repr=False, compare=False)  # each finding is handed to it as found, none kept
    findings_written: int = 0
    entities: int = 0  # examined: changed since the digest, rolled back included
    versions_verified: int = 0  # after the leaf: hashed, linked and signature-checked
    chains: ChainTally = field(default_factory=ChainTally, repr=False)  # examined
    digest_trusted: bool = True
    digest_rows_kept: bool = True  # False: some of its rows went while the run read them (a digest-invalid finding says so)
    version_count_balanced: bool = True
    digests_passed_over: int = 0  # newer stored digests not trusted (each a digest-invalid finding)

    @property
    def versions_rehashed(self) -> int:  # up to the leaf: hashed and linked
        return self.chains.rehashed_total()

    def write(self, findings: Iterable[FindingRow]) -> None:
        """Hand ``findings`` to the sink, in the order found, and count them."""
        findings = list(findings)
        if findings:
            self.sink(findings)
            self.findings_written += len(findings)

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
            "digests_passed_over": self.digests_passed_over,
            "entities_examined": self.entities,
            "versions_signature_checked": self.versions_verified,
            "versions_rehashed_only": self.versions_rehashed,
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


def audit_since_latest_digest(session: Session, *, keyring: KeyRing, embedder: Embedder,
                              sink: FindingSink) -> IncrementalResult:
    """What changed since the latest stored digest that can be trusted
    (:func:`models.ledger_store.newest_trusted_digest`); each newer one is reported
    (``digest-invalid``) and passed over, so rows INSERTed through SQL after every digest do
    not stop incremental coverage. With none trusted, nothing is examined.

    Every finding is handed to ``sink`` as it is found (a batch of examined entities' at a
    time, run-level ones one by one), in the order a run records them, and none is kept: the
    result counts them (``findings_written``). Every entity can fail the digest."""
    digest, passed = newest_trusted_digest(session, keyring)
    if digest is None and not passed:
        raise NotFound("no ledger digest is stored yet; an incremental audit needs one")
    result = _since(digest or passed[0][0], passed, sink)
    if digest is None:  # its leaves may have been edited to hide what changed
        if len(passed) == LATEST_DIGESTS_READ:
            result.write([none_trusted_among(LATEST_DIGESTS_READ)])
        result.digest_trusted = False
        return result
    if not append_only_enforced(session):  # a version behind a leaf, or the digest's rows, may have been rewritten in place
        result.write([_guards_lifted(digest)])
        result.digest_trusted = False
        return result
    accounted = 0  # leaves whose entity is live, or deleted since the digest and examined here
    deleted: set[tuple[str, uuid.UUID]] = set()
    plan: dict[EntityType, Changed] = {}
    for entity_type in EntityType:
        plan[entity_type], with_leaf, deleted_ids, live_again = changed_since(session, entity_type, digest)
        accounted += with_leaf
        deleted |= {(entity_type.value, entity_id) for entity_id in deleted_ids}
        result.write(FindingRow(entity_type.value, entity_id, version, "entity-undeleted",
                                "live, though the digest keeps its deletion (a tombstone): Plant brings no deleted entity back")
                     for entity_id, version in live_again)
    for entity_type, ids in seat_partners(session, plan).items():
        plan[entity_type] += changed_since(session, entity_type, digest, ids)[0]
    _audit_plan(session, plan, keyring, embedder, result)
    # Counted after the chains were read, not before: each statement sees the commits made
    # until it starts, so a version committed meanwhile is then either in both counts or in
    # the ledger's alone, which makes them disagree and the search below run. Counted first,
    # a write committed between the count and the reads added to the chains' side alone, and
    # hid as many versions forged behind rows left as they were.
    ledger_versions, leaf_versions = version_totals(session, digest)
    if ledger_versions != leaf_versions + result.chains.grown_total():
        result.version_count_balanced = False
        _audit_plan(session, grown_behind_rows(session, digest, _examined(plan, result.chains)), keyring, embedder, result)
    # An entity has at most one leaf, so when every leaf is accounted for, none vanished: the
    # anti-join that names vanished leaves (a scan of every leaf) runs only when one did.
    leaves, tombstones = row_counts(session, digest)
    # A chain whose row is gone (removed past its table's guard, or versions INSERTed under an
    # id no row has) is read by nothing above: its versions unbalance the counts (one in no
    # digest, or behind a tombstone), or its leaf is not accounted for. Then the full audit's
    # anti-join names them (entity-row-missing: entities of the run, non-compliant), a page at a time.
    if not result.version_count_balanced or leaves != accounted:
        for page in rowless_chain_pages(session):
            result.write(page)
            deleted |= {(f.entity_type, f.entity_id) for f in page}
    if leaves != accounted:
        for found in vanished(session, digest.id, deleted):
            result.write(found)
    # Checked once, at the start, the digest's rows were read by later statements, each
    # seeing what had committed by then. Its rows take no UPDATE, nor an INSERT once it is
    # signed, but an unkept digest's may be DELETEd (pruning, or anyone with DML): gone
    # after the heads were compared with them, they left the searches above nothing to look
    # through, and a chain grown behind its reset row, or a vanished entity, went unreported.
    if leaves != digest.entity_count or tombstones != digest.document.get("tombstone_count", 0):
        result.write([FindingRow(None, None, None, "digest-invalid", (
            f"stored ledger digest {digest.id} ({digest.as_of.isoformat()}): {leaves} leaf and {tombstones} tombstone rows "
            f"are left of its {digest.entity_count} and {digest.document.get('tombstone_count', 0)} while the audit read "
            "them (pruned or deleted meanwhile): what it found stands, but what it did not find is not vouched for; "
            "run a full audit"))])
        result.digest_rows_kept = False
    return result


def _since(digest: LedgerDigest, passed: list[tuple[LedgerDigest, str]], sink: FindingSink) -> IncrementalResult:
    """The result of a run since ``digest``, with a ``digest-invalid`` finding written for
    each newer stored digest ``passed`` over."""
    result = IncrementalResult(digest.id, digest.as_of.isoformat(), sink, digests_passed_over=len(passed))
    result.write(passed_over_findings(digest, passed))
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


def _audit_plan(session: Session, plan: dict[EntityType, Changed], keyring: KeyRing, embedder: Embedder,
                result: IncrementalResult) -> None:
    """Examine each entity of ``plan``, type by type, :data:`BATCH` at a time."""
    result.chains.shared |= _under_two_types(plan)
    for entity_type, changed in plan.items():
        for start in range(0, len(changed), BATCH):
            _audit_changed(session, entity_type, changed[start : start + BATCH], keyring, embedder, result)


def _under_two_types(plan: dict[EntityType, Changed]) -> set[uuid.UUID]:
    """The ids ``plan`` holds under more than one type (a row of another type under an entity's id)."""
    seen: set[uuid.UUID] = set()
    shared: set[uuid.UUID] = set()
    for changed in plan.values():
        ids = {entity_id for entity_id, _, _ in changed}
        shared |= ids & seen
        seen |= ids
    return shared


def _examined(plan: dict[EntityType, Changed], chains: ChainTally) -> set[uuid.UUID]:
    """The ids of ``plan`` whose row was read, so examined (under any of their types)."""
    return {entity_id for entity_type, changed in plan.items() for entity_id, _, _ in changed
            if (entity_type, entity_id) not in chains.unread}


def _audit_changed(session: Session, entity_type: EntityType, changed: Changed, keyring: KeyRing, embedder: Embedder,
                   result: IncrementalResult) -> None:
    """Examine a batch of one type and write what it found: its entities' findings, then the
    rollbacks or rewrites of the leaves gone from their chains."""
    base = {entity_id: (version, link) for entity_id, version, link in changed}
    # Keyed by entity: a suspect is checked twice (the second time locked), and what its
    # second check found replaces its first, here as in its findings and its chain's counts;
    # a list took it twice.
    rolled: dict[uuid.UUID, tuple[uuid.UUID, int | None, bytes]] = {}
    counted: dict[uuid.UUID, tuple[int, int]] = {}

    def check(entities: list) -> BatchResult:
        return _check_changed(session, entities, base, keyring, embedder, rolled, counted)

    entities = load_entities(session, entity_type, list(base))
    result.chains.unread |= {(entity_type, entity_id) for entity_id in base.keys() - {e.id for e in entities}}
    # Rows and versions are read by two statements: suspects are checked again, locked.
    batch = suspects_rechecked(session, check(entities), entities, check) if entities else BatchResult()
    result.write(batch.findings)
    result.entities += batch.entities
    result.versions_verified += batch.versions_verified
    result.chains.add(counted)
    result.write(FindingRow(h.entity_type or entity_type.value, h.entity_id, h.finding.version, h.finding.code,
                            h.finding.detail) for h in compare_heads(session, list(rolled.values())))


def _check_changed(session: Session, entities: list, base: dict, keyring: KeyRing, embedder: Embedder, rolled: dict,
                   counted: dict) -> BatchResult:
    """Each entity's whole chain; one whose leaf is gone from its chain is put in
    ``rolled`` (its rollback or rewrite is named by :func:`compare_heads`), one whose leaf
    is there taken out of it (a check made again decides), and every signature of its
    chain is checked; ``counted`` gets each one's versions of its type past the leaf, and
    those up to the leaf, re-hashed only. Certified skills among them go through the
    duplicate gate again, as in a full audit (:func:`models.certification_gates.gates_rechecked`)."""
    batch = BatchResult()
    versions = versions_by_entity(session, [entity.id for entity in entities])
    seats = seat_facts(session, entities, keyring)
    sealed = seal_findings(session, ((entity, versions.get(entity.id, [])) for entity in entities), keyring)
    kind = entities[0].entity_type_value.value if entities else ""
    for entity in entities:
        leaf = base[entity.id]
        rows = versions.get(entity.id, [])
        batch.entities += 1
        split = _after_leaf(rows, leaf)
        rolled.pop(entity.id, None)
        if split is None:  # the trusted head is gone: classified by compare_heads, and
            rolled[entity.id] = (entity.id, leaf[0], leaf[1])
            split = 0  # nothing of the chain is vouched for, so all of it is checked
        # Keyed: a suspect's second check overwrites. Only versions of the row's own type count:
        # a row of another type under an entity's id (a decoy INSERTed marked deleted, which the
        # digest holds no head of) reads that entity's chain, and counted it as its growth, which
        # balanced the counts over as many versions forged behind rows left at their leaves.
        counted[entity.id] = (sum(1 for row in rows if row.entity_type == kind) - leaf[0], split)
        content = governed_content(entity)
        findings = _chain_findings(entity, rows, split, keyring, content) + ([sealed[entity.id]] if entity.id in sealed else [])
        batch.findings += [FindingRow(kind, entity.id, f.version, f.code, f.detail) for f in findings]
        # The guards were found in place before anything was examined (a run with them lifted stops there).
        batch.findings += rule_findings(entity, content, rows, True, seats)
        batch.versions_verified += len(rows) - split
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
