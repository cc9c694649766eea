"""The runtime role: the API, the workers and beat connect as a role that owns nothing.

`plant db upgrade` runs as the schema's owner and, given PLANT_RUNTIME_ROLE, grants that role
DML on the schema (models.migrate.grant_runtime_role). These tests migrate a database of
their own as the owner, then run the real API and a real worker process as the runtime
role through certification, full and incremental audits and the digest beat stores and
prunes, and check that the runtime role cannot lift the append-only guards the owner could.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import errors, sql
from sqlalchemy import text
from sqlalchemy.orm import Session

from cli.main import cli
from models.constitution import APPEND_ONLY_TRIGGERS
from models.db_roles import LIFTER_REASONS
from models.audit_close import database_role
from models.db import make_engine
from models.migrate import (
    RUNTIME_MAINTAINED_TABLES,
    RUNTIME_READ_ONLY_TABLES,
    RuntimeRoleRefused,
    grant_runtime_role,
    upgrade_head,
)
from models.settings import Settings, libpq_url, load_settings
from models.key_material import ensure_key_file
from tests.conftest import REPO_ROOT, bearer, child_env, stop_process_group, sweep_recovery, url_with_database, wait_for

RUNTIME = "plant_runtime_test"
MEMBER = "plant_owner_member_test"
DATABASE = "plant_runtime_role_test"
API = "/api/v1"


def _exec(url: str, *statements: str | sql.Composable) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _scalar(url: str, statement: str, params: tuple = ()) -> Any:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return conn.execute(statement, params).fetchone()[0]


def server_version(url: str) -> int:
    return int(_scalar(url, "SHOW server_version_num"))


def as_role(url: str, role: str) -> str:
    """``url`` connecting as ``role`` (the test server trusts local connections)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"


@pytest.fixture(scope="module")
def owner_url(pg_admin_url: str) -> Iterator[str]:
    """A database migrated by the owner, with a login role that owns nothing beside it."""
    _exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', f'CREATE DATABASE "{DATABASE}"',
          f"DROP ROLE IF EXISTS {RUNTIME}", f"DROP ROLE IF EXISTS {MEMBER}", f"CREATE ROLE {RUNTIME} LOGIN")
    url = url_with_database(pg_admin_url, DATABASE)
    upgrade_head(url)
    try:
        yield url
    finally:
        _exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)',
              f"DROP ROLE IF EXISTS {RUNTIME}", f"DROP ROLE IF EXISTS {MEMBER}")


def table_privileges(url: str, role: str) -> dict[str, set[str]]:
    privileges = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return {table: {p for p in privileges
                        if conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, f"public.{table}", p)).fetchone()[0]}
                for table in tables}


def test_the_runtime_role_gets_dml_on_every_table_and_nothing_more(owner_url: str) -> None:
    _exec(owner_url, f"GRANT TRUNCATE, TRIGGER ON entity_versions TO {RUNTIME}",  # earlier, looser grants
          f"GRANT UPDATE ON SEQUENCE audit_findings_id_seq TO {RUNTIME}")
    grant = grant_runtime_role(owner_url, RUNTIME)
    held = table_privileges(owner_url, RUNTIME)
    assert grant.tables == len(held) >= 20
    for table, privileges in held.items():
        expected = {"SELECT"} if table in RUNTIME_READ_ONLY_TABLES else {"SELECT", "INSERT", "UPDATE", "DELETE"}
        assert privileges == expected, table
    maintain = server_version(owner_url) >= 170000  # GRANT MAINTAIN came with PostgreSQL 17
    assert grant.maintain is maintain
    if maintain:
        for table in RUNTIME_MAINTAINED_TABLES:
            assert _scalar(owner_url, "SELECT has_table_privilege(%s, %s, 'MAINTAIN')", (RUNTIME, table))
        assert not _scalar(owner_url, "SELECT has_table_privilege(%s, 'entity_versions', 'MAINTAIN')", (RUNTIME,))
    with psycopg.connect(libpq_url(owner_url), autocommit=True) as conn:
        sequences = conn.execute("SELECT c.oid::regclass::text, has_sequence_privilege(%s, c.oid, 'USAGE'),"
                                 " has_sequence_privilege(%s, c.oid, 'UPDATE') FROM pg_class c"
                                 " WHERE c.relkind = 'S' AND c.relnamespace = 'public'::regnamespace", (RUNTIME, RUNTIME)).fetchall()
        assert sequences and all(usage and not update for _, usage, update in sequences), sequences  # no setval
        assert conn.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE'),"
                            " has_database_privilege(%s, current_database(), 'CREATE')", (RUNTIME, RUNTIME)).fetchone() == (False, False)
    assert grant_runtime_role(owner_url, RUNTIME) == grant  # again after the next upgrade: the same grants


def test_a_role_that_could_lift_the_guards_is_refused_and_granted_nothing(owner_url: str) -> None:
    owner = _scalar(owner_url, "SELECT tableowner FROM pg_tables WHERE tablename = 'entity_versions'")
    _exec(owner_url, f"CREATE ROLE {MEMBER} LOGIN", sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(MEMBER)))
    for role, why in ((owner, "is a superuser|is the role running the migrations"),
                      (MEMBER, "is a member of another role"),
                      ("no_such_role_" + uuid.uuid4().hex[:8], "does not exist")):
        with pytest.raises(RuntimeRoleRefused, match=why):
            grant_runtime_role(owner_url, role)
    assert _scalar(owner_url, "SELECT has_table_privilege(%s, 'jobs', 'INSERT')", (MEMBER,))  # through the owner
    assert not _scalar(owner_url, "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = %s", (MEMBER,))


def test_a_role_whose_group_may_admit_it_to_an_owner_is_refused(owner_url: str) -> None:
    """The shape Cloud SQL could give: a group holding ADMIN OPTION on a table's owner (without
    its privileges: INHERIT and SET off), and a login role in that group, which can then make
    itself a member of the owner and lift the guards."""
    owner, group, member = "plant_table_owner_test", "plant_admins_test", "plant_admitted_test"
    _exec(owner_url, *(f"DROP ROLE IF EXISTS {r}" for r in (member, group)), "DROP TABLE IF EXISTS scratch_owned",
          f"DROP ROLE IF EXISTS {owner}", f"CREATE ROLE {owner}", f"CREATE ROLE {group}", f"CREATE ROLE {member} LOGIN",
          f"GRANT {owner} TO {group} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE", f"GRANT {group} TO {member}",
          "CREATE TABLE scratch_owned (x int)", f"ALTER TABLE scratch_owned OWNER TO {owner}")
    try:
        with pytest.raises(RuntimeRoleRefused, match="is a member of another role"):
            grant_runtime_role(owner_url, member)
        _exec(as_role(owner_url, member), f"GRANT {owner} TO {member}", f"SET ROLE {owner}",
              "ALTER TABLE scratch_owned DISABLE TRIGGER ALL")  # what it could have done
    finally:
        _exec(owner_url, "DROP TABLE IF EXISTS scratch_owned", *(f"DROP ROLE IF EXISTS {r}" for r in (member, group, owner)))


NOT_OWNER = "must be owner|permission denied"


def password_of(url: str, role: str) -> str | None:
    return _scalar(url, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))


def verifies(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (RFC 5802/7677, as PostgreSQL stores it) is ``password``'s."""
    iterations_salt, keys = verifier.removeprefix("SCRAM-SHA-256$").split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest() == base64.b64decode(stored_key)


def test_a_password_creates_the_role_or_sets_its_password_but_never_a_refused_one_s(
        owner_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    created = "plant_runtime_created_test"
    owner = _scalar(owner_url, "SELECT tableowner FROM pg_tables WHERE tablename = 'entity_versions'")
    owner_password = password_of(owner_url, owner)
    sent: list[str] = []
    execute = psycopg.Connection.execute

    def recording(self: psycopg.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(query if isinstance(query, str) else query.as_string(self))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", recording)
    try:
        grant_runtime_role(owner_url, created, password="first-secret")
        first = password_of(owner_url, created)
        assert first and verifies(first, "first-secret") and not verifies(first, "second-secret")
        assert any("SCRAM-SHA-256$" in statement for statement in sent)
        assert not any("secret" in statement for statement in sent), sent  # the server never sees the password
        assert _scalar(owner_url, "SELECT rolcanlogin AND NOT rolsuper AND NOT rolcreaterole AND NOT rolcreatedb"
                                  " FROM pg_roles WHERE rolname = %s", (created,))
        assert _scalar(owner_url, "SELECT has_table_privilege(%s, 'jobs', 'INSERT')", (created,))
        grant_runtime_role(owner_url, created, password="second-secret")  # the .env changed: the role follows
        assert verifies(password_of(owner_url, created), "second-secret")
        assert not any("secret" in statement for statement in sent), sent
        with pytest.raises(RuntimeRoleRefused):
            grant_runtime_role(owner_url, owner, password="taken-over")
        assert password_of(owner_url, owner) == owner_password
    finally:
        _exec(owner_url, sql.SQL("DROP OWNED BY {0}").format(sql.Identifier(created)),
              sql.SQL("DROP ROLE IF EXISTS {0}").format(sql.Identifier(created)))


@pytest.mark.parametrize("statement, refusal", [
    ("ALTER TABLE entity_versions DISABLE TRIGGER ALL", NOT_OWNER),
    ("ALTER TABLE ledger_digests DISABLE TRIGGER ledger_digests_no_update_delete", NOT_OWNER),
    ("DROP TRIGGER entity_versions_no_truncate ON entity_versions", NOT_OWNER),
    ("SET session_replication_role = replica", NOT_OWNER),
    ("TRUNCATE audit_findings", NOT_OWNER),
    ("ALTER TABLE entity_versions OWNER TO CURRENT_USER", NOT_OWNER),
    ("CREATE TRIGGER t BEFORE INSERT ON jobs EXECUTE FUNCTION suppress_redundant_updates_trigger()", NOT_OWNER),
    ("DELETE FROM ledger_digests_v2_began", "append-only: DELETE refused"),  # the guard itself, which stays on
])
def test_the_runtime_role_cannot_lift_the_guards(owner_url: str, statement: str, refusal: str) -> None:
    grant_runtime_role(owner_url, RUNTIME)
    with pytest.raises(errors.InsufficientPrivilege, match=refusal):
        _exec(as_role(owner_url, RUNTIME), statement)
    assert guards_enabled(owner_url) == sum(map(len, APPEND_ONLY_TRIGGERS.values()))
    _exec(owner_url, "ALTER TABLE ledger_digests DISABLE TRIGGER ledger_digests_no_update_delete")  # what the owner can do
    try:
        assert guards_enabled(owner_url) == sum(map(len, APPEND_ONLY_TRIGGERS.values())) - 1
    finally:
        _exec(owner_url, "ALTER TABLE ledger_digests ENABLE ALWAYS TRIGGER ledger_digests_no_update_delete")


def guards_enabled(url: str) -> int:
    """How many of the append-only triggers exist and are enabled ALWAYS."""
    pairs = [(table, name) for table, names in APPEND_ONLY_TRIGGERS.items() for name in names]
    return _scalar(url, "SELECT count(*) FROM unnest(%s::text[], %s::text[]) AS guard(tbl, name)"
                        " JOIN pg_trigger t ON t.tgrelid = to_regclass(guard.tbl) AND t.tgname = guard.name"
                        " WHERE t.tgenabled = 'A'", ([t for t, _ in pairs], [n for _, n in pairs]))


def test_plant_db_upgrade_grants_the_runtime_role_and_refuses_the_owner(owner_url: str) -> None:
    runner = CliRunner()
    done = runner.invoke(cli, ["db", "upgrade", "--json"], env={"DATABASE_URL": owner_url, "PLANT_RUNTIME_ROLE": RUNTIME})
    assert done.exit_code == 0, done.output
    assert f'"role": "{RUNTIME}"' in done.output
    owner = _scalar(owner_url, "SELECT current_user")
    refused = runner.invoke(cli, ["db", "upgrade"], env={"DATABASE_URL": owner_url, "PLANT_RUNTIME_ROLE": owner})
    assert refused.exit_code == 1 and "could lift or get around the append-only guards" in refused.output


@pytest.fixture(scope="module")
def runtime_settings(owner_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    grant_runtime_role(owner_url, RUNTIME)
    data_dir = tmp_path_factory.mktemp("runtime-role")
    ensure_key_file(data_dir / "keys" / "active.pem")
    # A Redis database of its own: the session's worker consumes the same queue names.
    return load_settings(database_url=as_role(owner_url, RUNTIME), redis_url=redis_url.rsplit("/", 1)[0] + "/7",
                         data_dir=data_dir, digest_leaves_kept=2, health_timeout_seconds=2)


@pytest.fixture(scope="module")
def runtime_worker(runtime_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log_path = tmp_path_factory.mktemp("runtime-worker") / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "default,audit,maintenance",
             "-c", "2", "-n", f"runtime-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
             "--loglevel=INFO"],
            cwd=REPO_ROOT, env=child_env(runtime_settings, PLANT_AUDIT_BATCH_SIZE="7", PLANT_AUDIT_CHUNK_ENTITIES="40",
                                         PLANT_DIGEST_LEAVES_KEPT="2"),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from tasks.celery_app import create_celery

    probe = create_celery(runtime_settings)
    try:
        wait_for(lambda: process.poll() is not None or probe.control.ping(timeout=0.5), timeout=60, what="the worker")
        assert process.poll() is None, log_path.read_text()[-3000:]
        yield log_path
    finally:
        stop_process_group(process)


def finished(client: Any, response: Any) -> dict:
    assert response.status_code == 202, response.get_json()
    url = response.headers["Location"]
    return wait_for(lambda: (j := client.get(url, query_string={"wait": 5}).get_json())["status"]
                    in ("succeeded", "failed", "cancelled") and j, timeout=90, what=f"job {url}")


def test_the_api_and_a_worker_run_as_the_runtime_role(owner_url: str, runtime_settings: Settings,
                                                      runtime_worker: Path) -> None:
    from cli.seeding import seed_database
    from models.api_keys import create_api_key
    from tasks.celery_app import create_celery
    from web import create_app

    runtime_url = runtime_settings.database_url
    assert _scalar(runtime_url, "SELECT current_user") == RUNTIME
    seed_database(runtime_settings)  # a registry write as the runtime role: chain, rows, embeddings
    engine = make_engine(runtime_settings)
    try:
        with Session(engine) as session, session.begin():
            key = create_api_key(session, name="runtime-admin", scopes=["admin"]).plaintext
    finally:
        engine.dispose()
    client = create_app(runtime_settings).test_client()
    client.environ_base.update(bearer(key))
    sweep_recovery(runtime_settings)  # beat's recovery sweep, run as the runtime role too
    health = wait_for(lambda: (h := client.get("/health").get_json())["status"] == "ok" and h, timeout=30,
                      what="health ok once the sweep ran")
    assert health["checks"]["database"]["status"] == "up", health

    skills = client.get(f"{API}/genesis/skills", query_string={"page_size": 100}).get_json()["items"]
    skill = next(s for s in skills if s["skill_key"] == "aml-screening")
    certified = finished(client, client.post(f"{API}/genesis/skills/{skill['id']}/certify", json={"notes": "runtime"}))
    assert certified["status"] == "succeeded" and certified["result"]["status"] == "certified", certified

    full = finished(client, client.post(f"{API}/audit/run", json={"verify_signatures": "all"}))
    assert full["status"] == "succeeded", full
    summary = full["result"]
    assert summary["non_compliant"] == 0 and summary["total_entities"] >= 90, summary
    assert summary["by_code"] == {"rule-warning": 6}, summary  # TEAM-01: the seeded teams are empty
    assert summary["database_role"] == {"name": RUNTIME, "can_lift_guards": False}, summary
    page = client.get(f"{API}/audit/runs/{summary['run_id']}/report.html").get_data(as_text=True)
    assert "(cannot lift the append-only guards)" in page and 'data-flag="guards-liftable"' not in page

    # Beat's digest, three times: each checks the heads against the last, ANALYZEs its rows,
    # and the third prunes the first's leaves (two kept).
    celery = create_celery(runtime_settings)
    for stored in range(1, 4):
        celery.send_task("plant.ledger.store_digest")
        wait_for(lambda n=stored: _scalar(owner_url, "SELECT count(*) FROM ledger_digests") == n,
                 timeout=60, what=f"digest {stored}")
    wait_for(lambda: _scalar(owner_url, "SELECT count(DISTINCT digest_id) FROM ledger_digest_heads") == 2,
             timeout=30, what="the oldest digest's leaves pruned")
    log = runtime_worker.read_text()
    assert "did not analyze" not in log and "permission denied" not in log and "must be owner" not in log
    if server_version(owner_url) >= 170000:
        assert _scalar(owner_url, "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'ledger_digest_heads'")

    incremental = finished(client, client.post(f"{API}/audit/run", json={"since": "latest-digest"}))
    assert incremental["status"] == "succeeded" and incremental["result"]["findings"] == 0, incremental


WHY = dict(zip(("superuser", "owns", "member", "attributes", "privileges", "create", "trigger", "functions"),
               LIFTER_REASONS, strict=True))


@pytest.mark.parametrize("setup, undo, why, named", [
    # A superuser role it may SET ROLE to, though the tables' owner is none.
    (["CREATE ROLE plant_su_test SUPERUSER NOLOGIN", "GRANT plant_su_test TO {role}"], ["DROP ROLE plant_su_test"], WHY["member"], None),
    (["GRANT pg_execute_server_program TO {role}"], [], WHY["member"], None),
    (["GRANT pg_write_server_files TO {role}"], [], WHY["member"], "member of pg_write_server_files"),
    (["ALTER ROLE {role} CREATEROLE"], [], WHY["attributes"], None),
    (["ALTER ROLE {role} BYPASSRLS"], [], WHY["attributes"], None),
    # The database's owner: public belongs to pg_database_owner, whose member may drop any table in it.
    (["ALTER DATABASE {database} OWNER TO {role}"], ["ALTER DATABASE {database} OWNER TO postgres"], WHY["owns"],
     "owns database {database}"),
    (["ALTER SCHEMA public OWNER TO {role}"], ["ALTER SCHEMA public OWNER TO pg_database_owner"], WHY["owns"], None),
    # A function of the schema (a guard's, once replaced, guards nothing).
    (["CREATE FUNCTION public.scratch_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'", "ALTER FUNCTION public.scratch_fn() OWNER TO {role}"],
     ["DROP FUNCTION public.scratch_fn()"], WHY["owns"], "owns function scratch_fn()"),
    # A child of a guarded table in a schema of its own: its rows show through the parent, unguarded.
    (["CREATE SCHEMA plant_other_test", "CREATE TABLE plant_other_test.sneaky () INHERITS (audit_findings)",
      "ALTER TABLE plant_other_test.sneaky OWNER TO {role}"], ["DROP SCHEMA plant_other_test CASCADE"], WHY["owns"], None),
    (["CREATE SCHEMA AUTHORIZATION {role}"], ["DROP SCHEMA {role}"], WHY["owns"], None),
    # Privileges anywhere else: a function writing server files, a parameter, default privileges.
    (["GRANT EXECUTE ON FUNCTION lo_export(oid, text) TO {role}"], [], WHY["privileges"],
     "privileges on function lo_export(oid,text)"),
    (["GRANT SET ON PARAMETER session_replication_role TO {role}"],
     ["REVOKE SET ON PARAMETER session_replication_role FROM {role}"], WHY["privileges"],
     "privileges on parameter session_replication_role"),
    (["ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC"],
     ["ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM PUBLIC"], WHY["privileges"], None),
    # CREATE on the database: a schema named like the role comes first in the search path.
    (["GRANT CREATE ON DATABASE {database} TO {role}"], ["REVOKE CREATE ON DATABASE {database} FROM {role}"], WHY["create"], None),
    (["GRANT CREATE ON SCHEMA public TO PUBLIC"], ["REVOKE CREATE ON SCHEMA public FROM PUBLIC"], WHY["create"], None),
    # TRIGGER from PUBLIC, which the grant's REVOKE cannot take back: a BEFORE trigger may drop findings.
    (["GRANT TRIGGER ON audit_findings TO PUBLIC"], ["REVOKE TRIGGER ON audit_findings FROM PUBLIC"], WHY["trigger"], None),
    (["GRANT EXECUTE ON FUNCTION lo_export(oid, text) TO PUBLIC"],
     ["REVOKE EXECUTE ON FUNCTION lo_export(oid, text) FROM PUBLIC"], WHY["functions"], None),
])
def test_each_way_to_lift_the_guards_is_refused_and_signed_as_such(
        owner_url: str, setup: list[str], undo: list[str], why: str, named: str | None) -> None:
    role, database = "plant_lifter_test", DATABASE
    _exec(owner_url, f"DROP ROLE IF EXISTS {role}", f"CREATE ROLE {role} LOGIN")
    _exec(owner_url, *(statement.format(role=role, database=database) for statement in setup))
    try:
        with pytest.raises(RuntimeRoleRefused) as refused:
            grant_runtime_role(owner_url, role)
        assert why in str(refused.value)
        if named:  # the holding itself, for the operator to revoke
            assert named.format(role=role, database=database) in str(refused.value), str(refused.value)
        assert not _scalar(owner_url, "SELECT has_table_privilege(%s, 'jobs', 'INSERT')", (role,))  # nothing granted
        assert signed_role(as_role(owner_url, role)) == {"name": role, "can_lift_guards": True, "why": why}
    finally:
        _exec(owner_url, *(statement.format(role=role, database=database) for statement in undo),
              f"DROP OWNED BY {role}", f"DROP ROLE {role}")


@pytest.mark.parametrize("privilege, on, held", [
    ("TRUNCATE", "TABLE jobs", "TRUNCATE on jobs"),
    ("REFERENCES", "TABLE jobs", "REFERENCES on jobs"),
    ("INSERT", "TABLE alembic_version", "INSERT on alembic_version"),
    ("UPDATE", "SEQUENCE audit_findings_id_seq", "UPDATE on audit_findings_id_seq"),  # setval
])
def test_privileges_from_public_beyond_the_grants_refuse_the_grant(owner_url: str, privilege: str, on: str, held: str) -> None:
    _exec(owner_url, f"GRANT {privilege} ON {on} TO PUBLIC")
    try:
        with pytest.raises(RuntimeRoleRefused, match=f"would still hold {held} through PUBLIC"):
            grant_runtime_role(owner_url, RUNTIME)
    finally:
        _exec(owner_url, f"REVOKE {privilege} ON {on} FROM PUBLIC")
    grant_runtime_role(owner_url, RUNTIME)


def test_the_summary_judges_the_login_not_only_the_role_it_acts_as(owner_url: str) -> None:
    grant_runtime_role(owner_url, RUNTIME)
    # The owner acting as the runtime role may SET ROLE back.
    assert signed_role(owner_url, f"SET ROLE {RUNTIME}") == {
        "name": "postgres", "acting_as": RUNTIME, "can_lift_guards": True, "why": WHY["superuser"]}
    assert signed_role(as_role(owner_url, RUNTIME)) == {"name": RUNTIME, "can_lift_guards": False}


def signed_role(url: str, *first: str) -> dict[str, Any]:
    """What an audit run's summary signs as ``database_role`` for a process connected by ``url``."""
    engine = make_engine(load_settings(database_url=url))
    try:
        with Session(engine) as session:
            for statement in first:
                session.execute(text(statement))
            return database_role(session)
    finally:
        engine.dispose()


def test_no_role_is_granted_while_the_guards_are_not_the_migrations(owner_url: str) -> None:
    _exec(owner_url, "CREATE RULE swallow AS ON INSERT TO audit_findings DO INSTEAD NOTHING")
    try:
        with pytest.raises(RuntimeRoleRefused, match="guards are not what the migrations made them"):
            grant_runtime_role(owner_url, RUNTIME)
    finally:
        _exec(owner_url, "DROP RULE swallow ON audit_findings")
    grant_runtime_role(owner_url, RUNTIME)


def test_default_privileges_on_functions_for_another_role_do_not_refuse_the_runtime_role(owner_url: str) -> None:
    """Any ALTER DEFAULT PRIVILEGES on functions writes PUBLIC's built-in EXECUTE out (helper-94)."""
    _exec(owner_url, "DROP ROLE IF EXISTS plant_reporting_test", "CREATE ROLE plant_reporting_test",
          "ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO plant_reporting_test")
    try:
        grant_runtime_role(owner_url, RUNTIME)
    finally:
        _exec(owner_url, "ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM plant_reporting_test",
              "DROP ROLE plant_reporting_test")


def test_the_cloud_sql_shape_passes(pg_admin_url: str) -> None:
    """As on Cloud SQL: a group with CREATEROLE and CREATEDB (cloudsqlsuperuser) owns the database,
    a member of it with the same attributes migrates and owns the tables, and creates the runtime
    role with a password; PostgreSQL 16 and later then grant the creator ADMIN on it, a membership
    row naming the runtime role as the role, not as the member."""
    if server_version(pg_admin_url) < 160000:
        pytest.skip("CREATEROLE is confined from PostgreSQL 16 on")
    database, group, owner, runtime = ("plant_cloud_sql_shape_test", "plant_cs_group_test", "plant_cs_owner_test",
                                       "plant_cs_runtime_test")
    _exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
          *(f"DROP ROLE IF EXISTS {role}" for role in (runtime, owner, group)),
          f"CREATE ROLE {group} NOLOGIN CREATEROLE CREATEDB", f"CREATE ROLE {owner} LOGIN CREATEROLE CREATEDB IN ROLE {group}",
          f'CREATE DATABASE "{database}" OWNER {group}')
    admin_url = url_with_database(pg_admin_url, database)
    try:
        _exec(admin_url, "CREATE EXTENSION vector")  # Cloud SQL lets cloudsqlsuperuser do this
        owner_url = as_role(admin_url, owner)
        upgrade_head(owner_url)
        assert _scalar(admin_url, "SELECT tableowner FROM pg_tables WHERE tablename = 'entity_versions'") == owner
        grant_runtime_role(owner_url, runtime, password="generated-by-terraform")
        assert _scalar(admin_url, "SELECT count(*) FROM pg_auth_members WHERE roleid = %s::regrole", (runtime,)) == 1
        assert signed_role(as_role(admin_url, runtime)) == {"name": runtime, "can_lift_guards": False}
        grant_runtime_role(owner_url, runtime, password="rotated")  # the next deploy, a new password
    finally:
        _exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
              *(f"DROP ROLE IF EXISTS {role}" for role in (runtime, owner, group)))
