"""The hash chain of an audit run's findings that Plant's signed record names, and the check
of a run's findings against it.

A plan names the findings the run's start wrote, and each chunk's checkpoint those its
batches wrote so far: their count, their ids (spans) and a hash chain of their resources,
step by step (:func:`findings_chained`). Closing a run matches the findings in the table with those
(:func:`check_findings`): a finding no verified plan or checkpoint names (INSERTed through
SQL) is left out of every count, and a group whose findings are not as signed is reported.
What the record signs, and how it verifies, is :mod:`models.audit_record`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.audit_findings import finding_resource, id_spans, in_spans
from models.audit_tables import AuditChunk, AuditFinding, AuditRun
from models.canonical import canonical_bytes, sha256


FINDINGS_NONE: dict[str, Any] = {"count": 0, "ids": [], "sha256": sha256(b"").hex()}


def signed_findings_of(signed: Any) -> dict[str, Any] | None:
    """What a plan or checkpoint says Plant had written of the run's findings, if well
    formed: their count, their ids (spans) and a hash chain of them, step by step."""
    findings = signed.get("findings") if isinstance(signed, dict) else None
    if not isinstance(findings, dict) or set(findings) != set(FINDINGS_NONE):
        return None
    count, ids, digest = findings["count"], findings["ids"], findings["sha256"]
    if type(count) is not int or not isinstance(digest, str) or not isinstance(ids, list) or not all(
            isinstance(s, list) and len(s) == 2 and all(type(i) is int for i in s) for s in ids):
        return None
    return findings


def findings_chained(previous: dict[str, Any], findings: Sequence[AuditFinding]) -> dict[str, Any]:
    """``previous`` extended by one step's ``findings``: their ids, and the hash of the
    previous link and of their resources in id order. A step that wrote none leaves it as it was."""
    if not findings:
        return previous
    written = sha256(canonical_bytes([finding_resource(f) for f in sorted(findings, key=lambda f: f.id)]))
    return {"count": previous["count"] + len(findings), "ids": id_spans((f.id for f in findings), previous["ids"]),
            "sha256": sha256(bytes.fromhex(previous["sha256"]) + written).hex()}


@dataclass
class FindingsCheck:
    """What :func:`check_findings` found: chunks whose findings are not those their
    checkpoint was signed with, and every finding no signature of Plant's covers."""

    chunks: dict[int, str] = field(default_factory=dict)
    left_out: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_findings(run: AuditRun, findings: Sequence[AuditFinding], chunks: Sequence[AuditChunk], *,
                   plan_verifies: bool) -> FindingsCheck:
    """Match a run's ``findings`` with those Plant signed it had written: the ids and hash
    of its start's with the plan (if ``plan_verifies``), each chunk's, step by step, with its
    checkpoint (``chunks``: those whose checkpoint verifies). A finding no signature names
    is ``left_out`` of the counts, alone. Findings named but not as signed (only with the
    table's triggers lifted: they refuse UPDATE and DELETE) leave their whole group out, and
    such a chunk is reported in ``chunks``, to be counted as nothing audited."""
    check = FindingsCheck()
    groups: dict[int | None, list[AuditFinding]] = defaultdict(list)
    for f in findings:
        groups[f.chunk_id].append(f)
    signers: list[tuple[int | None, Any]] = [(None, run.plan_signed if plan_verifies else None),
                                             *((c.id, c.checkpoint_signed) for c in chunks)]
    covered: set[int] = set()
    for group, signed in signers:
        named = signed_findings_of(signed)
        if named is None:
            continue
        in_named = in_spans(named["ids"])
        ours = [f for f in groups.get(group, ()) if in_named(f.id)]
        if group is None:  # the run's start wrote them in one go
            chained = findings_chained(FINDINGS_NONE, ours)
        else:
            by_step: dict[int, list[AuditFinding]] = defaultdict(list)
            for f in ours:
                by_step[f.step or 0].append(f)  # 0: no step Plant signs
            chained = FINDINGS_NONE
            for step in sorted(by_step):
                chained = findings_chained(chained, by_step[step])
        if chained == named:
            covered.update(f.id for f in ours)
            continue
        if group is None:
            check.problems.append(f"audit run {run.id}: the findings of its start are not those Plant signed with its plan")
        else:
            check.chunks[group] = (f"chunk {next(c.chunk_no for c in chunks if c.id == group)} of audit run {run.id}: "
                                   "its findings are not those Plant signed with its checkpoint")
    check.left_out = [f.id for f in findings if f.id not in covered]
    if check.left_out:
        shown = ", ".join(str(i) for i in check.left_out[:20])
        check.problems.append(f"audit run {run.id}: {len(check.left_out)} findings are not covered by a plan or "
                              f"checkpoint Plant signed (ids {shown}{', …' if len(check.left_out) > 20 else ''}); "
                              "they are left out of the counts")
    return check
