"""What the auditor's HTML report shows, prepared from a run and its signed report.

:func:`report_view` reads the same report as the JSON export (:func:`models.report_reads.read_report`),
signs it the same way, and derives what a reader needs: the summary figures, findings
counted by rule and by code, one row per entity that has findings (worst first, capped) and
the digest, signature and public key to check the export offline. A finished (or
cancelled) run shows its stored summary; a run still in progress has no summary yet,
so its counts are taken from the findings written so far and marked partial.

The findings are tallied a page at a time (:class:`_Tally`): the page holds the report's
bytes (its signature covers them), one small entry per entity with findings, and the worst
:data:`MAX_RUN_LEVEL_ROWS` findings about no one entity, never every finding.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from models.canonical import sha256
from models.key_seals import with_seal_lists
from models.repair import verify_repair
from models.report_reads import FindingPage, ReportRead, get_run, read_report
from models.reports import read_signature
from models.signing import KeyRing

MAX_ENTITY_ROWS = 1_000
MAX_RUN_LEVEL_ROWS = 100
SEVERITY_RANK = {"critical": 3, "error": 2, "warning": 1}
# Findings for an entity that no longer exists: it is not in total_entities (see summarize_run).
NOT_AUDITED_CODES = frozenset({"entity-deleted"})


@dataclass(frozen=True)
class EntityRow:
    entity_type: str
    entity_id: str
    findings: int
    codes: tuple[str, ...]
    worst_severity: str


@dataclass(frozen=True)
class SignatureDetails:
    """All an outside auditor needs to check the JSON export of the same run."""

    report_sha256: str
    jws: str
    kid: str
    alg: str
    jwks_json: str  # the signing key's JWK Set, pretty-printed, ready to save as a file


@dataclass(frozen=True)
class ReportView:
    run: dict[str, Any]
    final: bool  # the run has a summary: its numbers will not change any more
    figures: dict[str, Any]  # summary fields; None where a running run has no value yet
    by_rule: dict[str, int]
    by_code: dict[str, int]
    entity_rows: tuple[EntityRow, ...]
    entities_with_findings: int  # every entity a finding names: the rows of the entity table
    clean_entities: int | None
    run_level_findings: int  # findings about the registry as a whole (no entity)
    entities_audited: int | None  # so far, from the chunks' checkpoints; None: closed before runs had a summary
    signature: SignatureDetails
    repairs: tuple[dict[str, Any], ...] = ()  # each export with "verified": its own signature checks out
    run_level: tuple[dict[str, Any], ...] = ()  # the worst MAX_RUN_LEVEL_ROWS findings about no one entity, worst first

    audited_with_findings: int | None = None  # of those, the entities the run audited (its summary's count)

    @property
    def rows_capped(self) -> bool:
        return len(self.entity_rows) < self.entities_with_findings

    @property
    def not_audited_with_findings(self) -> int:
        """Entities a finding names that the run did not audit (gone from the registry, beyond
        where a stopped run reached): listed, but in none of the summary's counts."""
        return 0 if self.audited_with_findings is None else max(0, self.entities_with_findings - self.audited_with_findings)


def report_view(session: Session, *, run_id: Any, keyring: KeyRing, max_rows: int = MAX_ENTITY_ROWS) -> ReportView:
    """Prepare the page for one run; raises ``NotFound`` for an unknown run. Writes only the
    record of the page's report signature (the caller commits). The findings left out of the
    counts (``counted`` "no": none of Plant's signatures covers them) are shown nowhere here."""
    # A run with a summary is shown with its counts by rule and code: the page counts its own
    # only for a run without one (running, or closed before runs had one). The read gets this
    # same row from the session, so a run seen closed here is read closed; one closed meanwhile
    # is read closed, and what the page counted goes unused.
    run_row = get_run(session, run_id)
    tally = _Tally(own_counts=run_row.finished_at is None or run_row.summary is None)
    read = read_report(session, run_id=run_id, keyring=keyring, each_page=tally.add)
    checking = with_seal_lists(keyring, session)  # a repair record a sealed key signed must be on its seal's list
    run, summary = read.run, read.run["summary"]
    flagged = None if summary is None else _flagged(summary, tally)
    return ReportView(
        run=run,
        final=summary is not None,
        figures=_figures(run, tally.findings, summary),
        by_rule=summary["by_rule"] if summary else dict(sorted(tally.by_rule.items())),
        by_code=summary["by_code"] if summary else dict(sorted(tally.by_code.items())),
        entity_rows=tally.entity_rows(max_rows),
        entities_with_findings=len(tally.entities),
        clean_entities=None if flagged is None else max(0, summary["total_entities"] - flagged),
        audited_with_findings=flagged,
        run_level_findings=tally.run_level_count,
        run_level=tally.run_level_rows(),
        # A run closed before runs had a summary (migration 0015) reads as closed, without a count.
        entities_audited=summary["total_entities"] if summary else run.get("entities_audited"),
        signature=_signature(session, read, keyring),
        repairs=tuple({**record, "verified": verify_repair(record, checking)} for record in read.repairs),
    )


@dataclass(slots=True)
class _EntityTally:
    findings: int
    rank: int
    worst_severity: str  # the first severity seen of the worst rank
    codes: frozenset[str]
    audited: bool  # a finding about it that does not say it is gone (see NOT_AUDITED_CODES)


@dataclass
class _Tally:
    """The counted findings of a report, tallied a page at a time (:meth:`add`); with
    ``own_counts``, also counted in all and by code and rule (a run with a summary has those)."""

    own_counts: bool = True
    findings: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    entities: dict[tuple[str, str], _EntityTally] = field(default_factory=dict)
    run_level_count: int = 0
    run_level: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)  # a heap of the worst, negated
    code_sets: dict[tuple[frozenset[str], str], frozenset[str]] = field(default_factory=dict)  # shared, not one per entity

    def add(self, page: FindingPage) -> None:
        for finding, counted in page:
            if counted == "no":  # counted nowhere, shown nowhere here
                continue
            if self.own_counts:
                self.findings += 1
                self.by_code[finding["code"]] += 1
                if finding["rule_id"]:
                    self.by_rule[finding["rule_id"]] += 1
            if finding["entity_id"] is None:
                self._keep_run_level(finding)
            else:
                self._count_entity(finding)

    def _keep_run_level(self, finding: dict[str, Any]) -> None:
        """Keep the MAX_RUN_LEVEL_ROWS worst (then first written): the heap's top is the one to drop."""
        self.run_level_count += 1
        item = (SEVERITY_RANK.get(finding["severity"], 0), -finding["finding_id"], finding)
        if len(self.run_level) < MAX_RUN_LEVEL_ROWS:
            heapq.heappush(self.run_level, item)
        elif item[:2] > self.run_level[0][:2]:
            heapq.heapreplace(self.run_level, item)

    def _count_entity(self, finding: dict[str, Any]) -> None:
        key, code = (finding["entity_type"] or "", finding["entity_id"]), finding["code"]
        rank = SEVERITY_RANK.get(finding["severity"], 0)
        entity = self.entities.get(key)
        if entity is None:
            entity = self.entities[key] = _EntityTally(0, -1, finding["severity"], frozenset(), False)
        entity.findings += 1
        if rank > entity.rank:
            entity.rank, entity.worst_severity = rank, finding["severity"]
        if code not in entity.codes:
            codes = self.code_sets.get((entity.codes, code))
            if codes is None:  # made only the first time an entity's codes grow this way
                codes = self.code_sets[(entity.codes, code)] = entity.codes | {code}
            entity.codes = codes
        entity.audited = entity.audited or code not in NOT_AUDITED_CODES

    def entity_rows(self, limit: int) -> tuple[EntityRow, ...]:
        """The first ``limit`` entities with findings: worst severity first, then most findings."""
        first = heapq.nsmallest(limit, self.entities.items(),
                                key=lambda item: (-item[1].rank, -item[1].findings, item[0][0], item[0][1]))
        return tuple(EntityRow(entity_type, entity_id, t.findings, tuple(sorted(t.codes)), t.worst_severity)
                     for (entity_type, entity_id), t in first)

    def run_level_rows(self) -> tuple[dict[str, Any], ...]:
        """The :data:`MAX_RUN_LEVEL_ROWS` worst findings about no one entity, worst severity first,
        then in the order written: a critical one (the close's ``audit-record-invalid``, written
        last) must not fall past them behind warnings."""
        return tuple(finding for _, _, finding in sorted(self.run_level, reverse=True))


def _figures(run: dict[str, Any], findings: int, summary: dict[str, Any] | None) -> dict[str, Any]:
    if summary is not None:
        keys = ("total_entities", "compliant", "non_compliant", "versions_verified", "findings",
                "duration_seconds", "signatures")
        # Runs closed before the summary named its database role, or the rule catalogue, have none.
        return {**{key: summary[key] for key in keys}, "database_role": summary.get("database_role"),
                "constitution_versions": summary.get("constitution_versions")}
    return {
        "total_entities": run["entities_total"], "compliant": None, "non_compliant": None,
        "versions_verified": None, "findings": findings, "duration_seconds": None,
        "signatures": run["params"].get("verify_signatures") or "heads", "database_role": None,
        "constitution_versions": None,
    }


def _flagged(summary: dict[str, Any], tally: _Tally) -> int:
    """Audited entities with any finding: the summary's ``entities_with_findings``, which
    counts those it audited, as its totals do (a run that stopped part-way: not the digest's
    findings about entities it never reached). Runs closed before the summary had it count
    every entity a finding names but those deleted. The page's "clean" is the total less
    these, floored at 0: a digest given with the audit may name entities outside a narrowed scope.
    """
    flagged = summary.get("entities_with_findings")
    if not isinstance(flagged, int):
        flagged = len({entity_id for (_, entity_id), t in tally.entities.items() if t.audited})
    return flagged


def _signature(session: Session, read: ReportRead, keyring: KeyRing) -> SignatureDetails:
    key, payload = keyring.active, read.payload  # the JWS payload, made once
    assert payload is not None
    return SignatureDetails(
        report_sha256=sha256(payload).hex(),  # stable once the run has finished
        jws=read_signature(session, read, keyring),
        kid=key.kid,
        alg=key.algorithm,
        jwks_json=json.dumps({"keys": [key.public_jwk()]}, indent=2),
    )
