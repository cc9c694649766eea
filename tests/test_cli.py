"""The ``plant`` CLI's schema and seed commands against the real test database."""

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.fixture
def run(settings, monkeypatch, clean_db):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PLANT_DATA_DIR", str(settings.data_dir))
    return lambda *args: CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_db_upgrade_and_check(run) -> None:
    assert run("db", "upgrade").exit_code == 0
    result = run("db", "check")
    assert result.exit_code == 0 and "no schema drift" in result.output


def test_seed_is_idempotent(run) -> None:
    first = run("seed")
    assert first.exit_code == 0 and "51 agent" in first.output  # 50 demo agents + the steward
    second = run("seed")
    assert second.exit_code == 0
    assert "0 industry, 0 skill, 0 job_role, 0 team, 0 agent" in second.output


def test_report_verify_accepts_a_signed_report_and_refuses_a_changed_one(tmp_path, keyring) -> None:
    from models.reports import signed_report

    report = tmp_path / "report.json"
    report.write_bytes(signed_report({"type": "plant.audit-report.v1", "run": {"id": "r"}, "findings": []}, keyring))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(__import__("json").dumps(keyring.jwks()))
    ok = CliRunner().invoke(cli, ["report", "verify", str(report), "--jwks", str(jwks)])
    assert ok.exit_code == 0 and keyring.active.kid in ok.output
    report.write_bytes(report.read_bytes().replace(b'"findings":[]', b'"findings":[1]'))
    bad = CliRunner().invoke(cli, ["report", "verify", str(report), "--jwks", str(jwks)])
    assert bad.exit_code == 4 and bad.stdout == ""
    assert bad.stderr.startswith("plant: report signature is NOT valid") and bad.stderr.count("\n") == 1
    report.write_text("not json at all")
    assert CliRunner().invoke(cli, ["report", "verify", str(report), "--jwks", str(jwks)]).exit_code == 4


def test_seed_and_db_check_speak_json(run) -> None:
    import json

    assert json.loads(run("db", "check", "--json").stdout) == {"drift": False}
    seeded = json.loads(run("seed", "--json").stdout)
    assert seeded["created"]["skill"] == 19 and seeded["steward_id"]


def test_entity_restore_repairs_an_edited_row_and_lists_the_signed_record(run, engine, committed_steward, write_ctx) -> None:
    import json

    from sqlalchemy import text

    from models.db import make_session_factory, transaction
    from models.entities import EntityType
    from models.registry import create_entity

    with transaction(make_session_factory(engine)) as session:
        industry = create_entity(session, entity_type=EntityType.INDUSTRY, ctx=write_ctx, data={
            "name": "Restored Industry", "code": "RST", "governance_agent_id": committed_steward})
    untouched = run("entity", "restore", "industry", str(industry.id))
    assert untouched.exit_code == 0 and "nothing to restore" in untouched.output
    with engine.begin() as connection:
        connection.execute(text("UPDATE industries SET name = 'Renamed by hand' WHERE id = :i"), {"i": industry.id})
    restored = json.loads(run("entity", "restore", "industry", str(industry.id), "--actor", "ops:alice", "--json").stdout)
    assert restored["restored"] and restored["changed_fields"] == ["name"] and restored["finding"] == "row-content-mismatch"
    listed = json.loads(run("entity", "repairs", "--json").stdout)
    assert [(r["entity_id"], r["actor"], r["verified"]) for r in listed] == [(str(industry.id), "ops:alice", True)]
    assert listed[0]["row_before"]["content"]["name"] == "Renamed by hand"
    missing = CliRunner().invoke(cli, ["entity", "restore", "agent", "00000000-0000-4000-8000-000000000000"])
    assert missing.exit_code == 1 and missing.stderr.startswith("plant: no agent with id")
