"""Re-review of the API changes of the idempotent creates and the auth hardening."""

import threading

API = "/api/v1"


def test_two_keyed_skill_creates_deriving_one_skill_key_at_once_both_land_and_replay(
        app, admin_key, committed_steward, monkeypatch) -> None:
    """The create whose derived skill_key another took meanwhile retries inside
    ``create_entity`` (a savepoint rolled back, a second INSERT): with an Idempotency-Key, the
    second INSERT reuses the id derived from the key row."""
    from tests.conftest import bearer
    import models.skill_keys as skill_keys

    both_looked = threading.Barrier(2, timeout=10)
    taken = skill_keys.skill_key_taken
    looks = iter(range(2))

    def look_then_wait(session, key):
        answer = taken(session, key)
        if next(looks, None) is not None:
            both_looked.wait()
        return answer

    monkeypatch.setattr(skill_keys, "skill_key_taken", look_then_wait)
    results: dict[str, tuple[int, str]] = {}

    def body(name):
        return {"name": name, "category": "technical", "description": f"{name} programming",
                "governance_agent_id": str(committed_steward)}

    def create(name: str) -> None:
        response = app.test_client().post(f"{API}/genesis/skills", environ_base=bearer(admin_key), json=body(name),
                                          headers={"Idempotency-Key": f"k-{name}"})
        results[name] = (response.status_code, (response.get_json() or {}).get("id"))

    threads = [threading.Thread(target=create, args=(name,)) for name in ("C++", "C#")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {n: s for n, (s, _) in results.items()} == {"C++": 201, "C#": 201}, results
    monkeypatch.undo()
    for name in ("C++", "C#"):
        replay = app.test_client().post(f"{API}/genesis/skills", environ_base=bearer(admin_key), json=body(name),
                                        headers={"Idempotency-Key": f"k-{name}"})
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.get_json()["id"] == results[name][1]


def test_a_configured_key_an_earlier_release_took_with_a_space_is_refused_saying_how_to_upgrade(db_session) -> None:
    """An earlier release read ``Bearer a b`` as the key "a b": a configured admin key with a
    space worked, and the upgrade now refuses it. The refusal says the way past (a new key,
    which revokes it as a rotation does), and that way works."""
    import pytest
    from sqlalchemy import select

    from models.api_keys import ApiKey, create_api_key, ensure_admin_key, generate_plaintext
    from models.errors import InvalidInput

    spaced = "plant_a passphrase an operator chose " + "x" * 8
    old = create_api_key(db_session, name="bootstrap-admin", scopes=["admin"], plaintext=spaced).key  # as ensured then
    with pytest.raises(InvalidInput, match="configuring a new key with the upgrade") as refused:
        ensure_admin_key(db_session, plaintext=spaced)
    assert spaced not in refused.value.detail
    assert ensure_admin_key(db_session, plaintext=generate_plaintext()) == "created"
    assert db_session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == old.id)) is not None


def test_db_upgrade_does_not_call_an_expired_configured_admin_key_live(settings, engine, clean_db, monkeypatch) -> None:
    """An expiring API key configured as PLANT_ADMIN_API_KEY was ``live`` past its expiry:
    ``plant db upgrade`` said "is a live admin key" (and ``plant dev`` printed it as the key to
    use) while every request sending it got 401. It is left as it is, as a revoked one is, and
    the deploy goes on saying so."""
    from click.testing import CliRunner
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from cli.main import cli
    from models.api_keys import create_api_key

    with Session(engine) as session, session.begin():
        issued = create_api_key(session, name="ops-admin", scopes=["admin"], expires_in_days=1)
        session.execute(text("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :id"),
                        {"id": issued.key.id})
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PLANT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PLANT_ADMIN_API_KEY", issued.plaintext)
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0 and "has expired" in result.output and "live" not in result.output, result.output
    as_json = CliRunner().invoke(cli, ["db", "upgrade", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert '"admin_key": "expired"' in as_json.output and '"admin_key_ensured": false' in as_json.output


def test_a_keyed_create_whose_attributes_hold_a_lone_surrogate_is_422_naming_it_not_500(client, committed_steward) -> None:
    """JSON's "\\ud800" is a str no UTF-8 encodes: the create's fingerprint encoded it before the
    create could refuse it (422 not-canonicalizable, as it does without the header), so with
    Idempotency-Key it was a 500. The key is left free."""
    body = ('{"name": "Surrogate", "code": "SRG", "description": "d", "attributes": {"x": "a\\ud800"}, '
            f'"governance_agent_id": "{committed_steward}"}}')
    response = client.post(f"{API}/genesis/industries", data=body, content_type="application/json",
                           headers={"Idempotency-Key": "k-surrogate"})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["type"] == "/problems/not-canonicalizable"
    assert response.get_json()["field"] == "$.attributes.x"
    fixed = client.post(f"{API}/genesis/industries", headers={"Idempotency-Key": "k-surrogate"}, json={
        "name": "Surrogate", "code": "SRG", "description": "d", "governance_agent_id": str(committed_steward)})
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed.headers


def test_plant_dev_refuses_an_expired_configured_admin_key(settings, engine, clean_db, tmp_path) -> None:
    """It printed "admin API key: the one PLANT_ADMIN_API_KEY holds" for a key past its expiry,
    which every request got 401 with (as for a revoked one, helper-75)."""
    import pytest
    from pydantic import SecretStr
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from cli.bootstrap import ensure_dev_admin
    from models.api_keys import create_api_key
    from models.errors import InvalidInput

    with Session(engine) as session, session.begin():
        issued = create_api_key(session, name="ops-admin", scopes=["admin"], expires_in_days=1)
        session.execute(text("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :id"),
                        {"id": issued.key.id})
    configured = settings.model_copy(update={"admin_api_key": SecretStr(issued.plaintext)})
    with pytest.raises(InvalidInput, match="has expired"):
        ensure_dev_admin(configured, tmp_path)
