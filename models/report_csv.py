"""Checking a saved CSV export of an audit run against the signed report of that run.

The CSV export (``format=csv``) carries no signature of its own: what vouches for it is the
signed JSON report of the same run. Both are written from the same rows, so the CSV Plant
would write for a report's findings can be made again from the report alone
(:func:`expected_csv`): the findings in the report's order, each with its ``counted`` cell
taken from what the report says was left out of the run's counts (its summary's
``findings_left_out`` once finished; while running, the run's own, and empty for the rest).
A CSV that is not exactly that text (a row removed, added, reordered or edited, a ``counted``
cell changed, another run's rows) is not the report's. Strings are compared NFC-normalised,
as the report holds them (:mod:`models.canonical`); nothing else is forgiven, a byte-order
mark or CRLF line ends included. Pure: the report must have been verified by the caller.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from typing import Any

from models.audit_findings import in_spans, left_out_spans
from models.reports import CSV_COLUMNS, csv_text


def expected_csv(report: dict[str, Any]) -> str:
    """The CSV Plant writes for ``report``'s findings; ``ValueError`` if the report holds
    findings or left-out spans no export of Plant's has (then no CSV can be its)."""
    run = report.get("run") if isinstance(report.get("run"), dict) else {}
    findings = report.get("findings")
    if not isinstance(findings, list) or not all(isinstance(f, dict) and set(f) == set(CSV_COLUMNS) - {"counted"}
                                                  for f in findings):
        raise ValueError("its findings are not the rows a CSV export holds")
    finished = run.get("finished_at") is not None
    spans = left_out_spans(run.get("summary") if finished else run)
    if not isinstance(spans, list) or not all(
            isinstance(s, list) and len(s) == 2 and all(type(i) is int for i in s) for s in spans):  # noqa: E721
        raise ValueError("its findings_left_out are not id spans")
    left_out, kept = in_spans(sorted(spans)), "yes" if finished else ""
    if not all(type(f["finding_id"]) is int for f in findings):  # noqa: E721
        raise ValueError("its findings' ids are not integers")
    return csv_text(((f, "no" if left_out(f["finding_id"]) else kept) for f in findings), header=True)


def csv_problem(content: bytes, report: dict[str, Any]) -> str | None:
    """Why ``content`` is not the CSV export of the (verified) ``report``, or None when it is."""
    try:
        expected = expected_csv(report)
    except ValueError as exc:
        return f"the report cannot be compared with a CSV: {exc}"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return "the CSV is not UTF-8"
    if unicodedata.normalize("NFC", text) == expected:
        return None
    return _first_difference(unicodedata.normalize("NFC", text), expected)


def _first_difference(text: str, expected: str) -> str:
    """Where ``text`` first departs from the ``expected`` CSV, in rows a person can find."""
    if text.startswith("\ufeff"):
        return "the CSV starts with a byte-order mark, which Plant's export never writes"
    rows, wanted = _rows(text), _rows(expected)
    for number, (row, want) in enumerate(zip(rows, wanted, strict=False), start=1):
        if row != want:
            what = "its header" if number == 1 else f"row {number - 1} (finding {want[0]} in the report)"
            shown = repr(row)  # a cell may be long: the line names the row, not all of it
            return f"{what} is not the report's: the CSV has {shown if len(shown) <= 300 else shown[:300] + '…'}"
    if len(rows) != len(wanted):
        return (f"the CSV holds {len(rows) - 1} finding row(s), the report {len(wanted) - 1}: rows were removed or added"
                if rows and wanted else "the CSV is empty")
    return "the CSV holds the report's rows, but not written as Plant writes them (quoting, line ends, spacing)"


def _rows(text: str) -> list[list[str]]:
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        return [[text]]
