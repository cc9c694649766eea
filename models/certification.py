"""Skill certification: state check, gates, a gap-free signed certificate, one chain version.

A skill in draft, pending_certification or rejected is checked against three gates:
every L0/L1 rule passes, the description has at least eight words, and no certified
skill's embedding is near-identical (cosine >= 0.95). Passing appends a version with
status ``certified`` and a certificate; failing appends one with status ``rejected``.

Certifications run one at a time (a transaction-scoped advisory lock taken before the
gates), so two near-identical skills cannot both pass the duplicate gate. A retried job
whose certification already committed (the skill's head version was written by the same
actor) returns the recorded outcome instead of issuing a second certificate.

Here: the state check, the lock and the retried job's outcome. The gates, and the audit's
second look at them, are :mod:`models.certification_gates`; issuing, numbering and
verifying certificates is :mod:`models.certificates`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.canonical import normalize_text, strict_json_loads
from models.certificates import issue_certificate
from models.certification_gates import certification_gates
from models.chain import history
from models.entities import EntityType, Skill, SkillStatus, governed_content
from models.entity_locks import lock_for_write
from models.errors import AlreadyCertified, NotCertifiable
from models.registry import WriteContext, embed_text_of, record_version

CERTIFIABLE = {SkillStatus.DRAFT.value, SkillStatus.PENDING_CERTIFICATION.value, SkillStatus.REJECTED.value}
# pg_advisory_xact_lock key serializing certifications ("plant-cert" in ASCII).
CERTIFICATION_LOCK = int.from_bytes(b"plant-cert", "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class CertificationOutcome:
    skill_id: uuid.UUID
    status: str
    version: int
    certificate: dict[str, Any] | None = None
    failed_gates: list[dict[str, Any]] = field(default_factory=list)
    blocking_duplicate: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "skill_id": str(self.skill_id),
            "status": self.status,
            "version": self.version,
            "certificate": self.certificate,
            "failed_gates": self.failed_gates,
            "blocking_duplicate": self.blocking_duplicate,
        }


def certify_skill(session: Session, *, skill_id: uuid.UUID, notes: str | None, ctx: WriteContext) -> CertificationOutcome:
    """Certify or reject the skill under its row lock. Flushes; the caller commits."""
    skill = lock_for_write(session, EntityType.SKILL, skill_id, ctx.keyring)  # the gates judge the signed head, nothing else
    assert isinstance(skill, Skill)
    recorded = _recorded_by(session, skill, ctx.actor)
    if recorded is not None:
        return _recorded_outcome(session, skill, recorded, ctx)
    if skill.status == SkillStatus.CERTIFIED.value:
        raise AlreadyCertified(f"skill {skill_id} is already certified", certificate=skill.certificate)
    if skill.status not in CERTIFIABLE:
        raise NotCertifiable(f"skill {skill_id} is {skill.status}", skill_status=skill.status)
    if skill.deleted_at is not None:  # a deleted skill is listed nowhere: a certificate would vouch for what is gone
        raise NotCertifiable(f"skill {skill_id} is deleted", skill_status=skill.status, deleted=True)
    # The embedding is not signed content: the duplicate gate compares one computed now
    # from the signed name and description (fixed by the row lock), not whatever the
    # column holds. Computed before the lock below, which every certification waits on.
    embed_text_of(skill, ctx.embedder)
    # One certification at a time: the duplicate gate reads other skills' status, and two
    # near-identical skills certified side by side would each see the other uncertified.
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CERTIFICATION_LOCK})
    failed, duplicate = certification_gates(session, skill, keyring=ctx.keyring, embedder=ctx.embedder)
    content_before = governed_content(skill)  # a rejection may leave broken what the skill broke: the gates name it
    if notes:
        skill.governance_notes = normalize_text(notes)  # as every governed string is stored and signed: NFC
    if failed:
        skill.status = SkillStatus.REJECTED.value
        record_version(session, skill, ctx, text_changed=False, content_before=content_before)
        return CertificationOutcome(skill.id, skill.status, skill.version, None, failed, duplicate)
    skill.certificate = issue_certificate(session, skill, ctx)
    skill.status = SkillStatus.CERTIFIED.value
    record_version(session, skill, ctx, text_changed=False, content_before=content_before)
    return CertificationOutcome(skill.id, skill.status, skill.version, skill.certificate)

def _recorded_by(session: Session, skill: Skill, actor: str) -> tuple[int, dict[str, Any]] | None:
    """The certification outcome (a version certifying or rejecting the skill) this actor, a
    certification job, already wrote, if any, as (version, content): the head, or an earlier
    version when the skill was retired, or changed by others, since."""
    if skill.version < 2:
        return None
    for row in reversed(history(session, entity_id=skill.id)):
        if row.actor != actor:
            continue
        try:
            content = strict_json_loads(bytes(row.content))
        except ValueError:
            continue
        if isinstance(content, dict) and content.get("status") in (SkillStatus.CERTIFIED.value, SkillStatus.REJECTED.value):
            return row.version, content
    return None


def _recorded_outcome(session: Session, skill: Skill, recorded: tuple[int, dict[str, Any]],
                      ctx: WriteContext) -> CertificationOutcome:
    """The outcome this actor already committed. The gates a rejection failed were not
    recorded: they are derived again from the rejected version's signed content, whether or
    not the skill has moved on from it (it said ``failed_gates: []`` when it had). Should none
    fail now (a certified near-duplicate retired since, a rule changed), the rejection stands
    and says so (:data:`RECORDED_REJECTION`), never a rejection that failed nothing."""
    version, content = recorded
    if content["status"] != SkillStatus.REJECTED.value:
        return CertificationOutcome(skill.id, content["status"], version, content.get("certificate"))
    failed, duplicate = certification_gates(session, skill, keyring=ctx.keyring, embedder=ctx.embedder, content=content)
    return CertificationOutcome(skill.id, content["status"], version, None, failed or [{
        "gate": RECORDED_REJECTION, "detail": f"version {version} rejected the skill; no gate fails on that version's content "
        "now (a certified near-duplicate retired since, or a rule changed): which failed then was not recorded"}], duplicate)


# A retried job's rejection whose gates, derived again, all pass (see _recorded_outcome).
RECORDED_REJECTION = "recorded-rejection"
