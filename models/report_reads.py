"""One read of an audit run's report, a page of findings at a time: what the JSON export, a
running run's CSV and the report page are made of.

:func:`read_report` checks the run's record as a signed report needs it (a finished run's
close, a running run's plan: :class:`models.audit_record.AuditRecordInvalid` otherwise),
hands each page of findings, with each finding's ``counted`` cell, to the caller, and
returns the run as the report states it, the repairs it lists and, if asked, the report's
canonical bytes (:func:`report_payload`, the JWS payload). The pages of a finished run are
read by id, statement after statement (it is frozen); a running run's are read by one
statement, held on the server (:func:`models.report_pages.running_finding_pages`), before its
checkpoints are read. Either way the process holds one page of findings, the report's bytes
where asked, and what the caller keeps of each page; never the whole report as objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from models.audit_findings import in_spans, left_out_spans, run_resource
from models.audit_record import (
    AuditRecordInvalid, CheckpointsSoFar, checkpoints_so_far, close_problem, open_run_problem, signed_repairs,
)
from models.audit_runs import scope_repairs
from models.audit_tables import AuditRun
from models.canonical import canonical_bytes
from models.errors import NotFound
from models.repair import as_listed, record_sha256, repairs_by_id
from models.report_pages import FindingsArray, PagedFindings, read_findings, running_finding_pages
from models.signing import KeyRing

REPORT_TYPE = "plant.audit-report.v1"
# RFC 8785 writes the report's members in the order of their names: "findings" first.
PAYLOAD_HEAD = b'{"findings":'
# Each finding of a page, as its resource and its "counted" cell: "no" for one the close left
# out of every count (while the run runs, one no checkpoint covers so far), else "yes" ("" while it runs).
FindingPage = list[tuple[dict[str, Any], str]]
PageSink = Callable[[FindingPage], None]


@dataclass(frozen=True)
class ReportRead:
    """A run's report as :func:`read_report` read it, but for its findings (handed out page by page)."""

    run: dict[str, Any]  # the run as the report states it: a running run's as running, with its progress so far
    repairs: list[dict[str, Any]]
    finished: bool  # its status and summary are final
    payload: bytearray | None  # the report's canonical bytes (report_payload), when asked


def get_run(session: Session, run_id: uuid.UUID) -> AuditRun:
    run = session.get(AuditRun, run_id)
    if run is None:
        raise NotFound(f"no audit run with id {run_id}", id=str(run_id))
    return run


def report_members(run: dict[str, Any], findings: list[dict[str, Any]], repairs: list[dict[str, Any]]) -> dict[str, Any]:
    """A report: the run, its findings and the repairs it lists."""
    return {"type": REPORT_TYPE, "run": run, "findings": findings, "repairs": repairs}


def report_payload(report: dict[str, Any]) -> bytes:
    """The report's canonical bytes, the JWS payload, as they stand inside its document: a
    report that fits :data:`models.canonical.MAX_NESTING_DEPTH` alone but not one level down
    is refused (``CanonicalizationError``), as canonicalizing its whole document is; handed
    out, no verifier (:func:`models.reports.verify_report_document`) would read it."""
    return canonical_bytes(report, enclosed=1)


def read_report(session: Session, *, run_id: uuid.UUID, keyring: KeyRing, each_page: PageSink | None = None,
                canonical: bool = True) -> ReportRead:
    """Read the run's report, its record checked, handing each page of its findings, in id
    order, to ``each_page``; with ``canonical``, keep the report's canonical bytes (otherwise
    none are kept: a finished run's close is checked over the hash of its findings' bytes,
    made a page at a time, and a running run's are not made at all).

    A finished run's close must be the one Plant signed over its findings (and a run closed
    before migration 0015 must hold nothing canonical JSON refuses), else
    :class:`AuditRecordInvalid` (``CanonicalizationError``) after the pages were handed out:
    the caller keeps nothing of a read that raised. A run not finished must have the plan
    Plant signed (checked before any page), and is reported as running, with no summary,
    whatever its row says (only Plant's signed close makes a status and a summary final),
    its progress so far counted from its checkpoints that verify, and ``findings_left_out``
    (count and id spans) naming the findings none of them (nor its plan) names: written
    outside Plant, the close will leave them out. A run closed while it was read as running
    is read again, as closed. Writes nothing."""
    run = get_run(session, run_id)
    while run.finished_at is None:
        read = _read_running(session, run, keyring, each_page, canonical)
        if read is not None:
            return read
        run = get_run(session, run_id)  # closed meanwhile (and expired): read as closed
    return _read_finished(session, run, keyring, each_page, canonical)


def _read_finished(session: Session, run: AuditRun, keyring: KeyRing, each_page: PageSink | None,
                   canonical: bool) -> ReportRead:
    payload = bytearray(PAYLOAD_HEAD) if canonical else None
    left_out = in_spans(left_out_spans(run.summary))
    sink = None if each_page is None else (
        lambda resources: each_page([(r, "no" if left_out(r["finding_id"]) else "yes") for r in resources]))
    findings = checked_findings(session, run, keyring, into=payload, each_page=sink)
    resource, repairs = run_resource(run), run_repairs(session, run, keyring)
    if findings.error is not None:  # a run closed before 0015 has no close to refuse it
        raise findings.error
    if payload is None:
        return ReportRead(resource, repairs, True, None)
    return ReportRead(resource, repairs, True, _completed(payload, report_payload(report_members(resource, [], repairs))))


def checked_findings(session: Session, run: AuditRun, keyring: KeyRing, *, into: bytearray | None = None,
                     each_page: Callable[[list[dict[str, Any]]], None] | None = None) -> PagedFindings:
    """:func:`models.report_pages.read_findings` of a finished ``run``, its close checked over
    the findings read: :class:`AuditRecordInvalid` if it is not the one Plant signed over them.
    A read stopped at a value canonical JSON cannot hold (``error``) is returned as it is
    where no close is checked (a run closed before 0015): the caller decides."""
    findings = read_findings(session, run.id, into=into, each_page=each_page)
    problem = close_problem(session, run, keyring, hashed=findings.hashed)
    if problem is not None:
        raise AuditRecordInvalid(problem, run_id=str(run.id))
    return findings


def _read_running(session: Session, run: AuditRun, keyring: KeyRing, each_page: PageSink | None,
                  canonical: bool) -> ReportRead | None:
    """:func:`read_report` of a run read as running, or None if it was closed meanwhile."""
    listed = _Listed(FindingsArray(bytearray(PAYLOAD_HEAD) if canonical else None))
    with running_finding_pages(session, run.id) as pages:  # the findings as of now: one statement, run here
        problem = open_run_problem(session, run, keyring)
        if problem is not None:
            raise AuditRecordInvalid(problem, run_id=str(run.id))
        if _closed_meanwhile(session, run):
            return None
        so_far = checkpoints_so_far(session, run, keyring)  # read after the findings, as it must be
        for rows in pages:
            listed.add(rows, so_far, each_page)
    resource = run_resource(run)
    resource.update(status="running", summary=None, chunks_done=so_far.chunks_done,
                    entities_audited=so_far.entities_audited)
    if listed.left_out:
        resource["findings_left_out"] = {"count": listed.left_out_count, "ids": listed.left_out}
    repairs = run_repairs(session, run, keyring)
    if listed.array.into is None:
        return ReportRead(resource, repairs, False, None)
    listed.array.close()
    return ReportRead(resource, repairs, False, _completed(listed.array.into, report_payload(
        report_members(resource, [], repairs))))


@dataclass
class _Listed:
    """What a running run's read keeps of its pages: the findings array (its bytes, if kept)
    and the ids no checkpoint names, as sorted ``[first, last]`` spans (ids come in order)."""

    array: FindingsArray
    left_out_count: int = 0
    left_out: list[list[int]] = field(default_factory=list)

    def add(self, rows: list[Any], so_far: CheckpointsSoFar, each_page: PageSink | None) -> None:
        resources = self.array.add(rows)  # a value canonical JSON cannot hold raises here, as the page is read
        page = [(resource, "" if so_far.names(row) else "no") for resource, row in zip(resources, rows, strict=True)]
        for resource, counted in page:
            if counted == "no":
                self._leave_out(resource["finding_id"])
        if each_page is not None:
            each_page(page)

    def _leave_out(self, finding_id: int) -> None:
        self.left_out_count += 1
        if self.left_out and self.left_out[-1][1] + 1 == finding_id:
            self.left_out[-1][1] = finding_id
        else:
            self.left_out.append([finding_id, finding_id])


def _completed(payload: bytearray, rest: bytes) -> bytearray:
    """``payload`` (the report's canonical bytes up to the end of its findings array) with the
    rest of the report's, from ``rest``: the canonical bytes of the same report with no findings."""
    if not rest.startswith(PAYLOAD_HEAD + b"[]"):  # pragma: no cover - a member named before "findings"
        raise RuntimeError("the report's findings are no longer its first member")
    payload += memoryview(rest)[len(PAYLOAD_HEAD) + 2:]
    return payload


def _closed_meanwhile(session: Session, run: AuditRun) -> bool:
    """Whether a run read as running (its record checked as such) was closed since: the
    findings read after the check then hold the close's own, which no checkpoint names.
    The caller starts again, to check and report the run as closed."""
    session.refresh(run, ["finished_at"])  # only: the rest stays as it was checked
    if run.finished_at is None:
        return False
    session.expire(run)  # read again, whole, by the check that starts again
    return True


def run_repairs(session: Session, run: AuditRun, keyring: KeyRing) -> list[dict[str, Any]]:
    """The restores (``plant entity restore``) the report of ``run`` (its record checked:
    :func:`read_report`) lists, each exported with its own signature: it says what a row held
    when it was set back to its signed head. They are those its close names (its plan while
    it runs): of entities in its scope, made before it started, whose signature verified
    then. Each is read back and must hash as named; one changed since (past the table's
    append-only guard) is :class:`AuditRecordInvalid`. A run whose record names none
    (started before plans named repairs) lists the records of its scope made before it
    started whose signature verifies: a record written outside Plant, whatever time it
    names, is left out, and one Plant wrote later names a later time. A record canonical
    JSON cannot hold inside the report's document is listed marked (:func:`as_listed`)."""
    named = signed_repairs(run.close_signed if run.finished_at is not None else run.plan_signed)
    if named is None:
        return [as_listed(record) for record in scope_repairs(session, run, keyring)]
    held = repairs_by_id(session, [uuid.UUID(entry["id"]) for entry in named])
    listed = []
    for entry in named:
        row = held.get(uuid.UUID(entry["id"]))
        record = row.as_json() if row is not None else None
        if record is None or record_sha256(record) != entry["sha256"]:
            raise AuditRecordInvalid(f"audit run {run.id}: repair record {entry['id']} is not the one Plant listed when "
                                     "the run started (changed or removed past its append-only guard)", run_id=str(run.id))
        listed.append(as_listed(record))
    return listed
