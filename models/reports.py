"""Signed audit reports: the run, its summary and every finding, in RFC 8785 form.

An exported report document is ``{"report": {...}, "signature": "<detached JWS>"}``; the
report holds the run, every finding, and the repairs (``plant entity restore``) of
entities in scope made before the run started whose own signature verified then, each
with its signature: those the run's signed plan and close name, so every export of a run
lists the same ones (:func:`models.report_reads.run_repairs`). Exports read the run's
findings a page at a time (:func:`models.report_reads.read_report`).
The document is itself written in canonical (RFC 8785) form. The JWS payload is the canonical bytes of
``report``, so anyone holding the published JWK Set can check a saved report offline:
canonicalize ``report`` again (canonical JSON re-serializes to the same bytes) and verify
the detached signature. Because the signature covers a re-serialization rather than the
file, verification first insists the file is exactly the canonical document
:func:`export_report` writes: no repeated member names (a forged ``report`` placed before
the real one), no member but ``report`` and ``signature``, and no other spelling of the
same value (``3.0`` for ``3``, whitespace, reordered members).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.audit_findings import finding_resource, in_spans, left_out_spans
from models.audit_record import AuditRecordInvalid
from models.audit_chunks import batches_in_flight_done
from models.audit_tables import AuditFinding, AuditRun
from models.canonical import canonical_bytes, parse_canonical_json
from models.entity_input import nul_refused
from models.errors import JwsError
from models.jws import KeySource, VerifiedSignature, sign_detached, signed_after_its_seal, time_named, verify_detached
from models.repair import verify_repair
from models.report_pages import finding_pages, fingerprint
from models.report_reads import ReportRead, checked_findings, get_run, read_report
from models.signed_exports import signed_once
from models.signing import KeyRing

DOCUMENT_MEMBERS = frozenset({"report", "signature"})
# "counted": "no" for a finding the close left out of every count (no signature of Plant's
# covers it: ``summary.findings_left_out``), "yes" otherwise; while the run is running, "no"
# for one no checkpoint covers so far, empty otherwise.
CSV_COLUMNS = ("finding_id", "entity_type", "entity_id", "version", "code", "severity", "rule_id", "detail", "counted")
# A text cell a spreadsheet would read as a formula (OWASP "CSV Injection"): one starting with a
# tab or a CR, or whose first character past any blanks (what a spreadsheet may trim: spaces,
# line breaks, controls, invisible format characters) is =, +, - or @, or a compatibility form
# of one (full-width "＝", small "﹢"): written with a leading apostrophe. No finding Plant
# writes has such a text cell (codes, rule ids, types and details all start with a letter or
# digit), so only a row written outside Plant, which the export marks counted "no", is
# changed; the JSON export keeps its exact value.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_CHARACTERS = frozenset("=+-@")


def findings_page(session: Session, run: AuditRun, *, after: int | None, code: str | None, limit: int) -> list[AuditFinding]:
    """Up to ``limit`` of the run's findings with ids past ``after``, in id order.

    A running run's chunks write findings in parallel, and an id one batch drew may commit
    after another batch's later one: a page that had passed it would skip it for good. So
    a page of a running run first waits for the batches in flight
    (:func:`models.audit_chunks.batches_in_flight_done`), and those that start later draw
    later ids. Its start and its close write findings in the transaction that makes the
    run visible, or while no batch runs, after every id drawn before. A finished run takes
    no more findings (a trigger refuses them), so its pages wait for nothing.
    """
    if code is not None and "\x00" in code:  # text cannot hold it: the database's refusal would name no field
        raise nul_refused("code")
    if run.finished_at is None:
        batches_in_flight_done(session, run.id)
    statement = select(AuditFinding).where(AuditFinding.run_id == run.id)
    if code:
        statement = statement.where(AuditFinding.code == code)
    if after is not None:
        statement = statement.where(AuditFinding.id > after)
    return list(session.scalars(statement.order_by(AuditFinding.id).limit(limit)))


def export_report(session: Session, *, run_id: uuid.UUID, keyring: KeyRing) -> bytes:
    """The exported document's bytes (itself canonical JSON: :func:`signed_document`) of the
    run's report, made a page of findings at a time (:func:`models.report_reads.read_report`),
    a finished run's signature recorded (the caller commits)."""
    read = read_report(session, run_id=run_id, keyring=keyring)
    assert read.payload is not None
    return signed_document(read.payload, read_signature(session, read, keyring))


def read_signature(session: Session, read: ReportRead, keyring: KeyRing) -> str:
    """The detached JWS over a read report's canonical bytes: a finished run's, the one
    signature recorded for it, so that sealing the key lists it
    (:func:`models.signed_exports.signed_once`); a running run's, made now, not recorded."""
    assert read.payload is not None
    if read.finished:
        return signed_once(session, document=read.payload, keyring=keyring)
    return sign_detached(read.payload, keyring.active)


def signed_document(payload: bytes | bytearray, jws: str) -> bytes:
    """The canonical bytes of ``{"report": report, "signature": jws}``, given the report's
    :func:`models.report_reads.report_payload`: RFC 8785 writes an object's members in the
    order of their names, each as its value's canonical bytes, so the report's are not made a
    second time."""
    return b"".join((b'{"report":', payload, b',"signature":', canonical_bytes(jws), b"}"))  # one copy of payload


@dataclass(frozen=True)
class VerifiedReport:
    """A saved report whose signature checked out, and who signed it."""

    report: dict[str, Any]
    signature: VerifiedSignature


def verify_report(document: bytes | str, keys: KeySource) -> VerifiedSignature:
    """Check a saved report against public keys only; raises ``JwsError`` when it fails."""
    return verify_report_document(document, keys).signature


def verify_report_document(document: bytes | str, keys: KeySource) -> VerifiedReport:
    """:func:`verify_report`, also returning the report that was verified; raises ``JwsError``,
    also for a report its sealed key signed that names a time at or after the seal."""
    report, jws = parse_signed_report(document)
    verified = verify_detached(canonical_bytes(report), jws, keys)
    after = signed_after_its_seal(keys, verified.kid, latest_time_named(report))
    if after is not None:
        raise JwsError(f"the report names a time after its key's seal: {after}", kid=verified.kid)
    return VerifiedReport(report, verified)


def repairs_not_verified(report: dict[str, Any], keys: KeySource) -> tuple[int, list[Any]]:
    """How many repair records a report lists, and the ids of those whose own signature does
    not verify with ``keys`` (:func:`models.repair.verify_repair`; None for an entry that is
    not a record). The report's signature says only that Plant listed them; Plant lists
    only records that verified when the run started, but a report exported before it did so
    may list one written outside Plant."""
    listed = report.get("repairs") if isinstance(report.get("repairs"), list) else []
    return len(listed), [r.get("id") if isinstance(r, dict) else None for r in listed if not verify_repair(r, keys)]


def parse_signed_report(document: bytes | str) -> tuple[dict[str, Any], str]:
    """``(report, detached JWS)`` of an exported document; it must be exactly what :func:`export_report` writes.

    Raises ``JwsError`` for anything else: not strict JSON (a repeated member name at any
    depth), not canonical bytes, or members other than ``report`` (an object) and
    ``signature`` (a string). Does not check the signature.
    """
    try:
        parsed = parse_canonical_json(document)
    except ValueError as exc:  # UnicodeError and JSONDecodeError included
        raise JwsError(f"not a signed report document: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.keys() != DOCUMENT_MEMBERS:
        raise JwsError('a signed report document has exactly the members "report" and "signature"')
    report, jws = parsed["report"], parsed["signature"]
    if not isinstance(report, dict):
        raise JwsError('the "report" member must be a JSON object')
    if not isinstance(jws, str):
        raise JwsError('the "signature" member must be a compact JWS string')
    return report, jws


def latest_time_named(report: dict[str, Any]) -> dt.datetime | None:
    """The latest time a report names (its run's start and end, each repair's): it was
    signed no earlier. A member present but not an RFC 3339 time with an offset is
    :data:`models.jws.UNREADABLE_TIME`, later than any seal (:func:`models.jws.time_named`)."""
    run = report.get("run") if isinstance(report.get("run"), dict) else {}
    repairs = report.get("repairs") if isinstance(report.get("repairs"), list) else []
    named = [run.get("created_at"), run.get("finished_at"), *(r.get("repaired_at") for r in repairs if isinstance(r, dict))]
    return max((t for t in map(time_named, named) if t is not None), default=None)


@dataclass(frozen=True)
class CheckedCsv:
    """A run's CSV export, its record checked (:func:`checked_csv`), to be written by :meth:`parts`."""

    run_id: uuid.UUID
    whole: list[str] | None  # a run read as running: written at once, a part a page
    left_out: list[list[int]] = field(default_factory=list)  # a finished run's: its summary's findings_left_out
    checked: list[bytes] | None = None  # a finished run's pages as the check read them (fingerprints), if it did

    def parts(self, session: Session) -> Iterator[str]:
        """The CSV, a page of findings at a time as the parts are taken, each read by
        ``session`` (any: one that reads after the check's was closed will do). Each page
        must be the one the check read (only with the table's triggers lifted could it
        differ), else :class:`AuditRecordInvalid` comes before its rows do."""
        if self.whole is not None:
            yield from self.whole
            return
        left_out = in_spans(self.left_out)
        yield csv_text((), header=True)
        for rows, page in zip_longest(finding_pages(session, self.run_id), self.checked or ()):
            if self.checked is not None and (rows is None or page is None or fingerprint(rows) != page):
                raise AuditRecordInvalid(f"audit run {self.run_id}: its findings changed while its CSV was written "
                                         "(past the table's triggers)", run_id=str(self.run_id))
            if rows is not None:
                yield csv_text((finding_resource(f), "no" if left_out(f.id) else "yes") for f in rows)


def checked_csv(session: Session, *, run_id: uuid.UUID, keyring: KeyRing) -> CheckedCsv:
    """The run's CSV export, its record checked as for a signed report (:class:`AuditRecordInvalid`
    now, before any of it is written). A finished run's close is checked over one read of its
    findings, page by page, and its rows are written from a second (:meth:`CheckedCsv.parts`).
    A run read as running is written at once, from one read of its findings
    (:func:`models.report_reads.read_report`), a page at a time: its pages are not read
    again, as the findings it takes meanwhile would change them."""
    run = get_run(session, run_id)
    if run.finished_at is None:
        return CheckedCsv(run_id, _whole_csv(session, run_id, keyring))
    read = checked_findings(session, run, keyring)
    # A read stopped at a value canonical JSON cannot hold only where no close is checked (a run closed before 0015)
    return CheckedCsv(run.id, None, left_out_spans(run.summary), None if read.error is not None else read.pages)


def _whole_csv(session: Session, run_id: uuid.UUID, keyring: KeyRing) -> list[str]:
    """A run read as running: its CSV made a page at a time, as a part a page (it holds no
    connection while it is sent); its counted cells are those its report has."""
    parts = [csv_text((), header=True)]
    read_report(session, run_id=run_id, keyring=keyring, canonical=False, each_page=lambda page: parts.append(csv_text(page)))
    return parts


def csv_text(findings: Iterable[tuple[dict[str, Any], str]], *, header: bool = False) -> str:
    """CSV rows of findings' resources, each with its "counted" cell (after the header row, if asked)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    # The writer quotes a cell holding a line terminator; with "\n" it would write a lone CR
    # bare, which readers take for the end of the row: text after it would read as a row of
    # its own (a forged "counted: yes"). A row with a CR is written with every cell quoted.
    quoted = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n", quoting=csv.QUOTE_ALL)
    if header:
        writer.writeheader()
    for resource, counted in findings:
        row = {**{name: spreadsheet_safe(value) for name, value in resource.items()}, "counted": counted}
        (quoted if any(isinstance(v, str) and "\r" in v for v in row.values()) else writer).writerow(row)
    return out.getvalue()


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell as a spreadsheet should read it: text a spreadsheet would read as a formula
    (:func:`reads_as_formula`) gets a leading apostrophe, so it is shown as text, never run;
    numbers (a version below 1 is a negative number, not a formula) and other text are kept."""
    return "'" + value if isinstance(value, str) and reads_as_formula(value) else value


def reads_as_formula(text: str) -> bool:
    """Whether a spreadsheet could read ``text`` as a formula: it starts with a tab or a CR,
    or its first character past the blanks a spreadsheet may trim is a formula character
    (:data:`FORMULA_CHARACTERS`), as itself or in a compatibility form (NFKC). Judged on the
    text's canonical decomposition (NFD), which is the same for every spelling NFC reads as one:
    the signed report holds the text NFC-normalised ("=" then U+0338 is "≠"), and ``plant report
    verify --csv`` must decide as the export did (:func:`models.report_csv.expected_csv`)."""
    if text.startswith(FORMULA_STARTS):
        return True
    for character in unicodedata.normalize("NFD", text):
        if character.isspace() or unicodedata.category(character) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
            continue
        return unicodedata.normalize("NFKC", character) in FORMULA_CHARACTERS
    return False

