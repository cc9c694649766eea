"""The offline certificate check dated by a digest, and its neighbours.

``plant certificate verify --history`` believed a history export cut short before the
retiring version (it is neither signed as a whole nor dated); ``--digest`` now dates it. The
audit's certificate cross-check read every row for a scoped run; the exports each wrote their
file their own way; and a job outcome's formatter that raised was shown as JSON, hiding the bug.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import event

from cli import output
from cli.errors import EXIT_NOT_VERIFIED
from cli.main import cli
from cli.output import outcome_lines
from models.audit_certificates import NOT_RECORDED, NOT_SIGNED, certificate_findings
from models.entities import EntityType
from models.ledger_digest import digest_with_leaves
from models.registry import create_entity, update_entity
from tests.test_audit import lift_guard
from tests.test_certificates_verified_offline_and_cross_checked_by_the_audit import (  # noqa: F401 (issued: a fixture)
    _certified, _forge_row, _history, _write, issued,
)


def _digest(tmp_path: Path, keyring: Any, history: dict[str, Any], name: str = "digest.json") -> Path:
    """A ledger digest with leaves, taken when ``history`` was the skill's whole chain."""
    skill_id, head = uuid.UUID(history["entity_id"]), history["items"][-1]
    digest = digest_with_leaves(dt.datetime.now(dt.UTC), [(skill_id, bytes.fromhex(head["link_hash"]))],
                                keyring, versions={skill_id: head["version"]})
    return _write(tmp_path, name, digest)


def _verify(*args: Any) -> Result:
    return CliRunner().invoke(cli, ["certificate", "verify", *map(str, args)])


def test_a_history_cut_short_before_the_retire_does_not_stand_against_a_digest_taken_after_it(
        issued, db_session, write_ctx, keyring, tmp_path) -> None:  # noqa: F811
    skill, _, path, jwks = issued
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"status": "retired"}, ctx=write_ctx)
    whole = _history(db_session, skill.id)
    digest = _digest(tmp_path, keyring, whole)
    cut = _write(tmp_path, "cut.json", {**whole, "items": whole["items"][:-1]})
    # Alone, the cut history still bears the certificate out: the output says how little that shows.
    alone = _verify(path, "--jwks", jwks, "--history", cut)
    assert alone.exit_code == 0, alone.output
    assert "only as fresh as the history export" in alone.stdout and "--digest" in alone.stdout
    assert json.loads(_verify(path, "--jwks", jwks, "--history", cut, "--json").stdout)["standing"]["as_of"] is None
    dated = _verify(path, "--jwks", jwks, "--history", cut, "--digest", digest)
    assert dated.exit_code == EXIT_NOT_VERIFIED, dated.output
    assert "NOT dated" in dated.stderr and "cut short" in dated.stderr and len(dated.stderr.splitlines()) == 1
    as_json = _verify(path, "--jwks", jwks, "--history", cut, "--digest", digest, "--json")
    assert as_json.exit_code == EXIT_NOT_VERIFIED and json.loads(as_json.stdout)["valid"] is False
    # The whole history, with the same digest, is the retired chain: withdrawn.
    full = _verify(path, "--jwks", jwks, "--history", _write(tmp_path, "whole.json", whole), "--digest", digest)
    assert full.exit_code == EXIT_NOT_VERIFIED and "WITHDRAWN" in full.stderr


def test_a_standing_certificate_dated_by_a_digest_says_as_of_when(issued, db_session, keyring, tmp_path) -> None:  # noqa: F811
    skill, _, path, jwks = issued
    history = _history(db_session, skill.id)
    digest = _digest(tmp_path, keyring, history)
    history_file = _write(tmp_path, "history.json", history)
    dated = _verify(path, "--jwks", jwks, "--history", history_file, "--digest", digest)
    assert dated.exit_code == 0, dated.output
    as_of = json.loads(digest.read_text())["as_of"]
    assert f"standing as of {as_of}" in dated.stdout and "only as fresh" not in dated.stdout
    facts = json.loads(_verify(path, "--jwks", jwks, "--history", history_file, "--digest", digest, "--json").stdout)
    assert facts["standing"]["as_of"] == as_of
    leafless = json.loads(digest.read_text())
    del leafless["leaves"]
    refused = _verify(path, "--jwks", jwks, "--history", history_file, "--digest", _write(tmp_path, "l.json", leafless))
    assert refused.exit_code == EXIT_NOT_VERIFIED and "has no leaves" in refused.stderr
    elsewhere = {**history, "entity_id": str(uuid.uuid4())}
    unheld = _verify(path, "--jwks", jwks, "--history", history_file, "--digest", _digest(tmp_path, keyring, elsewhere, "o.json"))
    assert unheld.exit_code == EXIT_NOT_VERIFIED and "holds no head" in unheld.stderr
    assert _verify(path, "--jwks", jwks, "--digest", digest).exit_code == 2  # a digest dates a history



def _read_rows(session: Any, **kwargs: Any) -> tuple[list[tuple], int]:
    """The cross-check's findings and how many rows its statement read (counted by running
    it again, as sent: it is read through a cursor the server holds, which counts none)."""
    read: list[tuple[str, Any]] = []
    engine = session.connection().engine

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "issued_certificates" in statement:
            read.append((statement, parameters))
    event.listen(engine, "after_cursor_execute", count)
    try:
        findings = certificate_findings(session, **kwargs)
    finally:
        event.remove(engine, "after_cursor_execute", count)
    assert len(read) == 1
    statement, parameters = read[0]
    rows = session.connection().exec_driver_sql(f"SELECT count(*) FROM ({statement}) AS sent", parameters).scalar()
    return sorted((f.code, f.entity_id, f.version, f.detail) for f in findings), rows


def test_a_scoped_cross_check_reads_only_its_skills_rows_and_finds_what_it_found(
        db_session, write_ctx, steward) -> None:
    forged, _ = _certified(db_session, write_ctx, steward, "Review Scoped Forged Skill")
    unrecorded, certificate = _certified(db_session, write_ctx, steward, "Review Scoped Unrecorded Skill",
                                         description="Operates and tunes large warehouse forklifts safely across busy night shifts")
    _forge_row(db_session, forged.id)
    lift_guard(db_session, "DELETE FROM issued_certificates WHERE certificate_id = :id", table="issued_certificates",
               id=certificate["certificate_id"])
    everything, read_all = _read_rows(db_session)
    for scope in ({forged.id}, {unrecorded.id}, {forged.id, unrecorded.id}, {uuid.uuid4()}):
        found, read = _read_rows(db_session, skill_ids=scope)
        assert found == [f for f in everything if f[1] in scope or (f[1] is None and any(str(i) in f[3] for i in scope))]
        # The forged skill: its row, the forged row, its certifying version; the other: its version alone.
        assert read == 3 * (forged.id in scope) + (unrecorded.id in scope), scope
    assert {f[0] for f in everything} >= {NOT_SIGNED, NOT_RECORDED} and read_all >= 4


def test_the_cross_check_reads_no_version_of_a_skill_never_certified(db_session, write_ctx, steward) -> None:
    """Only the versions of skills certified or retired by their row, or named by a row, are read:
    a registry of drafts is not searched through, even where their bytes hold ``"certificate_id"``."""
    findings, before = _read_rows(db_session)
    for n in range(3):
        draft = create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
            "name": f"Draft naming certificates {n}", "category": "technical", "governance_agent_id": steward,
            "description": "a draft whose text says certificate_id", "attributes": {"certificate_id": "SKILL-GEN-999"}})
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=draft.id, ctx=write_ctx,
                      changes={"description": "a draft, edited, whose text says certificate_id"})
    db_session.flush()
    assert _read_rows(db_session) == (findings, before)


AUDITED = {"run_id": "r", "total_entities": 3, "compliant": 3, "non_compliant": 0, "versions_verified": 5, "findings": 0,
           "by_code": {"stale-embedding": 1}}
CERTIFIED = {"status": "certified", "skill_id": "s", "version": 2, "certificate": {"certificate_id": "SKILL-GEN-001", "kid": "k"}}
PLACED = {"placed": 1, "requested": 2, "not_placed": 1, "unplaced": [{"agent_id": "a", "reason": "no-seat"}]}
ASSIGNED = {"agent_id": "a", "team_id": "t", "candidates": [{"name": "Growth", "score": 0.9, "free_seats": 2}]}


@pytest.mark.parametrize(("kind", "result", "words"), [
    ("audit.run", AUDITED, "audit run r: 3 entities"), ("skill.certify", CERTIFIED, "certified: SKILL-GEN-001"),
    ("skill.certify", {"status": "rejected", "skill_id": "s", "failed_gates": [{"gate": "length"}]}, "rejected: skill s"),
    ("agents.assign_teams", PLACED, "placed 1 of 2"), ("agent.assign_team", ASSIGNED, "assigned: agent a to team t"),
])
def test_a_result_of_its_kinds_shape_is_told_in_words(kind: str, result: dict, words: str) -> None:
    assert outcome_lines({"kind": kind, "result": result})[0].startswith(words)


@pytest.mark.parametrize(("kind", "result"), [
    ("skill.certify", {**CERTIFIED, "certificate": {"certificate_id": "SKILL-GEN-001"}}),
    ("skill.certify", {"status": "rejected", "failed_gates": "length"}),
    ("skill.certify", {"status": "rejected", "failed_gates": [{"detail": "x"}]}),
    ("agent.assign_team", {**ASSIGNED, "candidates": [{"name": "Growth"}]}),
    ("agent.assign_team", {"agent_id": "a"}),
    ("agents.assign_teams", {**PLACED, "unplaced": [{"reason": "no-seat"}, {"reason": 1}]}),
    ("agents.assign_teams", {**PLACED, "unplaced": [{"reason": ["no-seat"]}]}),
    ("agents.assign_teams", {**PLACED, "unplaced": "no-seat"}),
    ("audit.run", {**AUDITED, "by_code": [["stale-embedding", 1]]}),
    ("audit.run", {k: v for k, v in AUDITED.items() if k != "findings"}),
])
def test_a_result_missing_what_its_formatter_reads_is_shown_as_stored(kind: str, result: dict) -> None:
    assert outcome_lines({"kind": kind, "result": result}) == [json.dumps(result, separators=(",", ":"))]


def test_a_mistake_in_a_formatter_raises_rather_than_passing_for_a_result_of_another_shape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def mistaken(result: dict) -> list[str]:
        return [f"audit run {result['run']}"]  # a member no audit result has

    monkeypatch.setitem(output._OUTCOMES, "audit.run", mistaken)
    with pytest.raises(KeyError):
        outcome_lines({"kind": "audit.run", "result": AUDITED})


def test_every_export_is_printed_or_kept_and_told_one_way(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.evidence import export_document

    document = {"b": [1], "a": "\u00e9"}
    told: list[str] = []

    def facts() -> dict[str, Any]:
        told.append("facts")
        return {"file": "f", "n": 1}

    export_document(document, None, False, facts, lambda written: f"wrote {written['n']}")
    assert json.loads(capsys.readouterr().out) == document and told == []  # printed: nothing else is worked out
    kept = tmp_path / "kept.json"
    export_document(document, kept, False, facts, lambda written: f"wrote {written['n']}")
    assert kept.read_text() == json.dumps(document, indent=2) + "\n" and capsys.readouterr().out == "wrote 1\n"
    export_document(document, kept, True, facts, lambda written: "unused")
    assert json.loads(capsys.readouterr().out) == {"file": "f", "n": 1}
