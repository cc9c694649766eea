"""Checking a skill certificate offline: the file an auditor holds, with the published keys.

``plant certificate export`` writes a certificate as ``{"skill_id", "certificate"}``: the
certificate as the skill's resource (``GET /api/v1/genesis/skills/{id}``) holds it, and the
skill it was issued for, which its signature covers (:func:`models.certificates.certificate_statement`)
but which it does not name. :func:`check_certificate` checks it with nothing but that
document and a JWK Set, by :func:`models.certificates.verify_certificate`, the check Plant
itself makes (so a sealed key's certificate its seal does not list, or dated at or after the
seal, does not verify either).

A signature cannot say whether the certificate still stands: retiring the skill withdraws
it (a signed version; the certificate itself is unchanged and still verifies), and so does
deleting the skill. Given the skill's history export (``plant history export skill ID``),
checked by :func:`models.history_check.check_history`, :func:`certificate_standing` says
whether that chain certified the skill as the certificate says and whether its head, as of
the export, has withdrawn it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from models.canonical import strict_json_loads
from models.certificates import verify_certificate
from models.entities import SkillStatus
from models.history_check import HistoryCheck, exact_uuid
from models.jws import KeySource

EXPORT_MEMBERS = frozenset({"skill_id", "certificate"})


@dataclass(frozen=True)
class CertificateCheck:
    """What :func:`check_certificate` found: ``problem`` None means the certificate verified."""

    skill_id: uuid.UUID
    certificate: dict[str, Any]
    problem: str | None

    @property
    def certificate_id(self) -> Any:
        return self.certificate.get("certificate_id")


def certificate_export(skill_id: uuid.UUID, certificate: dict[str, Any]) -> dict[str, Any]:
    """The document ``plant certificate export`` writes."""
    return {"skill_id": str(skill_id), "certificate": certificate}


def check_certificate(document: Any, keys: KeySource, *, expected_skill: uuid.UUID | None = None) -> CertificateCheck:
    """Check an exported certificate with ``keys`` (a JWK Set), and with ``expected_skill``
    that it is that skill's. ``ValueError`` if the document is no certificate export at all."""
    if not isinstance(document, dict) or set(document) != EXPORT_MEMBERS:
        raise ValueError(f"a certificate export is an object of exactly {', '.join(sorted(EXPORT_MEMBERS))}")
    skill_id = exact_uuid(document["skill_id"], "skill_id")
    certificate = document["certificate"]
    if not isinstance(certificate, dict):
        raise ValueError("its certificate is not an object (a skill never certified holds null)")
    if expected_skill is not None and skill_id != expected_skill:
        return CertificateCheck(skill_id, certificate, f"the file names skill {skill_id}, not skill {expected_skill}")
    if not verify_certificate(certificate, skill_id=skill_id, keyring=keys):
        return CertificateCheck(skill_id, certificate, (
            f"it is not a certificate signed for skill {skill_id} by a published key as it reads (a member changed "
            "or added, another skill's certificate, an unknown key, or one signed after its key's seal)"))
    return CertificateCheck(skill_id, certificate, None)


def certificate_standing(checked: CertificateCheck, history: HistoryCheck, contents: dict[int, Any]) -> str | None:
    """Why the skill's verified ``history`` (``contents``: each version's parsed content) does
    not bear the verified certificate out as standing, or None when it does: the chain is the
    skill's, certified it at the version and link the certificate names, records this very
    certificate, and its head neither retired nor deleted the skill."""
    if history.entity_type != "skill" or history.entity_id != checked.skill_id:
        return f"the history is of {history.entity_type} {history.entity_id}, not of skill {checked.skill_id}"
    if history.findings:
        return "the history does not verify: " + "; ".join(f"version {f.version}: {f.code}" for f in history.findings[:5])
    certified = checked.certificate.get("certified_version")
    if history.links.get(certified) != checked.certificate.get("certified_link_hash"):
        return f"the chain's version {certified} is not the one the certificate names (its link differs)"
    recording = [v for v, content in contents.items() if isinstance(content, dict)
                 and content.get("certificate") == checked.certificate]
    if not recording:
        return "no version of the chain records this certificate"
    head = contents[max(contents)]
    if history.deleted:
        return f"WITHDRAWN: version {max(contents)} deleted the skill"
    if not isinstance(head, dict) or head.get("status") != SkillStatus.CERTIFIED.value:
        status = head.get("status") if isinstance(head, dict) else None
        return f"WITHDRAWN: version {max(contents)} set the skill {status}, withdrawing its certificate"
    return None


def version_contents(history_document: dict[str, Any]) -> dict[int, Any]:
    """Each version's content, parsed, of a history export :func:`models.history_check.check_history`
    accepted (None where it is no JSON: a finding of the check already)."""
    contents: dict[int, Any] = {}
    for item in history_document["items"]:
        try:
            contents[item["version"]] = strict_json_loads(item["content"])
        except ValueError:
            contents[item["version"]] = None
    return contents
