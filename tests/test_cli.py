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
