"""A retired key's seal file seen by a running process before it can be read whole (copied in
place, or on a mount failing for a moment): whether the key is sealed cannot be told yet, so a
job retries and the API answers 503; one that stays malformed is still refused."""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import models.keys
from models.chain import history
from models.entities import Agent, Team
from models.errors import KeySealUnreadable, SigningKeyError
from models.key_seals import seal_retired_keys
from models.keys import SEAL_SUFFIX, RetiredSealWatch, keyring_from_settings, rotate_signing_key
from models.key_material import generate_ed25519
from models.registry import WriteContext
from models.seed import seed_registry
from models.settings import Settings
from models.signing import KeyRing
from tasks.runner import is_transient
from tests.conftest import EMBEDDER, wait_for
from tests.stack import ChaosStack
from tests.test_sealed_keys_in_running_processes_and_key_file_modes import own_key_dir


def sealed_then_taken_away(own: Settings, engine: object) -> tuple[str, Path, bytes]:
    """Rotate and seal as an operator would; the seal file is then taken away, for a test to
    put it back its own way: (the retired kid, where its seal goes, the seal's bytes)."""
    old_kid, _ = rotate_signing_key(own, generate_ed25519())
    assert [seal.kid for seal in seal_retired_keys(own, sessionmaker(engine))] == [old_kid]
    path = own.retired_signing_keys_path / f"{old_kid}{SEAL_SUFFIX}"
    whole = path.read_bytes()
    path.unlink()
    return old_kid, path, whole


def watching(ring: KeyRing, retired_dir: Path, **timing: float) -> KeyRing:
    return replace(ring, seal_watch=RetiredSealWatch(retired_dir, recheck_seconds=0, **timing))


def refused_once_settled(ring: KeyRing, kid: str, error: type[SigningKeyError]) -> SigningKeyError:
    """The ``error`` ``ring`` refuses ``kid``'s seal file with once the watch's window has passed:
    until then, "cannot tell yet" (``KeySealUnreadable``)."""
    def refused() -> SigningKeyError | None:
        try:
            ring.seal(kid)
        except KeySealUnreadable:
            return None
        except error as exc:
            return exc
        raise AssertionError(f"{kid}'s seal file was taken as a seal, or as none")

    return wait_for(refused, timeout=10, what=f"{kid}'s seal file to count as at fault")


def test_a_seal_half_written_is_not_known_yet_and_is_taken_once_whole(key_settings: Settings) -> None:
    """Copied in place, a seal file is seen half-written: before, that failed for good
    (``SigningKeyError``: a job FAILED, no retry); now a transient error until it is whole."""
    old_kid, _ = rotate_signing_key(key_settings, generate_ed25519())
    ring = keyring_from_settings(key_settings)
    retired_dir = key_settings.retired_signing_keys_path
    ring = watching(ring, retired_dir)
    path = retired_dir / f"{old_kid}{SEAL_SUFFIX}"
    whole = b'{"as_of":"2026-12-04T00:00:00.000000Z","digest_id":1,"heads_root":"' + b"00" * 32 + b'","kid":"' + \
        old_kid.encode() + b'"}'
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(KeySealUnreadable, match="taken for a seal still being written") as unknown:
        ring.seal(old_kid)
    assert is_transient(unknown.value)  # a job's attempt and an audit chunk are retried, not failed
    with pytest.raises(KeySealUnreadable):
        _ = ring.sealed  # nothing is judged as unsealed meanwhile
    path.write_bytes(whole)
    found = ring.seal(old_kid)
    assert found is not None and found.digest_id == 1 and ring.sealed


def test_a_seal_that_stays_malformed_is_still_refused_until_it_reads_whole(key_settings: Settings) -> None:
    old_kid, _ = rotate_signing_key(key_settings, generate_ed25519())
    retired_dir = key_settings.retired_signing_keys_path
    ring = watching(keyring_from_settings(key_settings), retired_dir, settle_seconds=0.2)
    path = retired_dir / f"{old_kid}{SEAL_SUFFIX}"
    path.write_text("{not json")
    with pytest.raises(KeySealUnreadable):
        ring.seal(old_kid)
    malformed = refused_once_settled(ring, old_kid, SigningKeyError)
    assert "unreadable key seal" in malformed.detail and "since it was first read" in malformed.detail
    assert not is_transient(malformed)
    with pytest.raises(SigningKeyError, match="unreadable key seal"):
        keyring_from_settings(key_settings)  # as a process starting on it refuses to
    path.unlink()  # removed: unsealed, and a malformed file written later is given its time again
    assert ring.seal(old_kid) is None
    path.write_text("{")
    with pytest.raises(KeySealUnreadable):
        ring.seal(old_kid)


def test_a_seal_file_that_cannot_be_read_is_not_known_yet(key_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read failing for the mount (EIO here; ESTALE on a network mount) says so, transiently,
    however long it lasts: the mount's outage, not the file's fault (a file this process may not
    read is: tests/test_seal_files_at_fault_fail_closed.py)."""
    old_kid, _ = rotate_signing_key(key_settings, generate_ed25519())
    retired_dir = key_settings.retired_signing_keys_path
    ring = watching(keyring_from_settings(key_settings), retired_dir, settle_seconds=0)
    path = retired_dir / f"{old_kid}{SEAL_SUFFIX}"
    path.write_text("{}")
    read = models.keys.read_regular_file

    def failing_mount(self: Path) -> bytes:
        if self == path:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        return read(self)

    monkeypatch.setattr(models.keys, "read_regular_file", failing_mount)
    with pytest.raises(KeySealUnreadable, match=f"cannot tell yet whether retired signing key {old_kid} was sealed"):
        ring.seal(old_kid)
    with pytest.raises(KeySealUnreadable, match="Input/output error"):
        ring.seal(old_kid)


def test_while_a_seal_is_written_in_place_the_api_answers_503_and_a_job_is_retried_then_both_take_it(
        settings: Settings, engine: object, admin_key: str, tmp_path: Path) -> None:
    """A worker and an API process started before the seal; the seal file copied in place is
    seen half-written. Before, the API answered 400 ``signing-key-invalid`` (as if the key were
    bad) and a job writing on top of a version the retired key signed FAILED for good; now the
    API answers 503 with ``Retry-After`` and the job's attempt is retried, and both take the
    seal once it is whole."""
    own = own_key_dir(settings, tmp_path)
    with Session(engine) as session, session.begin():  # type: ignore[arg-type]
        seed_registry(session, WriteContext("test", keyring_from_settings(own), EMBEDDER))
        agent = session.scalars(select(Agent).where(Agent.external_key == "agent-001")).one()
        agent_id, team_id = agent.id, session.scalar(
            select(Team.id).where(Team.job_role_id == agent.job_role_id, Team.id != agent.team_id).limit(1))
    old_kid, path, whole = sealed_then_taken_away(own, engine)
    stack = ChaosStack(own, tmp_path, PLANT_JOB_MAX_ATTEMPTS="20")
    try:
        stack.start_worker("unsealed", concurrency=1)  # both load the retired key unsealed
        client = stack.client(admin_key)
        keys = lambda: client.get("/api/v1/signing-keys")  # noqa: E731
        assert keys().status_code == 200
        path.write_bytes(whole[: len(whole) // 2])  # the copy in place, cut short for now
        answer = wait_for(lambda: (answer := keys()).status_code != 200 and answer, timeout=10, what="the seal to be seen")
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "2", answer.get_json()
        assert answer.mimetype == "application/problem+json"
        problem = answer.get_json()
        assert problem["type"] == "/problems/key-seal-unreadable" and old_kid in problem["detail"], problem
        url = client.post(f"/api/v1/agents/{agent_id}/assign-team", json={"team_id": str(team_id)}).headers["Location"]
        retried = wait_for(lambda: (job := client.get(url).get_json())["error"] and job, timeout=30,
                           what="an attempt to meet the half-written seal")
        assert retried["status"] in ("queued", "running"), retried
        assert retried["error"]["type"] == "/problems/transient-error", retried
        assert "KeySealUnreadable" in retried["error"]["detail"], retried
        path.write_bytes(whole)
        done = wait_for(lambda: (job := client.get(url).get_json())["status"] in ("succeeded", "failed") and job,
                        timeout=30, what="the job to finish")
        answer = keys()
    finally:
        stack.stop()
    assert done["status"] == "succeeded", done
    assert answer.status_code == 200, answer.get_json()
    assert next(key for key in answer.get_json()["keys"] if key["kid"] == old_kid).get("plant_sealed_at")
    with Session(engine) as session:  # type: ignore[arg-type]
        head = history(session, entity_id=agent_id)[-1]
        assert head.kid != old_kid and head.kid == keyring_from_settings(own).active.kid
