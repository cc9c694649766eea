"""Signed audit reports: the run, its summary and every finding, in RFC 8785 form.

An exported report document is ``{"report": {...}, "signature": "<detached JWS>"}``.
The JWS payload is the canonical (RFC 8785) bytes of ``report``, so anyone holding the
published JWK Set can check a saved report offline: canonicalize ``report`` again
(canonical JSON re-serializes to the same bytes) and verify the detached signature.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.audit_tables import AuditFinding, AuditRun
from models.canonical import canonical_bytes, rfc3339_utc, sha256
from models.errors import NotFound
from models.jws import KeySource, VerifiedSignature, sign_detached, verify_detached
from models.signing import KeyRing

REPORT_TYPE = "plant.audit-report.v1"
CSV_COLUMNS = ("finding_id", "entity_type", "entity_id", "version", "code", "severity", "rule_id", "detail")


def run_resource(run: AuditRun) -> dict[str, Any]:
    return {
        "id": str(run.id), "job_id": str(run.job_id), "status": run.status, "params": run.params,
        "entities_total": run.entities_total, "chunks_total": run.chunks_total, "chunks_done": run.chunks_done,
        "summary": run.summary, "created_at": rfc3339_utc(run.created_at), "finished_at": rfc3339_utc(run.finished_at),
    }


def finding_resource(finding: AuditFinding) -> dict[str, Any]:
    return {
        "finding_id": finding.id, "entity_type": finding.entity_type,
        "entity_id": str(finding.entity_id) if finding.entity_id else None, "version": finding.version,
        "code": finding.code, "severity": finding.severity, "rule_id": finding.rule_id, "detail": finding.detail,
    }


def get_run(session: Session, run_id: uuid.UUID) -> AuditRun:
    run = session.get(AuditRun, run_id)
    if run is None:
        raise NotFound(f"no audit run with id {run_id}", id=str(run_id))
    return run


def all_findings(session: Session, run_id: uuid.UUID) -> list[AuditFinding]:
    return list(session.scalars(select(AuditFinding).where(AuditFinding.run_id == run_id).order_by(AuditFinding.id)))


def build_report(session: Session, *, run_id: uuid.UUID) -> dict[str, Any]:
    run = get_run(session, run_id)
    return {
        "type": REPORT_TYPE,
        "run": run_resource(run),
        "findings": [finding_resource(f) for f in all_findings(session, run_id)],
    }


def signed_report(report: dict[str, Any], keyring: KeyRing) -> bytes:
    """The exported document's bytes (itself canonical JSON)."""
    return canonical_bytes({"report": report, "signature": sign_detached(canonical_bytes(report), keyring.active)})


def verify_report(document: bytes | str, keys: KeySource) -> VerifiedSignature:
    """Check a saved report against public keys only; raises ``JwsError`` when it fails."""
    parsed = json.loads(document)
    return verify_detached(canonical_bytes(parsed["report"]), parsed["signature"], keys)


def findings_csv(session: Session, *, run_id: uuid.UUID) -> str:
    get_run(session, run_id)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for finding in all_findings(session, run_id):
        writer.writerow(finding_resource(finding))
    return out.getvalue()


def report_sha256(report: dict[str, Any]) -> str:
    """Hex SHA-256 of the report's canonical bytes: the JWS payload; stable once the run has finished."""
    return sha256(canonical_bytes(report)).hex()


def report_signature(report: dict[str, Any], keyring: KeyRing) -> str:
    """The detached JWS that :func:`signed_report` puts next to ``report``."""
    return sign_detached(canonical_bytes(report), keyring.active)
