"""Signing keys as a running process uses them: a key sealed after the process started, and
private key files whose mode lets others read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.chain import history
from models.entities import Agent, Team
from models.key_material import generate_ed25519
from models.key_seals import seal_retired_keys
from models.errors import SigningKeyError, SigningKeySealed
from models.jws import sign_detached
from models.keys import keyring_from_settings, rotate_signing_key, write_seal
from models.registry import WriteContext
from models.seed import bootstrap_steward, seed_registry
from models.settings import Settings, load_settings
from models.signing import KeySeal
from tests.conftest import EMBEDDER, bearer, gunicorn_serving, wait_for
from tests.stack import ChaosStack
from web import create_app


def own_key_dir(settings: Settings, tmp_path: Path) -> Settings:
    """Settings for the shared database with a key directory of their own, as ``plant dev`` makes it."""
    own = load_settings(database_url=settings.database_url, redis_url=settings.redis_url, data_dir=tmp_path / "data")
    own.active_signing_key_path.parent.mkdir(parents=True)
    own.active_signing_key_path.write_bytes(generate_ed25519().private_pem())
    own.active_signing_key_path.chmod(0o600)
    own.retired_signing_keys_path.mkdir()
    return own


def rotate_and_seal(own: Settings, engine: Any) -> str:
    """``plant signing-keys rotate`` then ``seal``, as an operator runs them: the old key's kid."""
    old_kid, _ = rotate_signing_key(own, generate_ed25519())
    assert [seal.kid for seal in seal_retired_keys(own, sessionmaker(engine))] == [old_kid]
    return old_kid


def test_an_api_process_started_before_its_key_was_sealed_signs_nothing_with_it(
        settings: Settings, engine: Any, admin_key: str, tmp_path: Path) -> None:
    """An API process not restarted after a rotation signed with the old key after its seal:
    a version every process started since took for `signed-after-seal` (409 `entity-tampered`
    on the next write, a critical finding in every audit, not restorable), though nothing but
    a missed restart had happened. It now refuses to sign (503 `signing-key-sealed`)."""
    own = own_key_dir(settings, tmp_path)
    with Session(engine) as session, session.begin():
        steward = bootstrap_steward(session, WriteContext("test", keyring_from_settings(own), EMBEDDER))
    with gunicorn_serving(own, tmp_path / "api.log", processes=1, threads=2, metrics_dir=None) as base:
        old_kid = rotate_and_seal(own, engine)  # the operator forgot this process
        answer = requests.patch(f"{base}/api/v1/agents/{steward}", json={"description": "after the seal"},
                                headers={"Authorization": bearer(admin_key)["HTTP_AUTHORIZATION"]}, timeout=30)
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"] == "/problems/signing-key-sealed" and old_kid in answer.json()["detail"]
    assert answer.headers["Retry-After"]
    restarted = create_app(own).test_client()  # a process started since the seal: it signs with the new key
    write = restarted.patch(f"/api/v1/agents/{steward}", json={"description": "after the restart"},
                            environ_base=bearer(admin_key))
    assert write.status_code == 200, write.get_json()  # was 409 entity-tampered: signed-after-seal
    with Session(engine) as session:
        kids = [row.kid for row in history(session, entity_id=steward)]
    assert kids[-1] == keyring_from_settings(own).active.kid and kids.count(old_kid) == len(kids) - 1


def first_attempt_ended(job: dict[str, Any]) -> dict[str, Any] | None:
    return job if job["error"] is not None or job["status"] != "queued" and job["attempts"] and job["status"] != "running" else None


@pytest.mark.e2e
def test_a_worker_started_before_its_key_was_sealed_hands_its_job_to_one_restarted_since(
        settings: Settings, engine: Any, admin_key: str, tmp_path: Path) -> None:
    """A worker still on the sealed key refuses to sign the job's version and hands the job back
    (`signing-key-sealed`, counted as an attempt); a worker started since takes it and signs it
    with the active key. Before, the lagging worker's version was `signed-after-seal`."""
    own = own_key_dir(settings, tmp_path)
    with Session(engine) as session, session.begin():
        seed_registry(session, WriteContext("test", keyring_from_settings(own), EMBEDDER))
        agent = session.scalars(select(Agent).where(Agent.external_key == "agent-001")).one()
        agent_id, team_id = agent.id, session.scalar(
            select(Team.id).where(Team.job_role_id == agent.job_role_id, Team.id != agent.team_id).limit(1))
    stack = ChaosStack(own, tmp_path, PLANT_JOB_MAX_ATTEMPTS="100")
    try:
        stack.start_worker("lagging", concurrency=1)
        old_kid = rotate_and_seal(own, engine)
        client = stack.client(admin_key)
        url = client.post(f"/api/v1/agents/{agent_id}/assign-team", json={"team_id": str(team_id)}).headers["Location"]
        refused = wait_for(lambda: first_attempt_ended(client.get(url).get_json()), what="the lagging worker's attempt")
        assert refused["status"] == "queued" and refused["error"]["type"] == "/problems/signing-key-sealed", refused
        assert old_kid in refused["error"]["detail"]
        stack.kill("lagging")  # the message of its retry, too: beat's sweep republishes the job
        stack.start_worker("restarted", concurrency=1)
        stack.start_beat()
        done = wait_for(lambda: (job := client.get(url).get_json())["status"] in ("succeeded", "failed") and job,
                        timeout=60, what="the job to finish")
    finally:
        stack.stop()
    assert done["status"] == "succeeded", done
    with Session(engine) as session:
        assert history(session, entity_id=agent_id)[-1].kid == keyring_from_settings(own).active.kid


def test_every_signature_by_a_loaded_ring_s_active_key_stops_at_its_seal_and_resumes_without_it(
        settings: Settings, tmp_path: Path) -> None:
    """Chain links and digests (``KeyRing.sign``) and detached JWS (reports: ``keyring.active``)
    alike; a seal file removed (a seal made by mistake) lets the key sign again, as a restart would."""
    own = own_key_dir(settings, tmp_path)
    ring = keyring_from_settings(own)
    assert ring.verify(*ring.sign(b"before"), b"before")
    seal = write_seal(own, KeySeal(ring.active.kid, 1, "00" * 32, "2026-12-04T00:00:00.000000Z"))
    with pytest.raises(SigningKeySealed, match=f"signing key {ring.active.kid} was sealed after this process started"):
        ring.sign(b"after")
    with pytest.raises(SigningKeySealed):
        sign_detached(b"a report", ring.active)
    with pytest.raises(SigningKeyError, match="is sealed"):  # and a process starting now refuses to
        keyring_from_settings(own)
    seal.unlink()
    assert ring.verify(*ring.sign(b"again"), b"again")
