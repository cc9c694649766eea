"""Signing keys as a running process uses them: a key sealed after the process started, and
private key files whose mode lets others read them (refused as ssh refuses such a key)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.chain import history
from models.entities import Agent, EntityType, Team
from models.jobs import Job
from models.key_material import generate_ed25519, load_signing_key_pem
from models.key_seals import seal_retired_keys
from cli.dev import ensure_dev_signing_key
from cli.services import ServiceError
from models.errors import EntityTampered, KeyFileTooOpen, SigningKeyError, SigningKeySealed
from models.jws import sign_detached
from models.keys import (keyring_from_settings, promote_staged_key, rotate_signing_key, stage_signing_key, staged_key_path,
                         write_seal)
from models.registry import WriteContext, update_entity
from models.seed import bootstrap_steward, seed_registry
from models.settings import Settings, load_settings
from models.signing import KeyRing, KeySeal
from tests.conftest import EMBEDDER, bearer, gunicorn_serving, wait_for
from tests.stack import ChaosStack
from tests.test_key_seals import worker_refusing_to_start
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


@pytest.mark.e2e
def test_a_worker_started_before_its_key_was_sealed_hands_its_job_to_one_restarted_since(
        settings: Settings, engine: Any, admin_key: str, tmp_path: Path) -> None:
    """A worker still on the sealed key refuses to sign the job's version, hands the job back
    (`signing-key-sealed`, no attempt counted) and exits 0 by itself, for its supervisor to
    restart it; a worker started since takes the job and signs it with the active key. Before,
    each refusal counted as an attempt and the lagging worker went on taking jobs, failing them
    after PLANT_JOB_MAX_ATTEMPTS refusals (the default here: 5)."""
    own = own_key_dir(settings, tmp_path)
    with Session(engine) as session, session.begin():
        seed_registry(session, WriteContext("test", keyring_from_settings(own), EMBEDDER))
        agent = session.scalars(select(Agent).where(Agent.external_key == "agent-001")).one()
        agent_id, team_id = agent.id, session.scalar(
            select(Team.id).where(Team.job_role_id == agent.job_role_id, Team.id != agent.team_id).limit(1))
    stack = ChaosStack(own, tmp_path)
    try:
        lagging = stack.start_worker("lagging", concurrency=1)
        old_kid = rotate_and_seal(own, engine)
        client = stack.client(admin_key)
        url = client.post(f"/api/v1/agents/{agent_id}/assign-team", json={"team_id": str(team_id)}).headers["Location"]
        wait_for(lambda: lagging.poll() is not None, timeout=60, what="the lagging worker to exit by itself")
        assert lagging.returncode == 0, (tmp_path / "lagging.log").read_text()[-3000:]
        refused = client.get(url).get_json()
        assert refused["status"] == "queued" and refused["error"]["type"] == "/problems/signing-key-sealed", refused
        assert old_kid in refused["error"]["detail"]
        with Session(engine) as session:
            attempts, handbacks = session.execute(select(Job.attempts, Job.handbacks).where(Job.id == job_id(url))).one()
        assert attempts >= 1 and handbacks == attempts, (attempts, handbacks)  # handed back: none counted
        stack.start_worker("restarted", concurrency=1)  # as its supervisor would
        stack.start_beat()
        done = wait_for(lambda: (job := client.get(url).get_json())["status"] in ("succeeded", "failed") and job,
                        timeout=60, what="the job to finish")
    finally:
        stack.stop()
    assert done["status"] == "succeeded", done
    with Session(engine) as session:
        attempts, handbacks = session.execute(select(Job.attempts, Job.handbacks).where(Job.id == job_id(url))).one()
        assert attempts - handbacks == 1, (attempts, handbacks)  # the restarted worker's, which succeeded
        assert history(session, entity_id=agent_id)[-1].kid == keyring_from_settings(own).active.kid


def job_id(url: str) -> uuid.UUID:
    return uuid.UUID(url.rstrip("/").rsplit("/", 1)[-1])


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


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o600, 0o400], ids=lambda mode: f"0{mode:o}")
def test_a_private_key_file_its_owner_left_open_to_others_is_refused_naming_it_and_its_mode(
        tmp_path: Path, mode: int) -> None:
    """As ssh refuses such a key: whoever else can read the file can sign as Plant."""
    active = tmp_path / "active.pem"
    active.write_bytes(generate_ed25519().private_pem())
    active.chmod(mode)
    own = load_settings(signing_key_file=active, retired_signing_keys_dir=tmp_path / "retired")
    if not mode & 0o077:
        assert keyring_from_settings(own).active.kid
        return
    with pytest.raises(KeyFileTooOpen) as refused:
        keyring_from_settings(own)
    assert refused.value.detail.startswith(f"permissions 0{mode:o} for private key file {active} are too open")
    assert f"chmod 600 {active}" in refused.value.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="gives the file to another user")
def test_a_key_file_another_user_owns_and_lets_this_process_read_is_accepted(tmp_path: Path) -> None:
    """The documented compose deployment: the operator's 0644 file, behind a 0700 directory,
    bind-mounted into containers running as uid 10001 (and a Kubernetes secret volume's files
    are root's, 0644). That owner chose the mode; this process cannot change it. Writable by
    its group or anyone, though, it is refused whoever owns it."""
    active = tmp_path / "active.pem"
    active.write_bytes(generate_ed25519().private_pem())
    active.chmod(0o644)
    os.chown(active, 10001, 10001)
    from_another_user = load_settings(signing_key_file=active, retired_signing_keys_dir=tmp_path / "r")
    assert keyring_from_settings(from_another_user).active
    for mode in (0o646, 0o664):  # but anyone, or its group, could put their own key in
        active.chmod(mode)
        with pytest.raises(KeyFileTooOpen, match=f"permissions 0{mode:o} for private key file {active} are too open: "
                                                 "its group or anyone"):
            keyring_from_settings(from_another_user)


def test_the_dev_runner_refuses_an_open_key_file_and_makes_its_own_closed(settings: Settings, tmp_path: Path) -> None:
    made = tmp_path / "made" / "active.pem"
    ensure_dev_signing_key(settings, made)  # an empty registry: a key is made
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and keyring_from_settings(
        load_settings(signing_key_file=made, retired_signing_keys_dir=tmp_path / "r")).active
    made.chmod(0o644)
    with pytest.raises(ServiceError, match=rf"permissions 0644 for private key file {made} are too open"):
        ensure_dev_signing_key(settings, made)


def test_a_staged_key_file_left_open_is_refused_at_promotion(key_settings: Settings) -> None:
    stage_signing_key(key_settings, generate_ed25519())
    staged_key_path(key_settings).chmod(0o644)
    with pytest.raises(KeyFileTooOpen, match=f"0644 for private key file {staged_key_path(key_settings)}"):
        promote_staged_key(key_settings)


def test_a_worker_refuses_to_start_on_a_key_file_others_can_read(settings: Settings, tmp_path: Path) -> None:
    """Workers load their keys as they start (worker.app); the refusal names the file and its mode."""
    key_file = tmp_path / "active.pem"
    key_file.write_bytes(generate_ed25519().private_pem())
    key_file.chmod(0o640)
    output = worker_refusing_to_start(settings, PLANT_SIGNING_KEY_FILE=str(key_file),
                                      PLANT_RETIRED_SIGNING_KEYS_DIR=str(tmp_path / "retired"))
    assert f"permissions 0640 for private key file {key_file}".encode() in output


def test_a_process_started_before_a_retired_key_s_seal_refuses_a_version_the_key_signs_after_it(
        settings: Settings, engine: Any, clean_db: None, tmp_path: Path) -> None:
    own = own_key_dir(settings, tmp_path)
    leaked = KeyRing(load_signing_key_pem(own.active_signing_key_path.read_bytes()))  # the old key, copied somewhere
    with Session(engine) as session, session.begin():
        steward = bootstrap_steward(session, WriteContext("test", leaked, EMBEDDER))
    rotate_signing_key(own, generate_ed25519())
    restarted_on_the_new_key = keyring_from_settings(own)  # the API and workers, restarted before the seal
    assert restarted_on_the_new_key.seal(leaked.active.kid) is None and not restarted_on_the_new_key.sealed
    assert [seal.kid for seal in seal_retired_keys(own, sessionmaker(engine))] == [leaked.active.kid]
    # It looked a moment ago: it looks again within SEAL_RECHECK_SECONDS (a second).
    wait_for(lambda: restarted_on_the_new_key.sealed, timeout=10, what="the running process to see the new seal")
    with Session(engine) as session, session.begin():
        update_entity(session, entity_type=EntityType.AGENT, entity_id=steward, changes={"description": "forged"},
                      ctx=WriteContext("forger", leaked, EMBEDDER))
    for ring in (keyring_from_settings(own), restarted_on_the_new_key):  # a process started since the seal, then the other
        with Session(engine) as session, pytest.raises(EntityTampered, match="signed-after-seal"):
            update_entity(session, entity_type=EntityType.AGENT, entity_id=steward, changes={"description": "on top"},
                          ctx=WriteContext("test", ring, EMBEDDER))
