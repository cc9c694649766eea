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
