"""``plant signing-keys rotate``: a new active key, the old one retired, old chains still verify."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from cli.main import cli
from models.chain import verify_entity
from models.embeddings import HashingEmbedder
from models.entities import Agent
from models.keys import keyring_from_settings, rotate_signing_key
from models.registry import WriteContext
from models.seed import bootstrap_steward
from models.settings import Settings, load_settings
from models.signing import ensure_key_file, generate_ed25519, load_signing_key_pem
from models.errors import SigningKeyError


def rotate(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["signing-keys", "rotate", "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "restart" in result.stderr
    return json.loads(result.stdout)


def test_rotation_retires_the_old_key_and_chains_signed_before_still_verify(key_settings: Settings, db_session: Session) -> None:
    old_ring = keyring_from_settings(key_settings)
    steward_id = bootstrap_steward(db_session, WriteContext("test", old_ring, HashingEmbedder()))

    rotated = rotate()

    assert rotated["old_kid"] == old_ring.active.kid and rotated["new_kid"] != rotated["old_kid"]
    retired = key_settings.retired_signing_keys_path / f"{rotated['old_kid']}.pem"
    assert Path(rotated["retired_key_file"]) == retired and b"PRIVATE" not in retired.read_bytes()
    assert stat.S_IMODE(key_settings.active_signing_key_path.stat().st_mode) == 0o600
    new_ring = keyring_from_settings(key_settings)
    assert new_ring.active.kid == rotated["new_kid"]
    steward = db_session.get(Agent, steward_id)
    assert verify_entity(db_session, entity=steward, keyring=new_ring).ok
    assert [k["kid"] for k in new_ring.jwks()["keys"]] == [rotated["new_kid"], rotated["old_kid"]]

    again = rotate("--rsa")
    assert again["old_kid"] == rotated["new_kid"]
    ring = keyring_from_settings(key_settings)
    assert ring.active.algorithm == "PS256" and len(ring.verifiers()) == 3
    assert verify_entity(db_session, entity=steward, keyring=ring).ok


def test_rotation_is_refused_when_the_key_comes_from_the_environment(key_settings: Settings, monkeypatch) -> None:
    monkeypatch.setenv("PLANT_SIGNING_KEY", generate_ed25519().private_pem().decode())
    before = key_settings.active_signing_key_path.read_bytes()
    result = CliRunner().invoke(cli, ["signing-keys", "rotate"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "plant: PLANT_SIGNING_KEY is set: the signing key is managed outside Plant; rotate it there"
    ]
    assert key_settings.active_signing_key_path.read_bytes() == before


def test_rotation_needs_an_active_key_and_a_different_one(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, signing_key=None, signing_key_file=None)
    with pytest.raises(SigningKeyError, match="no active signing key"):
        rotate_signing_key(settings, generate_ed25519())
    current = ensure_key_file(settings.active_signing_key_path)
    with pytest.raises(SigningKeyError, match="already the active key"):
        rotate_signing_key(settings, load_signing_key_pem(current))
    assert not settings.retired_signing_keys_path.exists()


def test_a_staged_rotation_has_no_window_where_a_restarted_process_is_distrusted(
        key_settings: Settings, db_session: Session) -> None:
    """Rotated in one step, a process that restarts before the others signs with a key they
    do not know, and they take its versions for tampering. Staged, every process restarted
    after the stage trusts the next key before any process signs with it."""
    old_kid = keyring_from_settings(key_settings).active.kid
    staged = rotate("--stage")
    upcoming = key_settings.retired_signing_keys_path / f"{staged['staged_kid']}.next.pem"
    assert Path(staged["upcoming_key_file"]) == upcoming and b"PRIVATE" not in upcoming.read_bytes()
    restarted = keyring_from_settings(key_settings)  # every process, restarted after the stage
    assert restarted.active.kid == old_kid and [k.kid for k in restarted.upcoming] == [staged["staged_kid"]]

    promoted = rotate()
    assert (promoted["old_kid"], promoted["new_kid"], promoted["promoted_staged_key"]) == (
        old_kid, staged["staged_kid"], True)
    early = keyring_from_settings(key_settings)  # one process restarts at once: it signs with the new key
    assert early.active.kid == staged["staged_kid"] and early.upcoming == ()
    steward_id = bootstrap_steward(db_session, WriteContext("test", early, HashingEmbedder()))
    steward = db_session.get(Agent, steward_id)
    assert verify_entity(db_session, entity=steward, keyring=restarted).ok  # the others trust what it signed
    assert not upcoming.exists() and not (key_settings.active_signing_key_path.parent / "staged-signing-key.pem").exists()
    assert (key_settings.retired_signing_keys_path / f"{old_kid}.pem").is_file()


def test_staging_again_replaces_the_staged_key_and_a_cut_short_promotion_is_finished(key_settings: Settings) -> None:
    from models.keys import staged_key_path

    first = rotate("--stage")["staged_kid"]
    second = rotate("--stage", "--rsa")["staged_kid"]
    retired = key_settings.retired_signing_keys_path
    assert sorted(p.name for p in retired.glob("*.next.pem")) == [f"{second}.next.pem"] and first != second
    refused = CliRunner().invoke(cli, ["signing-keys", "rotate", "--rsa"])
    assert refused.exit_code == 1 and f"key {second} is staged" in refused.stderr
    # The promotion died after the staged key went active, before its leftovers went:
    key_settings.active_signing_key_path.write_bytes(staged_key_path(key_settings).read_bytes())
    finished = rotate()
    assert finished["old_kid"] == finished["new_kid"] == second
    assert list(retired.glob("*.next.pem")) == [] and not staged_key_path(key_settings).exists()
    assert keyring_from_settings(key_settings).active.kid == second
