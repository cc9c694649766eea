"""Skill certification: state check, gates, a gap-free signed certificate, one chain version.

A skill in draft, pending_certification or rejected is checked against three gates:
every L0/L1 rule passes, the description has at least eight words, and no certified
skill's embedding is near-identical (cosine >= 0.95). Passing appends a version with
status ``certified`` and a certificate; failing appends one with status ``rejected``.

The certificate names the version that was certified (the state the gates saw, which
is the signed head: ``lock_for_write`` refuses a row that drifted from it) and is signed
over its own canonical statement (:func:`certificate_statement`: a format tag, the skill
id and every certificate field), never over a bare chain link, whose signature every
version already carries; the certified version itself then records the certificate.
Certifications run one at a time (a transaction-scoped advisory lock taken before the
gates), so two near-identical skills cannot both pass the duplicate gate. Numbers are
``SKILL-{INDUSTRY CODE}-{NNN}`` per industry (``GEN`` without one), allocated from a
counter row updated in the same transaction: concurrent certifications serialize on
that row, and a rolled-back certification gives its number back, so there are no gaps
and no duplicates. A retried job whose certification already committed (the skill's
head version was written by the same actor) returns the recorded outcome instead of
issuing a second certificate.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, String, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.canonical import canonical_bytes, normalize_text
from models.chain import history
from models.constitution import L0, L1, evaluate
from models.entities import EntityType, Industry, Skill, SkillStatus
from models.errors import AlreadyCertified, NotCertifiable
from models.jws import b64url_encode, verify_b64url_signature
from models.registry import WriteContext, embedding_text, lock_for_write, record_version, rule_subject
from models.signing import KeyRing

MIN_DESCRIPTION_WORDS = 8
DUPLICATE_SIMILARITY = 0.95
CERTIFIABLE = {SkillStatus.DRAFT.value, SkillStatus.PENDING_CERTIFICATION.value, SkillStatus.REJECTED.value}
NO_INDUSTRY_CODE = "GEN"
CERTIFICATE_FORMAT = "plant.skill-certificate.v1"
# Every member of a certificate but the signature; the statement signs all of them.
SIGNED_FIELDS = ("format", "certificate_id", "issued_at", "kid", "certified_version", "certified_link_hash")
# pg_advisory_xact_lock key serializing certifications ("plant-cert" in ASCII).
CERTIFICATION_LOCK = int.from_bytes(b"plant-cert", "big") & 0x7FFF_FFFF_FFFF_FFFF


class CertificateSequence(Base):
    """Last certificate number issued per industry code."""

    __tablename__ = "certificate_sequences"

    industry_code: Mapped[str] = mapped_column(String(8), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer)


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
    if _already_recorded_by(session, skill, ctx.actor):
        return _recorded_outcome(session, skill)
    if skill.status == SkillStatus.CERTIFIED.value:
        raise AlreadyCertified(f"skill {skill_id} is already certified", certificate=skill.certificate)
    if skill.status not in CERTIFIABLE:
        raise NotCertifiable(f"skill {skill_id} is {skill.status}", skill_status=skill.status)
    # The embedding is not signed content: the duplicate gate compares one computed now
    # from the signed name and description (fixed by the row lock), not whatever the
    # column holds. Computed before the lock below, which every certification waits on.
    skill.embedding = ctx.embedder.embed([embedding_text(skill)])[0]
    # One certification at a time: the duplicate gate reads other skills' status, and two
    # near-identical skills certified side by side would each see the other uncertified.
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CERTIFICATION_LOCK})
    failed, duplicate = certification_gates(session, skill)
    if notes:
        skill.governance_notes = normalize_text(notes)  # as every governed string is stored and signed: NFC
    if failed:
        skill.status = SkillStatus.REJECTED.value
        record_version(session, skill, ctx, text_changed=False)
        return CertificationOutcome(skill.id, skill.status, skill.version, None, failed, duplicate)
    skill.certificate = issue_certificate(session, skill, ctx)
    skill.status = SkillStatus.CERTIFIED.value
    record_version(session, skill, ctx, text_changed=False)
    return CertificationOutcome(skill.id, skill.status, skill.version, skill.certificate)


def certification_gates(session: Session, skill: Skill) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every failed gate (not just the first), and the blocking duplicate if any."""
    failed: list[dict[str, Any]] = []
    subject = rule_subject(session, skill)
    broken = [*evaluate(subject, L0).violations, *evaluate(subject, L1).violations]
    if broken:
        failed.append({"gate": "constitution", "detail": "rules not satisfied", "rules": broken})
    words = len((skill.description or "").split())
    if words < MIN_DESCRIPTION_WORDS:
        failed.append({"gate": "description-length", "detail": f"{words} words; at least {MIN_DESCRIPTION_WORDS} required"})
    duplicate = nearest_certified_duplicate(session, skill)
    if duplicate is not None:
        failed.append({"gate": "near-duplicate", "detail": f"too similar to certified skill {duplicate['name']}", "duplicate": duplicate})
    return failed, duplicate


def nearest_certified_duplicate(session: Session, skill: Skill) -> dict[str, Any] | None:
    """The certified skill nearest to ``skill``, when it is a near-duplicate; exact, never
    approximate. Ordered by distance over the table itself, the planner may serve the
    ``LIMIT 1`` from the HNSW index, which finds its ``ef_search`` (40) nearest skills of
    any status and only then keeps the certified ones: forty drafts nearer than a certified
    duplicate hid it, and the copy was certified. A materialized CTE is read whole, so every
    certified skill is compared (a sort over the certified ones alone)."""
    if skill.embedding is None:
        return None
    certified = (
        select(Skill.id, Skill.name, Skill.embedding)
        .where(Skill.status == SkillStatus.CERTIFIED.value, Skill.id != skill.id, Skill.embedding.is_not(None))
        .cte("certified").prefix_with("MATERIALIZED")
    )
    distance = certified.c.embedding.cosine_distance(skill.embedding)
    row = session.execute(select(certified.c.id, certified.c.name, distance).order_by(distance).limit(1)).first()
    if row is None or 1.0 - float(row[2]) < DUPLICATE_SIMILARITY:
        return None
    return {"id": str(row[0]), "name": row[1], "similarity": round(1.0 - float(row[2]), 6)}


def issue_certificate(session: Session, skill: Skill, ctx: WriteContext) -> dict[str, Any]:
    code = NO_INDUSTRY_CODE
    if skill.industry_id is not None:
        code = session.scalar(select(Industry.code).where(Industry.id == skill.industry_id)) or NO_INDUSTRY_CODE
    number = allocate_certificate_number(session, code)
    assert skill.head_link_hash is not None
    certificate: dict[str, Any] = {
        "format": CERTIFICATE_FORMAT,
        "certificate_id": f"SKILL-{code}-{number:03d}",
        "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "kid": ctx.keyring.active.kid,
        "certified_version": skill.version,
        "certified_link_hash": bytes(skill.head_link_hash).hex(),
    }
    _, signature = ctx.keyring.sign(certificate_statement(skill.id, certificate))  # by the active key, named above
    return {**certificate, "signature": b64url_encode(signature)}


def certificate_statement(skill_id: uuid.UUID, certificate: dict[str, Any]) -> bytes:
    """The bytes a certificate's signature covers: RFC 8785 JSON of the skill id and every
    signed field. Canonical JSON can never be a 32-byte chain link, so no version's
    signature doubles as a certificate."""
    return canonical_bytes({"skill_id": str(skill_id), **{name: certificate.get(name) for name in SIGNED_FIELDS}})


def verify_certificate(certificate: dict[str, Any], *, skill_id: uuid.UUID, keyring: KeyRing) -> bool:
    """Whether ``certificate`` was issued by Plant for ``skill_id`` exactly as it reads, and
    not by a sealed key after its seal.

    Certificates issued before the format tag existed signed only the certified link;
    they do not verify here (their proof is the certified version in the chain).
    """
    if certificate.get("format") != CERTIFICATE_FORMAT:
        return False
    if set(certificate) != {*SIGNED_FIELDS, "signature"}:  # an added member would be unsigned
        return False
    return verify_b64url_signature(keyring, certificate.get("kid"), certificate.get("signature"),
                                   certificate_statement(skill_id, certificate), named=certificate.get("issued_at"))


def allocate_certificate_number(session: Session, industry_code: str) -> int:
    """Next number for the code; the row lock serializes concurrent allocations."""
    return session.execute(
        text(
            "INSERT INTO certificate_sequences (industry_code, last_number) VALUES (:code, 1) "
            "ON CONFLICT (industry_code) DO UPDATE SET last_number = certificate_sequences.last_number + 1 "
            "RETURNING last_number"
        ),
        {"code": industry_code},
    ).scalar_one()


def _already_recorded_by(session: Session, skill: Skill, actor: str) -> bool:
    if skill.status not in (SkillStatus.CERTIFIED.value, SkillStatus.REJECTED.value) or skill.version < 2:
        return False
    head = history(session, entity_id=skill.id)[-1]
    return head.actor == actor


def _recorded_outcome(session: Session, skill: Skill) -> CertificationOutcome:
    """The outcome this actor already committed; gates are re-derived for a rejection."""
    if skill.status == SkillStatus.CERTIFIED.value:
        return CertificationOutcome(skill.id, skill.status, skill.version, skill.certificate)
    failed, duplicate = certification_gates(session, skill)
    return CertificationOutcome(skill.id, skill.status, skill.version, None, failed, duplicate)


