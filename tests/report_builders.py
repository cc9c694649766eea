"""Audit reports built for tests: whole, as a dict or as text, or signed without being recorded.

Plant's exports (:mod:`models.reports`) hold a page of findings at a time and record a
finished run's signature; the tests compare them with, and forge documents from, what is
built here out of the same pieces.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from models.audit_tables import AuditRun
from models.jws import sign_detached
from models.report_reads import ReportRead, read_report, report_members, report_payload
from models.reports import checked_csv, read_signature, signed_document
from models.signing import KeyRing


def build_report(session: Session, *, run_id: uuid.UUID, keyring: KeyRing) -> dict[str, Any]:
    """The run's report, as a dict: :func:`models.report_reads.read_report`, every finding kept
    (the exports and the page keep a page of them at a time)."""
    findings: list[dict[str, Any]] = []
    read = read_report(session, run_id=run_id, keyring=keyring, canonical=False,
                       each_page=lambda page: findings.extend(resource for resource, _ in page))
    return report_members(read.run, findings, read.repairs)


def finished_report_payload(session: Session, run: AuditRun, keyring: KeyRing) -> bytes:
    """:func:`report_payload` of the :func:`build_report` of a finished ``run``, byte for byte,
    made with one page of its findings in memory at a time (:func:`models.report_reads.read_report`)."""
    payload = read_report(session, run_id=run.id, keyring=keyring).payload
    assert payload is not None
    return bytes(payload)


def signed_report(report: dict[str, Any], keyring: KeyRing) -> bytes:
    """The exported document's bytes (itself canonical JSON) for ``report``, signed now and not
    recorded. Plant's own exports go through :func:`models.reports.export_report`, whose
    signature a later seal of the key lists."""
    payload = report_payload(report)
    return signed_document(payload, sign_detached(payload, keyring.active))


def recorded_report_signature(session: Session, report: dict[str, Any], keyring: KeyRing) -> str:
    """:func:`models.reports.read_signature` of a report held as a dict."""
    finished = report["run"].get("finished_at") is not None
    return read_signature(session, ReportRead(report["run"], report.get("repairs", []), finished,
                                              bytearray(report_payload(report))), keyring)


def findings_csv(session: Session, *, run_id: uuid.UUID, keyring: KeyRing) -> str:
    """Every finding of the run, its record checked as for a signed report:
    :func:`models.reports.checked_csv`, written whole."""
    return "".join(checked_csv(session, run_id=run_id, keyring=keyring).parts(session))
