"""Re-review of the exports read in autocommit, findings read as rows, and a report document
put around its report's canonical bytes (``models/reports.py::_document``).

An exported document must be exactly the canonical bytes of ``{"report", "signature"}``, or
no verifier takes it. What a report holds is partly chosen by whoever edits a row through
SQL: a restore records what the row held (``row_before``), and every later run covering the
entity lists that record in its report.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from models.canonical import MAX_NESTING_DEPTH, canonical_bytes
from models.errors import CanonicalizationError
from models.reports import signed_report, verify_report
from models.signing import KeyRing, generate_ed25519

REPORT_TYPE = "plant.audit-report.v1"


def _nested(levels: int) -> Any:
    """A value of ``levels`` arrays, one inside another."""
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def _report(repairs: Any) -> dict[str, Any]:
    return {"type": REPORT_TYPE, "findings": [], "repairs": repairs,
            "run": {"id": "r", "created_at": "2026-05-01T00:00:00Z"}}


@pytest.mark.parametrize("levels", [MAX_NESTING_DEPTH - 3, MAX_NESTING_DEPTH - 2, MAX_NESTING_DEPTH - 1])
def test_a_signed_report_is_the_canonical_document_or_refused_as_canonicalizing_it_is(levels) -> None:
    """``_document`` writes the report's own canonical bytes inside the document's, one level
    deeper: a report nested 64 deep canonicalized alone, and its document (65 deep) was handed
    out signed, though no verifier (nor Plant's ``parse_canonical_json``) reads it."""
    ring = KeyRing(generate_ed25519())
    report = _report(_nested(levels))  # the report object itself is one more level, its "repairs" another
    try:
        canonical_bytes({"report": report, "signature": "s"})
    except CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            signed_report(report, ring)
        return
    document = signed_report(report, ring)
    assert document == canonical_bytes({"report": report, "signature": json.loads(document)["signature"]})
    assert verify_report(document, ring).kid == ring.active.kid
