"""A run's audit record as it is read: the run's and each finding's resource, every finding
of a run in id order, the ``[first, last]`` spans that name sets of finding ids, and the
hash a close signs over a run's findings.

What :mod:`models.audit_record` signs and checks, and what a report (:mod:`models.reports`,
:mod:`models.report_pages`) lists, are made of these, so both read the record alike.
"""

from __future__ import annotations

import hashlib
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from models.audit_tables import AuditFinding, AuditRun
from models.canonical import canonical_bytes, rfc3339_utc, sha256


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


def all_findings(session: Session, run_id: uuid.UUID) -> list[Row[Any]]:
    """Every finding of the run in id order, as rows of its columns (read as an
    :class:`AuditFinding`'s attributes are): what a close checks and a report lists, read
    without the ORM's identity map, which took most of the time of loading a run's many."""
    return list(session.execute(select(*AuditFinding.__table__.c).where(AuditFinding.run_id == run_id)
                                .order_by(AuditFinding.id)))


def id_spans(ids: Iterable[int], spans: Iterable[Sequence[int]] = ()) -> list[list[int]]:
    """``ids`` (and the ``[first, last]`` ``spans`` given) as sorted, disjoint inclusive
    ``[first, last]`` spans: the findings of a batch have ids in a row, mostly."""
    merged: list[list[int]] = []
    for first, last in sorted([*([i, i] for i in ids), *([a, b] for a, b in spans)]):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return merged


def in_spans(spans: Sequence[Sequence[int]]) -> Callable[[int], bool]:
    """Whether an id lies in one of ``spans`` (sorted, disjoint: :func:`id_spans`)."""
    firsts = [first for first, _ in spans]

    def contains(i: int) -> bool:
        at = bisect_right(firsts, i) - 1
        return at >= 0 and i <= spans[at][1]
    return contains


def left_out_spans(summary: Any) -> list[list[int]]:
    """The ids (spans) of the findings a run's close left out of its counts (its summary's
    ``findings_left_out``; none in a run closed before migration 0016)."""
    left_out = summary.get("findings_left_out") if isinstance(summary, dict) else None
    return left_out.get("ids", []) if isinstance(left_out, dict) else []


def findings_hashed(findings: Sequence[AuditFinding]) -> dict[str, Any]:
    """What a close signs of a run's findings (all of them, in id order): their count and
    the SHA-256 of their resources' canonical bytes (``CanonicalizationError`` for a value
    canonical JSON cannot hold). :mod:`models.report_pages` makes the same hash page by page,
    and a close finding by finding (:class:`FindingsHashing`)."""
    resources = [finding_resource(f) for f in findings]
    return {"count": len(resources), "sha256": sha256(canonical_bytes(resources)).hex()}


def finding_bytes(finding: Any) -> bytes:
    """The canonical bytes of ``finding``'s resource: the same alone as an item of an array
    (RFC 8785 writes an array as ``[``, its items' bytes joined by ``,``, and ``]``)."""
    return canonical_bytes(finding_resource(finding))


@dataclass
class FindingsHashing:
    """:func:`findings_hashed` made a finding at a time (:meth:`add`, each given its
    :func:`finding_bytes`), so that a close of a run with very many findings holds none of
    them. They must come in id order: one that does not is not added, and ``in_order`` is
    False from then on (the caller hashes them again, read in id order)."""

    count: int = 0
    last_id: int | None = None  # none yet: any id comes first (0 and below too, with the table's CHECK dropped)
    in_order: bool = True
    _hashing: Any = field(default_factory=lambda: hashlib.sha256(b"["))

    def add(self, finding_id: int, item: bytes) -> None:
        if not self.in_order or (self.last_id is not None and finding_id <= self.last_id):
            self.in_order = False
            return
        self._hashing.update(b"," + item if self.count else item)
        self.count, self.last_id = self.count + 1, finding_id

    def hashed(self) -> dict[str, Any]:
        """What :func:`findings_hashed` makes of the findings added."""
        assert self.in_order, "findings hashed out of id order"
        whole = self._hashing.copy()
        whole.update(b"]")
        return {"count": self.count, "sha256": whole.hexdigest()}
