"""The full audit's cross-check of ``issued_certificates`` with the certificates the chains signed.

``issued_certificates`` (migration 0023) keeps every certificate id Plant issued, so that no
id is issued twice; it refuses UPDATE, DELETE and TRUNCATE, but takes an INSERT like any
table. A row INSERTed through SQL, naming an id no chain ever signed, made Plant's register
claim a certificate that does not exist, and no audit said so. Here each row must be a
certificate some version of the skill it names records (``certificate-not-signed``, a
finding about the registry as a whole: the row may name any skill, whose own chain is clean),
and, the other way round, each certificate a skill version records must be a row naming
that skill (``certificate-not-recorded``, on the skill: the row was deleted past the table's
guard, or the id was signed twice before 0023 kept them, and the row names the first skill).

Both sides are read by one statement, so one snapshot: a certification committing in between
(its row and its version are one transaction) can show neither half alone. The versions
read are those whose bytes hold ``"certificate_id"``, of the skills a row names or whose row
is certified or retired (a skill once certified is never anything else: a row edited away from
that is its chain check's ``row-content-mismatch``), so a registry of drafts is not searched
through; each is parsed as signed JSON is, and only its top-level ``certificate`` counts, as
migration 0023 read them. That a version is Plant's (its link and signature) is
the chain check's part: a version INSERTed to match a forged row is found there.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Iterator
from itertools import islice

from sqlalchemy import Uuid, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from models.audit import FindingRow
from models.canonical import strict_json_loads

NOT_SIGNED = "certificate-not-signed"
NOT_RECORDED = "certificate-not-recorded"
# The ids Plant issues (models.certificates.issue_certificate); migration 0023 kept only these.
ISSUED_ID = re.compile(r"SKILL-([A-Z][A-Z0-9]{0,7})-([0-9]{1,9})")

# One statement, one snapshot: every row, and every skill version that may record a certificate;
# for a scoped run, the rows and versions of those skills alone (read by the database's indexes,
# not every row filtered here).
_ROWS = "SELECT certificate_id, skill_id, NULL::integer AS version, NULL::bytea AS content FROM issued_certificates"
_VERSIONS = ("SELECT NULL, entity_id, version, content FROM entity_versions WHERE entity_type = 'skill' "
             "AND entity_id IN (SELECT id FROM skills WHERE status IN ('certified', 'retired') "
             "UNION SELECT skill_id FROM issued_certificates) "
             "AND position(convert_to('\"certificate_id\"', 'UTF8') IN content) > 0")
_BOTH_SIDES = text(f"{_ROWS} UNION ALL {_VERSIONS}")
_BOTH_SIDES_OF = text(f"{_ROWS} WHERE skill_id = ANY(:ids) UNION ALL {_VERSIONS} AND entity_id = ANY(:ids)").bindparams(
    bindparam("ids", type_=ARRAY(Uuid())))


# Rows of both sides fetched at a time (a cursor the server holds: the versions' contents are
# read once, never all at once), and findings handed out at a time.
READ_PAGE = 1_000


def certificate_findings(session: Session, *, skill_ids: Collection[uuid.UUID] | None = None) -> list[FindingRow]:
    """Every finding of :func:`certificate_finding_pages`, at once."""
    return [finding for page in certificate_finding_pages(session, skill_ids=skill_ids) for finding in page]


def certificate_finding_pages(session: Session, *,
                              skill_ids: Collection[uuid.UUID] | None = None) -> Iterator[list[FindingRow]]:
    """A ``certificate-not-signed`` finding for each row of ``issued_certificates`` no version
    of its skill records, and a ``certificate-not-recorded`` one for each certificate a skill
    version records that no row names for that skill, :data:`READ_PAGE` at a time. With
    ``skill_ids`` (a run scoped to entity ids), only rows and certificates of those skills.
    Both sides are read to the end (one statement, through a held cursor) before the first
    page: what is kept is each side's ids, not the versions' contents."""
    statement = _BOTH_SIDES if skill_ids is None else _BOTH_SIDES_OF
    both_sides = session.execute(statement.execution_options(yield_per=READ_PAGE),
                                 {} if skill_ids is None else {"ids": sorted(skill_ids)})
    issued: dict[str, uuid.UUID] = {}
    signed: dict[tuple[str, uuid.UUID], int] = {}  # (certificate id, skill): the first version recording it
    for certificate_id, skill_id, version, content in both_sides:
        if version is None:
            issued[certificate_id] = skill_id  # certificate_id is the table's key: each is read once
        elif (recorded := recorded_certificate_id(bytes(content))) is not None:
            signed[(recorded, skill_id)] = min(version, signed.get((recorded, skill_id), version))
    findings = _findings(issued, signed)
    while page := list(islice(findings, READ_PAGE)):
        yield page


def _findings(issued: dict[str, uuid.UUID], signed: dict[tuple[str, uuid.UUID], int]) -> Iterator[FindingRow]:
    for certificate_id, skill_id in sorted(issued.items()):
        if (certificate_id, skill_id) not in signed:
            yield FindingRow(None, None, None, NOT_SIGNED,
                             f"issued_certificates holds {certificate_id} for skill {skill_id}, and no version of that "
                             "skill's chain records it: a row written outside Plant, for a certificate never signed")
    for (certificate_id, skill_id), version in sorted(signed.items(), key=lambda item: (str(item[0][1]), item[1])):
        if issued.get(certificate_id) != skill_id:
            yield FindingRow("skill", skill_id, version, NOT_RECORDED, _unrecorded(certificate_id, issued.get(certificate_id)))


def recorded_certificate_id(content: bytes) -> str | None:
    """The id of the certificate a skill version's content records (its top-level
    ``certificate``), if it is one Plant issues; None for content that is no signed JSON."""
    try:
        document = strict_json_loads(content)
    except ValueError:
        return None
    certificate = document.get("certificate") if isinstance(document, dict) else None
    certificate_id = certificate.get("certificate_id") if isinstance(certificate, dict) else None
    return certificate_id if isinstance(certificate_id, str) and ISSUED_ID.fullmatch(certificate_id) else None


def _unrecorded(certificate_id: str, holder: uuid.UUID | None) -> str:
    if holder is None:
        return (f"its chain records certificate {certificate_id}, and issued_certificates holds no row for it: the row "
                "was deleted past the table's guard")
    return (f"its chain records certificate {certificate_id}, which issued_certificates holds for skill {holder}: the "
            "id was signed for two skills")
