"""Skill certificates as an auditor holds them, and the register of issued ids.

``plant certificate export`` / ``plant certificate verify FILE --jwks jwks.json``: a certificate
checked offline with nothing but the files (exit 4 when it does not verify, or with
``--history`` does not stand); and the full audit's cross-check of ``issued_certificates``
with the certificates the chains record: a row INSERTed through SQL for an id no chain signed
is ``certificate-not-signed``, a signed certificate whose row is gone ``certificate-not-recorded``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text
from sqlalchemy.orm import Session

from cli.errors import EXIT_NOT_VERIFIED
from cli.main import cli
from models.certificate_check import certificate_export
from models.certification import certify_skill
from models.chain import history
from models.db import make_session_factory, transaction
from models.entities import EntityType
from models.key_material import generate_ed25519
from models.registry import create_entity, update_entity
from models.signing import KeyRing
from tests.conftest import ring_sealing
from tests.test_audit import lift_guard, run_audit
from tests.test_cli_api import api_url, plant  # noqa: F401 (fixtures: a live server)
from web.api.registry import version_resource

GOOD = "Designs, reviews and maintains reliable data pipelines for analytics teams every day"


def _certified(session: Session, ctx: Any, steward: Any, name: str, description: str = GOOD) -> tuple[Any, dict]:
    skill = create_entity(session, entity_type=EntityType.SKILL, ctx=ctx, data={
        "name": name, "skill_key": name.lower().replace(" ", "-"), "category": "technical",
        "description": description, "governance_agent_id": steward})
    outcome = certify_skill(session, skill_id=skill.id, notes=None, ctx=ctx)
    assert outcome.status == "certified"
    return skill, outcome.certificate


def _write(tmp_path: Path, name: str, value: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(value, indent=2))
    return path


def _history(session: Session, skill_id: uuid.UUID) -> dict[str, Any]:
    """The skill's history export, as GET .../history answers it."""
    return {"entity_type": "skill", "entity_id": str(skill_id),
            "items": [version_resource(v) for v in history(session, entity_id=skill_id)]}


def _verify(path: Path, jwks: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["certificate", "verify", str(path), "--jwks", str(jwks), *args])


def _refused(result: Result, *words: str) -> str:
    assert result.exit_code == EXIT_NOT_VERIFIED, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("plant: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def issued(db_session, write_ctx, steward, keyring, tmp_path) -> tuple[Any, dict, Path, Path]:
    """A certified skill, its certificate export and the published JWKS, saved."""
    skill, certificate = _certified(db_session, write_ctx, steward, "Review Pipeline Engineering")
    return (skill, certificate, _write(tmp_path, "certificate.json", certificate_export(skill.id, certificate)),
            _write(tmp_path, "jwks.json", keyring.jwks()))


def test_a_certificate_verifies_offline_with_the_published_keys(issued) -> None:
    skill, certificate, path, jwks = issued
    result = _verify(path, jwks, "--skill", str(skill.id), "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert (facts["valid"], facts["skill_id"], facts["certificate_id"]) == (True, str(skill.id), certificate["certificate_id"])
    assert facts["keys"].startswith("offline") and facts["standing"] is None
    text_result = _verify(path, jwks)
    assert text_result.exit_code == 0 and "certificate valid" in text_result.stdout
    assert "pass --history" in text_result.stdout  # says what it did not check


@pytest.mark.parametrize("member", ["certificate_id", "issued_at", "certified_link_hash", "signature", "kid"])
def test_one_byte_changed_anywhere_in_the_certificate_does_not_verify(issued, tmp_path, member) -> None:
    _, certificate, _, jwks = issued
    document = json.loads((tmp_path / "certificate.json").read_text())
    value = certificate[member]
    at = len(value) - 2
    document["certificate"][member] = value[:at] + ("A" if value[at] != "A" else "B") + value[at + 1:]
    _refused(_verify(_write(tmp_path, "edited.json", document), jwks), "NOT valid")


def test_a_certificate_checked_with_another_key_set_does_not_verify(issued, tmp_path) -> None:
    _, _, path, _ = issued
    other = _write(tmp_path, "other-jwks.json", KeyRing(generate_ed25519()).jwks())
    _refused(_verify(path, other), "NOT valid")


def test_a_certificate_re_signed_by_another_key_under_the_same_kid_does_not_verify(issued, tmp_path, keyring) -> None:
    from models.certificates import certificate_statement
    from models.jws import b64url_encode

    skill, certificate, _, jwks = issued
    forger = generate_ed25519()
    forged = {**certificate, "signature": b64url_encode(forger.sign(certificate_statement(skill.id, certificate)))}
    _refused(_verify(_write(tmp_path, "forged.json", certificate_export(skill.id, forged)), jwks), "NOT valid")


def test_a_certificate_passed_off_as_another_skills_does_not_verify(issued, db_session, write_ctx, steward, tmp_path) -> None:
    skill, certificate, path, jwks = issued
    other, _ = _certified(db_session, write_ctx, steward, "Review Other Skill",
                          description="Operates and tunes large warehouse forklifts safely across busy night shifts")
    _refused(_verify(path, jwks, "--skill", str(other.id)), f"not skill {other.id}")
    moved = _write(tmp_path, "moved.json", certificate_export(other.id, certificate))  # the file edited to name it
    _refused(_verify(moved, jwks), "NOT valid")
    _refused(_verify(moved, jwks, "--skill", str(other.id)), "NOT valid")


def test_a_certificate_signed_after_its_keys_seal_does_not_verify(issued, tmp_path, keyring) -> None:
    _, certificate, path, _ = issued
    sealed = _write(tmp_path, "sealed.json", ring_sealing(keyring, certificate["issued_at"]).jwks())
    _refused(_verify(path, sealed), "NOT valid")
    earlier = _write(tmp_path, "later-seal.json", ring_sealing(keyring, "2999-01-01T00:00:00Z").jwks())
    result = _verify(path, earlier)
    assert result.exit_code == 0 and "sealed at" in result.stdout, result.output


def test_with_its_history_a_standing_certificate_verifies_and_a_withdrawn_one_does_not(
        issued, db_session, write_ctx, tmp_path) -> None:
    skill, _, path, jwks = issued
    standing = _verify(path, jwks, "--history", str(_write(tmp_path, "h1.json", _history(db_session, skill.id))), "--json")
    assert standing.exit_code == 0, standing.output
    assert json.loads(standing.stdout)["standing"]["versions"] == 2
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"status": "retired"}, ctx=write_ctx)
    retired = _write(tmp_path, "h2.json", _history(db_session, skill.id))
    _refused(_verify(path, jwks, "--history", str(retired)), "WITHDRAWN", "retired")
    # The certificate's own signature still verifies: only the history tells.
    assert _verify(path, jwks).exit_code == 0


def test_a_history_of_another_skill_or_one_edited_does_not_bear_a_certificate_out(
        issued, db_session, write_ctx, steward, tmp_path) -> None:
    skill, _, path, jwks = issued
    other, _ = _certified(db_session, write_ctx, steward, "Review Third Skill",
                          description="Plans, staffs and runs hospital kitchen operations for patients and staff")
    _refused(_verify(path, jwks, "--history", str(_write(tmp_path, "o.json", _history(db_session, other.id)))),
             "does NOT stand", f"not of skill {skill.id}")
    edited = _history(db_session, skill.id)
    edited["items"][-1]["content"] = edited["items"][-1]["content"].replace('"certified"', '"certified" ')
    _refused(_verify(path, jwks, "--history", str(_write(tmp_path, "e.json", edited))), "does NOT stand")


@pytest.mark.parametrize("content", ['{"skill_id": 1}', "not json", '{"skill_id": "x", "skill_id": "y", "certificate": {}}', "[]"])
def test_a_file_that_is_no_certificate_export_exits_4_in_one_line(issued, tmp_path, content) -> None:
    _, _, _, jwks = issued
    path = tmp_path / "bad.json"
    path.write_text(content)
    _refused(_verify(path, jwks))


def test_a_key_file_that_is_no_jwk_set_stops_the_check_with_exit_1(issued, tmp_path) -> None:
    _, _, path, _ = issued
    result = _verify(path, _write(tmp_path, "nokeys.json", {"kid": "x"}))
    assert result.exit_code == 1 and result.stderr.startswith("plant: ") and "JWK Set" in result.stderr


def test_plant_certificate_export_writes_what_verify_checks(plant, engine, write_ctx, committed_steward, keyring,  # noqa: F811
                                                            tmp_path) -> None:
    with transaction(make_session_factory(engine)) as session:
        skill, certificate = _certified(session, write_ctx, committed_steward, "Review Exported Skill")
        draft = create_entity(session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
            "name": "Review Draft", "skill_key": "review-draft", "category": "technical", "description": "short",
            "governance_agent_id": committed_steward})
        skill_id, key, draft_id = skill.id, skill.skill_key, draft.id
    out = tmp_path / "exported.json"
    written = plant("certificate", "export", key, "-o", out, "--json")
    assert written.exit_code == 0, written.output
    assert json.loads(written.stdout)["certificate_id"] == certificate["certificate_id"]
    assert json.loads(out.read_text()) == certificate_export(skill_id, certificate)
    jwks = _write(tmp_path, "jwks.json", keyring.jwks())
    assert plant("certificate", "verify", out, "--jwks", jwks, "--skill", skill_id).exit_code == 0
    none = plant("certificate", "export", draft_id)
    assert none.exit_code == 1 and "holds no certificate" in none.stderr


def _forge_row(session: Session, skill_id: uuid.UUID, certificate_id: str = "SKILL-GEN-777") -> None:
    code, number = certificate_id.split("-")[1:]
    session.execute(text("INSERT INTO issued_certificates VALUES (:id, :code, :n, :skill)"),
                    {"id": certificate_id, "code": code, "n": int(number), "skill": skill_id})


def _certificate_findings(findings: list) -> list[tuple]:
    return sorted((f.code, f.entity_id, f.version) for f in findings if f.code.startswith("certificate-"))


def test_a_row_inserted_into_issued_certificates_is_found_by_the_full_audit(db_session, write_ctx, steward, keyring) -> None:
    skill, _ = _certified(db_session, write_ctx, steward, "Review Audited Skill")
    clean, findings = run_audit(db_session, keyring, {"verify_signatures": "heads"})
    assert _certificate_findings(findings) == [] and clean["non_compliant"] == 0
    _forge_row(db_session, skill.id)
    for params in ({"verify_signatures": "heads"}, {"scope": {"entity_type": "skill"}},
                   {"scope": {"entity_ids": [str(skill.id)]}}):
        summary, findings = run_audit(db_session, keyring, params)
        assert _certificate_findings(findings) == [("certificate-not-signed", None, None)], params
        detail = next(f.detail for f in findings if f.code == "certificate-not-signed")
        assert "SKILL-GEN-777" in detail and str(skill.id) in detail
        assert "certificate-not-signed" in summary["run_level_findings"], params
    # A run about agents only, or other entities, reads no certificate.
    _, agents = run_audit(db_session, keyring, {"scope": {"entity_type": "agent"}})
    assert _certificate_findings(agents) == []
    _, others = run_audit(db_session, keyring, {"scope": {"entity_ids": [str(steward)]}})
    assert _certificate_findings(others) == []


def test_a_signed_certificate_whose_row_is_gone_is_found_on_its_skill(db_session, write_ctx, steward, keyring) -> None:
    skill, certificate = _certified(db_session, write_ctx, steward, "Review Unrecorded Skill")
    lift_guard(db_session, "DELETE FROM issued_certificates WHERE certificate_id = :id", table="issued_certificates",
               id=certificate["certificate_id"])
    summary, findings = run_audit(db_session, keyring, {"verify_signatures": "heads"})
    assert _certificate_findings(findings) == [("certificate-not-recorded", skill.id, 2)]
    assert summary["non_compliant"] == 1


def test_a_row_moved_to_another_skill_is_found_both_ways(db_session, write_ctx, steward, keyring) -> None:
    skill, certificate = _certified(db_session, write_ctx, steward, "Review Moved Skill")
    other = uuid.uuid4()
    lift_guard(db_session, "UPDATE issued_certificates SET skill_id = :other WHERE certificate_id = :id",
               table="issued_certificates", id=certificate["certificate_id"], other=other)
    _, findings = run_audit(db_session, keyring, {"verify_signatures": "heads"})
    assert _certificate_findings(findings) == [("certificate-not-recorded", skill.id, 2),
                                               ("certificate-not-signed", None, None)]


def test_skill_versions_that_are_no_json_do_not_stop_the_cross_check(db_session, write_ctx, steward, keyring) -> None:
    from models.audit_certificates import certificate_findings, recorded_certificate_id

    assert recorded_certificate_id(b'\xff"certificate_id"') is None
    assert recorded_certificate_id(b'{"attributes":{"certificate":{"certificate_id":"SKILL-GEN-001"}}}') is None
    assert recorded_certificate_id(b'{"certificate":{"certificate_id":"SKILL-GEN-001"}}') == "SKILL-GEN-001"
    _certified(db_session, write_ctx, steward, "Review Json Skill")
    assert certificate_findings(db_session) == []
