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

import hashlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.audit_findings import FindingsHashing, finding_bytes, finding_resource, id_spans, in_spans
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
    checkpoint was signed with, and every finding no signature of Plant's covers; and, of
    every finding read, what the close signs (:class:`models.audit_findings.FindingsHashing`)."""

    chunks: dict[int, str] = field(default_factory=dict)
    left_out: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    hashing: FindingsHashing = field(default_factory=FindingsHashing)


@dataclass
class _StepRead:
    """One step's findings (those its signer names), as :func:`findings_chained` takes them,
    read in id order: their count, ids (spans) and the hash of their resources' array."""

    count: int = 0
    ids: list[list[int]] = field(default_factory=list)
    hashing: Any = field(default_factory=lambda: hashlib.sha256(b"["))

    def add(self, finding_id: int, item: bytes) -> None:
        self.hashing.update(b"," + item if self.count else item)
        self.count += 1
        if self.ids and self.ids[-1][1] + 1 == finding_id:
            self.ids[-1][1] = finding_id
        else:
            self.ids.append([finding_id, finding_id])

    def chained(self, previous: dict[str, Any]) -> dict[str, Any]:
        """:func:`findings_chained` of ``previous`` and this step's findings."""
        written = self.hashing.copy()
        written.update(b"]")
        return {"count": previous["count"] + self.count, "ids": id_spans((), [*previous["ids"], *self.ids]),
                "sha256": sha256(bytes.fromhex(previous["sha256"]) + written.digest()).hex()}


def findings_chained_in_pages(previous: dict[str, Any], pages: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """:func:`findings_chained` of ``previous`` and one step's findings, read in ``pages`` in
    id order (rows read by attribute, as :func:`models.audit_findings.all_findings`'), each
    let go with its page: a run's start that wrote very many signs them in bounded memory.
    A step that wrote none leaves ``previous`` as it was."""
    step = _StepRead()
    for rows in pages:
        for f in rows:
            if step.ids and f.id <= step.ids[-1][1]:
                raise ValueError("findings chained out of id order")
            step.add(f.id, finding_bytes(f))
    return step.chained(previous) if step.count else previous


@dataclass
class _GroupRead:
    """The findings of one signer (the plan, or a chunk's checkpoint) that it names, by step."""

    named: dict[str, Any]
    contains: Callable[[int], bool]
    steps: dict[int, _StepRead] = field(default_factory=dict)

    def chained(self) -> dict[str, Any]:
        chained = FINDINGS_NONE
        for step in sorted(self.steps):
            chained = self.steps[step].chained(chained)
        return chained

    def ids(self) -> Iterator[int]:
        for step in self.steps.values():
            for first, last in step.ids:
                yield from range(first, last + 1)


def check_findings(run: AuditRun, pages: Iterable[Sequence[Any]], chunks: Sequence[AuditChunk], *,
                   plan_verifies: bool) -> FindingsCheck:
    """Match a run's findings, read in ``pages`` in id order (every one it has), with those
    Plant signed it had written: the ids and hash of its start's with the plan (if
    ``plan_verifies``), each chunk's, step by step, with its checkpoint (``chunks``: those
    whose checkpoint verifies). A finding no signature names is ``left_out`` of the counts,
    alone. Findings named but not as signed (only with the table's triggers lifted: they
    refuse UPDATE and DELETE) leave their whole group out, and such a chunk is reported in
    ``chunks``, to be counted as nothing audited.

    Each finding is read once and let go with its page: what is kept is a hash and id spans
    per step, the ids left out, and the hash the close signs over every finding read
    (``hashing``). A run where every entity has a finding closes in bounded memory."""
    check = FindingsCheck()
    groups: dict[int | None, _GroupRead] = {}
    for group, signed in [(None, run.plan_signed if plan_verifies else None), *((c.id, c.checkpoint_signed) for c in chunks)]:
        named = signed_findings_of(signed)
        if named is not None:
            groups[group] = _GroupRead(named, in_spans(named["ids"]))
    left_out = array("q")
    for rows in pages:
        for f in rows:
            item = finding_bytes(f)
            check.hashing.add(f.id, item)
            group = groups.get(f.chunk_id)
            if group is None or not group.contains(f.id):
                left_out.append(f.id)
                continue
            step = 0 if f.chunk_id is None else f.step or 0  # the run's start wrote its own in one go; 0: no step Plant signs
            group.steps.setdefault(step, _StepRead()).add(f.id, item)
    for key, group in groups.items():
        if group.chained() == group.named:
            continue
        left_out.extend(group.ids())
        if key is None:
            check.problems.append(f"audit run {run.id}: the findings of its start are not those Plant signed with its plan")
        else:
            check.chunks[key] = (f"chunk {next(c.chunk_no for c in chunks if c.id == key)} of audit run {run.id}: "
                                 "its findings are not those Plant signed with its checkpoint")
    check.left_out = sorted(left_out)
    if check.left_out:
        shown = ", ".join(str(i) for i in check.left_out[:20])
        check.problems.append(f"audit run {run.id}: {len(check.left_out)} findings are not covered by a plan or "
                              f"checkpoint Plant signed (ids {shown}{', …' if len(check.left_out) > 20 else ''}); "
                              "they are left out of the counts")
    return check
