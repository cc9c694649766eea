"""What the auditor's HTML report shows, prepared from a run and its signed report.

:func:`report_view` builds the same report document as the JSON export, signs it the
same way, and derives what a reader needs: the summary figures, findings counted by
rule and by code, one row per entity that has findings (worst first, capped) and the
digest, signature and public key to check the export offline. A finished (or
cancelled) run shows its stored summary; a run still in progress has no summary yet,
so its counts are taken from the findings written so far and marked partial.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from models.audit_findings import in_spans, left_out_spans
from models.canonical import canonical_bytes, sha256
from models.key_seals import with_seal_lists
from models.repair import verify_repair
from models.reports import build_report, recorded_report_signature
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
    entities_audited: int  # so far, from the chunks' checkpoints
    signature: SignatureDetails
    repairs: tuple[dict[str, Any], ...] = ()  # each export with "verified": its own signature checks out
    run_level: tuple[dict[str, Any], ...] = ()  # the findings about no one entity, worst first (the page lists 100)

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
    record of the page's report signature (the caller commits)."""
    report = build_report(session, run_id=run_id, keyring=keyring)
    checking = with_seal_lists(keyring, session)  # a repair record a sealed key signed must be on its seal's list
    run, summary = report["run"], report["run"]["summary"]
    left_out = in_spans(left_out_spans(summary or run))  # a running run's: those no checkpoint names so far
    findings = [f for f in report["findings"] if not left_out(f["finding_id"])]  # counted nowhere, shown nowhere here
    rows = entity_rows(findings)
    with_findings = len(rows)
    flagged = None if summary is None else _flagged(summary, findings)
    return ReportView(
        run=run,
        final=summary is not None,
        figures=_figures(run, findings, summary),
        by_rule=summary["by_rule"] if summary else _count(f["rule_id"] for f in findings if f["rule_id"]),
        by_code=summary["by_code"] if summary else _count(f["code"] for f in findings),
        entity_rows=tuple(rows[:max_rows]),
        entities_with_findings=with_findings,
        clean_entities=None if flagged is None else max(0, summary["total_entities"] - flagged),
        audited_with_findings=flagged,
        run_level_findings=sum(1 for f in findings if f["entity_id"] is None),
        run_level=run_level_rows(findings),
        entities_audited=summary["total_entities"] if summary else run["entities_audited"],
        signature=_signature(session, report, keyring),
        repairs=tuple({**record, "verified": verify_repair(record, checking)} for record in report["repairs"]),
    )


def run_level_rows(findings: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The findings about no one entity, worst severity first, then in the order written: the
    page lists the first :data:`MAX_RUN_LEVEL_ROWS`, and a critical one (the close's
    ``audit-record-invalid``, written last) must not fall past them behind warnings."""
    return tuple(sorted((f for f in findings if f["entity_id"] is None),
                        key=lambda f: (-SEVERITY_RANK.get(f["severity"], 0), f["finding_id"])))


def entity_rows(findings: list[dict[str, Any]]) -> list[EntityRow]:
    """One row per entity with findings: worst severity first, then most findings."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for finding in findings:
        if finding["entity_id"] is not None:
            grouped.setdefault((finding["entity_type"] or "", finding["entity_id"]), []).append(finding)
    rows = [
        EntityRow(entity_type, entity_id, len(items), tuple(sorted({f["code"] for f in items})),
                  max((f["severity"] for f in items), key=lambda s: SEVERITY_RANK.get(s, 0)))
        for (entity_type, entity_id), items in grouped.items()
    ]
    rows.sort(key=lambda r: (-SEVERITY_RANK.get(r.worst_severity, 0), -r.findings, r.entity_type, r.entity_id))
    return rows


def _figures(run: dict[str, Any], findings: list[dict[str, Any]], summary: dict[str, Any] | None) -> dict[str, Any]:
    if summary is not None:
        keys = ("total_entities", "compliant", "non_compliant", "versions_verified", "findings",
                "duration_seconds", "signatures")
        # Runs closed before the summary named its database role, or the rule catalogue, have none.
        return {**{key: summary[key] for key in keys}, "database_role": summary.get("database_role"),
                "constitution_versions": summary.get("constitution_versions")}
    return {
        "total_entities": run["entities_total"], "compliant": None, "non_compliant": None,
        "versions_verified": None, "findings": len(findings), "duration_seconds": None,
        "signatures": run["params"].get("verify_signatures") or "heads", "database_role": None,
        "constitution_versions": None,
    }


def _flagged(summary: dict[str, Any], findings: list[dict[str, Any]]) -> int:
    """Audited entities with any finding: the summary's ``entities_with_findings``, which
    counts those it audited, as its totals do (a run that stopped part-way: not the digest's
    findings about entities it never reached). Runs closed before the summary had it count
    every entity a finding names but those deleted. The page's "clean" is the total less
    these, floored at 0: a digest given with the audit may name entities outside a narrowed scope.
    """
    flagged = summary.get("entities_with_findings")
    if not isinstance(flagged, int):
        flagged = len({f["entity_id"] for f in findings if f["entity_id"] is not None and f["code"] not in NOT_AUDITED_CODES})
    return flagged


def _count(values: Any) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _signature(session: Session, report: dict[str, Any], keyring: KeyRing) -> SignatureDetails:
    key, payload = keyring.active, canonical_bytes(report)  # the JWS payload, made once
    return SignatureDetails(
        report_sha256=sha256(payload).hex(),  # stable once the run has finished
        jws=recorded_report_signature(session, report, keyring, payload=payload),
        kid=key.kid,
        alg=key.algorithm,
        jwks_json=json.dumps({"keys": [key.public_jwk()]}, indent=2),
    )
