"""Skill certificates: issued gap-free, numbered per industry, signed over their own statement.

The certificate names the version that was certified (the state the gates saw, which
is the signed head: ``lock_for_write`` refuses a row that drifted from it) and is signed
over its own canonical statement (:func:`certificate_statement`: a format tag, the skill
id and every certificate field), never over a bare chain link, whose signature every
version already carries; the certified version itself then records the certificate.
Numbers are ``SKILL-{INDUSTRY CODE}-{NNN}`` per industry (``GEN`` without one), allocated
from a counter row updated in the same transaction: concurrent certifications serialize
on that row, and a rolled-back certification gives its number back, so there are no gaps
and no duplicates (the first number after the counter that ``issued_certificates`` does not
hold: :func:`allocate_certificate_number`). Certifying (:mod:`models.certification`) is the only issuer.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, Integer, String, UniqueConstraint, func, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import Text, Uuid

from models.base import Base
from models.canonical import canonical_bytes
from models.entities import NO_INDUSTRY_CODE, Industry, Skill
from models.entity_locks import refuse_if_tampered
from models.errors import CanonicalizationError, NotCertifiable
from models.jws import KeySource, b64url_encode, verify_b64url_signature
from models.registry import WriteContext

CERTIFICATE_FORMAT = "plant.skill-certificate.v1"
# Every member of a certificate but the signature; the statement signs all of them.
SIGNED_FIELDS = ("format", "certificate_id", "issued_at", "kid", "certified_version", "certified_link_hash")


class CertificateSequence(Base):
    """Last certificate number issued per industry code."""

    __tablename__ = "certificate_sequences"

    industry_code: Mapped[str] = mapped_column(String(8), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer)


class IssuedCertificate(Base):
    """Every certificate id Plant issued (migration 0023): append-only, so no id is issued
    twice, whatever the counter and the skills' rows are set to through SQL."""

    __tablename__ = "issued_certificates"
    __table_args__ = (UniqueConstraint("industry_code", "number"),)

    certificate_id: Mapped[str] = mapped_column(Text, primary_key=True)
    industry_code: Mapped[str] = mapped_column(String(8))
    number: Mapped[int] = mapped_column(BigInteger)
    skill_id: Mapped[uuid.UUID] = mapped_column(Uuid)


def issue_certificate(session: Session, skill: Skill, ctx: WriteContext) -> dict[str, Any]:
    code = NO_INDUSTRY_CODE
    if skill.industry_id is not None:
        # The code is signed into the certificate: read it from a row that is its signed head
        # (share-locked, so no write of the industry is halfway), never from one edited outside Plant.
        industry = session.execute(select(Industry).where(Industry.id == skill.industry_id).with_for_update(read=True)
                                   .execution_options(populate_existing=True)).scalar_one_or_none()
        if industry is not None:
            refuse_if_tampered(session, industry, ctx.keyring)
            if industry.deleted_at is not None:  # signed in, its code would vouch for the skill under what is gone
                raise NotCertifiable(
                    f"the skill's industry {industry.id} is deleted: move the skill to another industry, or to none, "
                    "to certify it", field="industry_id", industry_id=str(industry.id), industry_deleted=True)
            code = industry.code or NO_INDUSTRY_CODE
    number = allocate_certificate_number(session, code)
    # The database's clock, read under the lock every certification takes: issue times follow
    # the order certifications ran in, whatever each worker's own clock says (the audit tells
    # which of a near-duplicate pair came later by them).
    issued = session.scalar(select(func.clock_timestamp())).astimezone(dt.UTC)
    assert skill.head_link_hash is not None
    certificate_id = f"SKILL-{code}-{number:03d}"
    session.add(IssuedCertificate(certificate_id=certificate_id, industry_code=code, number=number, skill_id=skill.id))
    session.flush()  # its primary key refuses an id issued before, ahead of any signature
    certificate: dict[str, Any] = {
        "format": CERTIFICATE_FORMAT,
        "certificate_id": certificate_id,
        "issued_at": issued.isoformat().replace("+00:00", "Z"),
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


def verify_certificate(certificate: Any, *, skill_id: uuid.UUID, keyring: KeySource) -> bool:
    """Whether ``certificate`` was issued by Plant for ``skill_id`` exactly as it reads, and
    not by a sealed key after its seal. Anything else, however malformed (not an object, a
    member canonical JSON cannot hold), is False, never an exception. ``keyring`` is Plant's
    key ring or, offline, the published JWK Set (``plant certificate verify``).

    Certificates issued before the format tag existed signed only the certified link;
    they do not verify here (their proof is the certified version in the chain).
    """
    if not isinstance(certificate, dict) or certificate.get("format") != CERTIFICATE_FORMAT:
        return False
    if set(certificate) != {*SIGNED_FIELDS, "signature"}:  # an added member would be unsigned
        return False
    try:
        statement = certificate_statement(skill_id, certificate)
    except CanonicalizationError:  # Plant signs only canonical JSON: such a member was never signed
        return False
    return verify_b64url_signature(keyring, certificate.get("kid"), certificate.get("signature"), statement,
                                   named=certificate.get("issued_at"))


def allocate_certificate_number(session: Session, industry_code: str) -> int:
    """Next number for the code: the first after the code's counter that no certificate Plant
    issued holds (``issued_certificates``); the counter's row lock serializes concurrent
    allocations.

    The counter is a plain row: set back or deleted through SQL, it made Plant sign a second
    ``SKILL-GEN-001``; so could the skills' rows, which held the highest number issued after it.
    The ids issued are kept in an append-only table (migration 0023), read here by its
    ``(industry_code, number)`` index. Only the numbers at or after the counter's are looked
    at, and the first free one is taken, never the one after the highest: a row INSERTed into
    that table (it refuses UPDATE and DELETE, so it stays) with a number far ahead made every
    later certificate of the code skip to it, and one at 2**31 - 1 failed every certification of
    the code for good (the counter is an ``integer``)."""
    return session.execute(_ALLOCATE, {"code": industry_code}).scalar_one()


# The counter row is locked (FOR UPDATE) before the numbers after it are read; with no row (a
# code's first certificate, or the row deleted through SQL) the search starts at 0.
_ALLOCATE = text(
    "WITH counter AS (SELECT coalesce((SELECT last_number FROM certificate_sequences WHERE industry_code = :code "
    "FOR UPDATE), 0) AS n), "
    "free AS (SELECT min(candidate) AS n FROM ("
    "SELECT counter.n + 1 AS candidate FROM counter UNION ALL "
    "SELECT issued.number + 1 FROM issued_certificates AS issued, counter "
    "WHERE issued.industry_code = :code AND issued.number > counter.n) AS candidates "
    "WHERE NOT EXISTS (SELECT FROM issued_certificates AS taken "
    "WHERE taken.industry_code = :code AND taken.number = candidates.candidate)) "
    "INSERT INTO certificate_sequences (industry_code, last_number) SELECT :code, n FROM free "
    "ON CONFLICT (industry_code) DO UPDATE SET last_number = excluded.last_number "
    "RETURNING last_number"
)


def issued_at(certificate: Any) -> dt.datetime | None:
    """A certificate's ``issued_at`` as an aware time; None when it has none that reads as one."""
    issued = certificate.get("issued_at") if isinstance(certificate, dict) else None
    try:
        moment = dt.datetime.fromisoformat(issued) if isinstance(issued, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None  # a naive time orders nothing
