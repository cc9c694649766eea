"""The ``plant`` CLI's schema and seed commands against the real test database."""

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import refused_port, ring_sealing


pytestmark = pytest.mark.usefixtures("no_server_log_lines")  # tests/conftest.py: CLI output without server log lines


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
    from tests.report_builders import signed_report

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


@pytest.mark.parametrize("where", ["summary", "running run"])
def test_report_verify_says_how_many_findings_the_run_left_out_of_its_counts(tmp_path, keyring, where) -> None:
    import json

    from tests.report_builders import signed_report

    left_out = {"count": 2, "ids": [[7, 8]]}
    run_resource = {"id": "r", "summary": {"findings_left_out": left_out}} if where == "summary" else \
        {"id": "r", "summary": None, "findings_left_out": left_out}
    report = tmp_path / "report.json"
    report.write_bytes(signed_report({"type": "plant.audit-report.v1", "run": run_resource, "findings": [{}] * 3}, keyring))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keyring.jwks()))
    shown = CliRunner().invoke(cli, ["report", "verify", str(report), "--jwks", str(jwks)])
    assert shown.exit_code == 0 and "3 finding(s)" in shown.output and "2 of them left out of the run's counts" in shown.output
    facts = json.loads(CliRunner().invoke(cli, ["report", "verify", str(report), "--jwks", str(jwks), "--json"]).stdout)
    assert facts["findings"] == 3 and facts["findings_left_out"] == 2


def test_report_verify_says_a_running_run_s_report_is_not_final(tmp_path, db_session, skill, keyring) -> None:
    """A running run's report is signed on each export, with the findings so far and no
    summary: it verified as plainly "valid" as a finished run's."""
    import json

    from sqlalchemy import text

    from models.audit_chunks import audit_chunk_step, pending_chunks
    from models.audit_close import summarize_run
    from models.audit_runs import start_run
    from models.job_lifecycle import create_job
    from models.reports import export_report
    from tests.conftest import EMBEDDER

    db_session.execute(text("UPDATE skills SET description = 'tampered by insider' WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    job = create_job(db_session, kind="audit.run", params={"verify_signatures": "all"}, queue="audit")
    run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=3)
    running = export_report(db_session, run_id=run.id, keyring=keyring)  # before any chunk ran
    shown = _verify(tmp_path, keyring, "report", running)
    assert shown.exit_code == 0 and f"run {run.id}: running, not finished" in shown.stdout
    assert "NOT FINAL" in shown.stdout
    facts = json.loads(_verify(tmp_path, keyring, "report", running, "--json").stdout)
    assert (facts["status"], facts["finished_at"], facts["final"]) == ("running", None, False)

    for chunk_id in pending_chunks(db_session, run.id):
        while not audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=5).done:
            pass
    summarize_run(db_session, keyring=keyring, run_id=run.id)
    final = export_report(db_session, run_id=run.id, keyring=keyring)
    finished_at = json.loads(final)["report"]["run"]["finished_at"]
    shown = _verify(tmp_path, keyring, "report", final)
    assert shown.exit_code == 0 and f"run {run.id}: succeeded, finished {finished_at}" in shown.stdout
    assert "NOT FINAL" not in shown.stdout
    facts = json.loads(_verify(tmp_path, keyring, "report", final, "--json").stdout)
    assert (facts["status"], facts["finished_at"], facts["final"]) == ("succeeded", finished_at, True)


def _repair_record(ring, repaired_at: str, **changed) -> dict:
    """A repair record as a report lists it, signed by ``ring``'s active key."""
    import datetime as dt
    import uuid

    from models.repair import EntityRepair, repair_statement

    record = EntityRepair(id=uuid.uuid4(), entity_type="agent", entity_id=uuid.uuid4(), version=1, head_link_hash=bytes(32),
                          finding="row-content-mismatch", row_before={"content": {"name": "Before"}}, actor="operator:test",
                          repaired_at=dt.datetime.fromisoformat(repaired_at), kid=ring.active.kid)
    _, record.signature = ring.sign(repair_statement(record))
    return {**record.as_json(), **changed}


def test_report_verify_checks_the_signature_of_each_repair_record_the_report_lists(tmp_path, keyring) -> None:
    """A report's signature says only that Plant listed its repairs: a report exported before
    Plant checked each record listed a junk row as it was. Each is checked on its own."""
    import json

    from tests.report_builders import signed_report

    sealed_ring = ring_sealing(keyring, SEALED_AT)  # keyring's key, sealed; the report is signed by its successor
    genuine = [_repair_record(sealed_ring, "2026-07-01T00:00:00+00:00"), _repair_record(keyring, "2026-05-01T00:00:00+00:00")]
    after_seal = _repair_record(keyring, "2026-06-02T00:00:00+00:00")  # signed by the sealed key after its seal
    made_up = {**genuine[0], "id": "3b0f7a46-0000-4000-8000-000000000000", "actor": "operator:mallory"}
    report = {"type": "plant.audit-report.v1", "run": {"id": "r"}, "findings": []}

    ok = _verify(tmp_path, sealed_ring, "report", signed_report({**report, "repairs": genuine}, sealed_ring))
    assert ok.exit_code == 0 and "2 repair record(s) listed, 2 of them verified" in ok.output
    assert "does NOT verify" not in ok.output
    listing = {**report, "repairs": [genuine[0], after_seal, made_up, genuine[1]]}
    refused = _verify(tmp_path, sealed_ring, "report", signed_report(listing, sealed_ring))
    assert refused.exit_code == 4 and "report signature valid" in refused.stdout
    assert [line.split()[2] for line in refused.stdout.splitlines() if "does NOT verify" in line] == [
        after_seal["id"], made_up["id"]]
    assert refused.stderr.startswith("plant: 2 of the 4 repair record(s) the report lists do NOT verify")
    assert refused.stderr.count("\n") == 1
    facts = json.loads(_verify(tmp_path, sealed_ring, "report", signed_report(listing, sealed_ring), "--json").stdout)
    assert facts["valid"] is False and facts["repairs"] == 4
    assert facts["repairs_not_verified"] == [after_seal["id"], made_up["id"]]


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


SEALED_AT = "2026-06-01T00:00:00.000000Z"


@pytest.fixture
def sealed_ring(keyring):
    """A ring whose retired key (the ``keyring`` fixture's) was sealed at ``SEALED_AT``."""
    return ring_sealing(keyring, SEALED_AT)


def _verify(tmp_path, ring, kind: str, document: bytes, *args: str):
    import json

    path, jwks = tmp_path / f"{kind}.json", tmp_path / "jwks.json"
    path.write_bytes(document)
    jwks.write_text(json.dumps(ring.jwks()))
    return CliRunner().invoke(cli, [kind, "verify", str(path), "--jwks", str(jwks), *args])


def test_the_jwks_names_when_each_sealed_key_was_sealed(keyring, sealed_ring) -> None:
    from models.jws import find_verifier, sealed_at

    entries = {jwk["kid"]: jwk for jwk in sealed_ring.jwks()["keys"]}
    assert entries[keyring.active.kid]["plant_sealed_at"] == SEALED_AT
    assert "plant_sealed_at" not in entries[sealed_ring.active.kid]
    assert find_verifier(sealed_ring.jwks(), keyring.active.kid) is not None  # the member does not unseat the key
    for source in (sealed_ring, sealed_ring.jwks()):
        assert sealed_at(source, keyring.active.kid).isoformat() == "2026-06-01T00:00:00+00:00"
        assert sealed_at(source, sealed_ring.active.kid) is None


@pytest.mark.parametrize("entry_edit, sealed", [
    ({"plant_sealed_at": "not a time"}, "0001-01-01T00:00:00+00:00"),  # unreadable: sealed from the start
    ({"plant_sealed_at": "2026-06-01T00:00:00"}, "0001-01-01T00:00:00+00:00"),  # no offset: likewise
    ({"plant_sealed_at": SEALED_AT, "x": "AAAA"}, None),  # not the key its kid names: no say
])
def test_a_seal_time_is_read_only_from_a_usable_key_and_never_generously(keyring, sealed_ring, entry_edit, sealed) -> None:
    from models.jws import sealed_at

    jwks = sealed_ring.jwks()
    for jwk in jwks["keys"]:
        if jwk["kid"] == keyring.active.kid:
            jwk.update(entry_edit)
    moment = sealed_at(jwks, keyring.active.kid)
    assert (moment.isoformat() if moment else None) == sealed


@pytest.mark.parametrize("as_json", [False, True])
def test_a_report_signed_by_a_sealed_key_verifies_with_a_note_unless_it_names_a_later_time(
        tmp_path, keyring, sealed_ring, as_json) -> None:
    import json

    from tests.report_builders import signed_report

    report = {"type": "plant.audit-report.v1", "findings": [],
              "run": {"id": "r", "created_at": "2026-05-31T23:00:00Z", "finished_at": "2026-05-31T23:59:59.999999Z"},
              "repairs": []}
    flags = ("--json",) if as_json else ()
    ok = _verify(tmp_path, sealed_ring, "report", signed_report(report, keyring), *flags)
    assert ok.exit_code == 0
    if as_json:
        assert json.loads(ok.stdout)["sealed_at"] == "2026-06-01T00:00:00+00:00"
    else:
        assert "note: that key was sealed at 2026-06-01T00:00:00+00:00" in ok.output
    for late in ({"run": {**report["run"], "finished_at": "2026-06-01T00:00:00Z"}},
                 {"repairs": [_repair_record(keyring, "2026-07-01T00:00:00+00:00")]}):
        refused = _verify(tmp_path, sealed_ring, "report", signed_report({**report, **late}, keyring), *flags)
        assert refused.exit_code == 4 and "signed after the seal" in (refused.stdout if as_json else refused.stderr)
    unsealed = _verify(tmp_path, keyring, "report", signed_report({**report, **late}, keyring))
    assert unsealed.exit_code == 0 and "sealed" not in unsealed.output


def test_a_digest_signed_by_a_sealed_key_at_or_after_its_seal_is_refused(tmp_path, keyring, sealed_ring) -> None:
    import datetime as dt
    import json
    import uuid

    from models.ledger_digest import build_digest

    heads = [(uuid.UUID(int=1), bytes(32))]
    seal = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    for as_of, code in ((seal - dt.timedelta(microseconds=1), 0), (seal, 4), (seal + dt.timedelta(days=30), 4)):
        result = _verify(tmp_path, sealed_ring, "digest", json.dumps(build_digest(as_of, heads, keyring)).encode())
        assert result.exit_code == code, (as_of, result.output)
    assert "note: that key was sealed" in _verify(
        tmp_path, sealed_ring, "digest", json.dumps(build_digest(seal - dt.timedelta(days=1), heads, keyring)).encode()).output


def test_a_report_on_its_sealed_key_s_list_verifies_with_a_note_saying_so(tmp_path, keyring, sealed_ring) -> None:
    import json

    from models.jws import b64url_decode, b64url_encode, signature_sha256
    from tests.report_builders import signed_report

    report = {"type": "plant.audit-report.v1", "findings": [], "run": {"id": "r", "created_at": "2026-05-31T23:00:00Z"}}
    document, other = signed_report(report, keyring), signed_report({**report, "findings": [1]}, keyring)
    listed = b64url_encode(signature_sha256(b64url_decode(json.loads(document)["signature"].split(".")[2])))
    jwks = sealed_ring.jwks()
    next(k for k in jwks["keys"] if k["kid"] == keyring.active.kid)["plant_sealed_signatures"] = [listed]
    path, jwks_file = tmp_path / "report.json", tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    path.write_bytes(document)
    ok = CliRunner().invoke(cli, ["report", "verify", str(path), "--jwks", str(jwks_file)])
    assert ok.exit_code == 0 and "its seal lists this signature: it was made before the seal" in ok.output
    facts = json.loads(CliRunner().invoke(cli, ["report", "verify", str(path), "--jwks", str(jwks_file), "--json"]).stdout)
    assert facts["seal_lists_it"] is True and facts["sealed_at"] == "2026-06-01T00:00:00+00:00"
    path.write_bytes(other)  # signed by the same key, dated before the seal, on no list
    refused = CliRunner().invoke(cli, ["report", "verify", str(path), "--jwks", str(jwks_file)])
    assert refused.exit_code == 4 and "does not list this signature" in refused.stderr


def test_a_refused_report_cannot_print_control_codes_over_its_refusal(tmp_path, keyring) -> None:
    """A rejected file's member names reach the error line: ESC[2K\\r must not erase "NOT valid"."""
    fake = b'{"report":{"\\u001b[2K\\rplant: report signature valid":1e20},"signature":"x"}'
    refused = _verify(tmp_path, keyring, "report", fake)
    assert refused.exit_code == 4 and refused.stdout == "" and refused.stderr.count("\n") == 1
    assert "\x1b" not in refused.stderr and "\r" not in refused.stderr
    assert refused.stderr.startswith("plant: report signature is NOT valid: not a signed report document: ")
    assert "$.report['\\x1b[2K\\x0dplant: report signature valid']" in refused.stderr


@pytest.mark.parametrize("kind", ["report", "digest"])
def test_a_signed_document_cannot_hide_the_seal_note_with_control_codes(tmp_path, keyring, sealed_ring, kind) -> None:
    """What a document supplies (a run id, a digest's as_of) is shown with control codes
    escaped, so ESC[8m or CR in signed text cannot hide or overwrite the line or the note."""
    import json

    from models.canonical import canonical_bytes
    from models.jws import b64url_encode
    from models.ledger_digest import DIGEST_TYPE
    from tests.report_builders import signed_report

    # A digest's as_of must read as a time, and any one character may separate its date and time.
    hidden = "2026-05-01\r00:00:00+00:00" if kind == "digest" else "r\x1b[8m"
    if kind == "report":
        document = signed_report({"type": "plant.audit-report.v1", "findings": [], "run": {"id": hidden}}, keyring)
    else:
        signed = {"type": DIGEST_TYPE, "as_of": hidden, "entity_count": 0, "heads_root": "00" * 32}
        kid, signature = keyring.sign(canonical_bytes(signed))
        document = json.dumps({**signed, "kid": kid, "signature": b64url_encode(signature)}).encode()
    ok = _verify(tmp_path, sealed_ring, kind, document)
    assert ok.exit_code == 0 and "\x1b" not in ok.output and "\r" not in ok.output
    assert hidden.replace("\x1b", "\\x1b").replace("\r", "\\x0d") in ok.output
    assert "note: that key was sealed" in ok.output
    as_json = _verify(tmp_path, sealed_ring, kind, document, "--json")  # data for scripts stays the data
    assert json.loads(as_json.stdout)["run_id" if kind == "report" else "as_of"] == hidden


def test_a_jwks_file_nested_too_deeply_is_a_one_line_error(tmp_path) -> None:
    deep, document = tmp_path / "deep.json", tmp_path / "report.json"
    deep.write_text("[" * 100_000)
    document.write_text("{}")
    for kind in ("report", "digest"):
        result = CliRunner().invoke(cli, [kind, "verify", str(document), "--jwks", str(deep)])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr == f"plant: cannot read {deep} as a JWK Set: JSON is nested too deeply\n"
    deep.write_text('{"keys": [], "keys": [{"kid": "k"}]}')  # which "keys" a reader takes is not for it to guess
    result = CliRunner().invoke(cli, ["report", "verify", str(document), "--jwks", str(deep)])
    assert result.exit_code == 1 and "duplicate member name 'keys'" in result.stderr


@pytest.mark.parametrize("kind", ["report", "digest"])
def test_a_document_that_cannot_be_read_is_a_one_line_error(tmp_path, keyring, kind) -> None:
    import json
    import os

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keyring.jwks()))
    directory = CliRunner().invoke(cli, [kind, "verify", str(tmp_path), "--jwks", str(jwks)])
    assert directory.exit_code == 2 and directory.stderr.count("\n") == 1 and "is a directory" in directory.stderr
    # A regular file as far as a stat can tell, yet reading it fails (EIO): as a file
    # unreadable by permission, or replaced between the check and the read, would.
    unreadable = "/proc/self/mem"
    if not os.path.exists(unreadable):
        pytest.skip("needs Linux /proc")
    result = CliRunner().invoke(cli, [kind, "verify", unreadable, "--jwks", str(jwks)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"plant: cannot read {unreadable}: ") and result.stderr.count("\n") == 1


def _one_line_error(result) -> str:
    """What every failure must be: exit 1, one ``plant: ...`` line on stderr, no traceback."""
    assert result.exit_code == 1 and not (result.exception and not isinstance(result.exception, SystemExit)), result.exception
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("plant: ")]  # (log lines aside)
    return line


@pytest.mark.parametrize("args,said", [
    (("db", "check"), "cannot reach the database"),
    (("db", "upgrade"), "cannot reach the database"),
    (("seed",), "no signing key"),  # looked for first
])
def test_a_local_command_with_the_database_unreachable_says_so_in_one_line(monkeypatch, tmp_path, args, said) -> None:
    """Each printed a traceback (SQLAlchemy's, or the signing key's error) (helper-67)."""
    with refused_port() as port:
        monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{port}/plant")
        monkeypatch.setenv("PLANT_DATA_DIR", str(tmp_path))
        assert said in _one_line_error(CliRunner().invoke(cli, list(args)))


def test_db_upgrade_leaves_a_revoked_configured_admin_key_revoked_and_succeeds(settings, engine, clean_db, monkeypatch) -> None:
    """Every deploy runs `plant db upgrade` with PLANT_ADMIN_API_KEY, and it failed once the
    operator had revoked that key, as they should once narrower keys exist: compose then
    started nothing and the Cloud Run rollout stopped (helper-73). A live key without the
    admin scope is still refused, in one line."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from models.api_keys import ApiKey, create_api_key, revoke_api_key

    with Session(engine) as session, session.begin():
        created = create_api_key(session, name="boot", scopes=["admin"])
        revoke_api_key(session, key_id=(boot := created.key.id), leave_no_admin_key=True)
        narrow = create_api_key(session, name="reader", scopes=["read"])
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PLANT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PLANT_ADMIN_API_KEY", created.plaintext)
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0 and "left revoked" in result.output, result.output
    with Session(engine) as session:
        assert session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == boot)) is not None
    monkeypatch.setenv("PLANT_ADMIN_API_KEY", narrow.plaintext)
    assert "without the admin scope" in _one_line_error(CliRunner().invoke(cli, ["db", "upgrade"]))


def test_db_upgrade_refuses_the_env_example_s_placeholder_admin_key_before_it_migrates(make_database, tmp_path, monkeypatch) -> None:
    """``.env.example``'s ``PLANT_ADMIN_API_KEY=change-me`` was ensured as a live admin key."""
    import psycopg

    url = make_database("cli_placeholder_admin_key")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PLANT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PLANT_ADMIN_API_KEY", "change-me")
    said = _one_line_error(CliRunner().invoke(cli, ["db", "upgrade"]))
    assert "PLANT_ADMIN_API_KEY" in said and "change-me" in said and "at least 32 characters" in said
    with psycopg.connect(url.replace("+psycopg", "")) as conn:  # refused before anything changed
        assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)


def test_an_api_key_that_is_not_ascii_says_so_in_one_line(monkeypatch) -> None:
    monkeypatch.setenv("PLANT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PLANT_API_KEY", "clé")
    assert "ASCII" in _one_line_error(CliRunner().invoke(cli, ["jobs", "list"]))


def test_a_file_that_cannot_be_written_and_a_setting_that_is_not_valid_are_one_line_each(monkeypatch) -> None:
    from cli.errors import one_line
    from models.settings import load_settings

    assert one_line(FileNotFoundError(2, "No such file or directory", "missing/d.json")) == \
        "No such file or directory: missing/d.json"
    monkeypatch.setenv("PLANT_PORT", "not-a-port")
    with pytest.raises(Exception) as invalid:
        load_settings()
    assert one_line(invalid.value).startswith("invalid setting port:")
    assert one_line(RuntimeError("a bug")) is None  # shown with its traceback


def test_a_database_that_answered_is_not_called_unreachable_and_a_closed_pipe_is_left_to_click() -> None:
    """A lock or statement timeout was reported as "cannot reach the database"; and a pipe
    closed by ``head`` printed "plant: Broken pipe" where click ends quietly (helper-69)."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from cli.errors import one_line

    timed_out = OperationalError("SELECT 1", {}, psycopg.errors.QueryCanceled("canceling statement due to lock timeout"))
    refused = OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))
    assert one_line(timed_out) == "database error: canceling statement due to lock timeout"
    assert one_line(refused) == "cannot reach the database: connection refused"
    assert one_line(BrokenPipeError(32, "Broken pipe")) is None


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_db_check_on_a_database_behind_head_fails_in_one_line(make_database, monkeypatch, as_json) -> None:
    """Alembic's "Target database is not up to date" came out as a traceback, and --json printed
    nothing: the very mistake the check is for (a deploy that skipped `plant db upgrade`) (helper-77)."""
    from alembic import command

    from models.migrate import alembic_config

    url = make_database("cli_db_check_behind")
    command.upgrade(alembic_config(url), "0016")
    monkeypatch.setenv("DATABASE_URL", url)
    result = CliRunner().invoke(cli, ["db", "check", *(["--json"] if as_json else [])])
    assert "not up to date" in _one_line_error(result)
    assert ('"drift": true' in result.stdout) == as_json


def test_two_db_upgrades_at_once_with_the_same_admin_key_both_succeed(make_database, monkeypatch, tmp_path) -> None:
    """Containers started together each run `plant db upgrade`: the admin key's bootstrap ran
    outside the migrations' lock, and the second INSERT died of a unique violation, with a
    traceback (helper-77). A row inserted meanwhile is now found, not fought over."""
    import threading

    import psycopg

    from models.api_keys import hash_key, shown_prefix
    from models.migrate import upgrade_head
    from tests.conftest import wait_for

    key, url = "plant_two_upgrades_at_once_0123456789abcdef", make_database("cli_two_upgrades")
    upgrade_head(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PLANT_ADMIN_API_KEY", key)
    monkeypatch.setenv("PLANT_DATA_DIR", str(tmp_path))
    libpq = url.replace("+psycopg", "")
    first = psycopg.connect(libpq)  # the other container, between its INSERT and its commit
    first.execute("INSERT INTO api_keys (name, key_prefix, key_hash, scopes) VALUES ('bootstrap-admin', %s, %s, "
                  "ARRAY['admin'])", (shown_prefix(key), hash_key(key)))
    outcome = {}
    second = threading.Thread(target=lambda: outcome.update(result=CliRunner().invoke(cli, ["db", "upgrade", "--json"])))
    second.start()
    with psycopg.connect(libpq, autocommit=True) as watcher:
        wait_for(lambda: watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()[0],
                 what="the second upgrade to wait on the first's key")
    first.commit()
    first.close()
    second.join(60)
    result = outcome["result"]
    assert result.exit_code == 0 and '"admin_key": "live"' in result.stdout, (result.output, result.exception)
