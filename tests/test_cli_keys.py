"""``plant signing-keys rotate``: a new active key, the old one retired, old chains still verify."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from cli.main import cli
from models.chain_verification import verify_entity
from models.embeddings import HashingEmbedder
from models.entities import Agent
from models.keys import keyring_from_settings, rotate_signing_key
from models.registry import WriteContext
from models.seed import bootstrap_steward
from models.settings import Settings, load_settings
from models.key_material import ensure_key_file, generate_ed25519, load_signing_key_pem
from models.errors import SigningKeyError


pytestmark = pytest.mark.usefixtures("no_server_log_lines")  # tests/conftest.py: CLI output without server log lines


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
    from models.keys import staged_key_path

    old_kid = keyring_from_settings(key_settings).active.kid
    staged = rotate("--stage")
    upcoming = key_settings.retired_signing_keys_path / f"{staged['staged_kid']}.next.pem"
    assert Path(staged["upcoming_key_file"]) == upcoming and b"PRIVATE" not in upcoming.read_bytes()
    assert stat.S_IMODE(staged_key_path(key_settings).stat().st_mode) == 0o600
    restarted = keyring_from_settings(key_settings)  # every process, restarted after the stage
    assert restarted.active.kid == old_kid and [k.kid for k in restarted.upcoming] == [staged["staged_kid"]]
    assert staged["staged_kid"] not in {k.kid for k in restarted.retired}  # trusted, never sealable
    refused = CliRunner().invoke(cli, ["signing-keys", "rotate"])  # not a fresh one-step rotation by mistake
    assert refused.exit_code == 1 and "rotate --promote" in refused.stderr

    promoted = rotate("--promote")
    assert (promoted["old_kid"], promoted["new_kid"], promoted["promoted_staged_key"]) == (
        old_kid, staged["staged_kid"], True)
    early = keyring_from_settings(key_settings)  # one process restarts at once: it signs with the new key
    assert early.active.kid == staged["staged_kid"] and early.upcoming == ()
    steward_id = bootstrap_steward(db_session, WriteContext("test", early, HashingEmbedder()))
    steward = db_session.get(Agent, steward_id)
    assert verify_entity(db_session, entity=steward, keyring=restarted).ok  # the others trust what it signed
    assert not upcoming.exists() and not staged_key_path(key_settings).exists()
    assert (key_settings.retired_signing_keys_path / f"{old_kid}.pem").is_file()
    assert {k.kid for k in early.retired} == {old_kid}


def test_a_staged_key_is_never_loaded_as_a_key_even_beside_the_retired_ones(tmp_path: Path) -> None:
    """With the retired keys kept beside the active key, a staged private key named *.pem
    would load as a retired key, and sealing would seal it: every process would then refuse
    to start."""
    from models.keys import stage_signing_key

    keys = tmp_path / "keys"
    settings = load_settings(data_dir=tmp_path, signing_key=None, signing_key_file=keys / "active.pem",
                             retired_signing_keys_dir=keys)
    ensure_key_file(settings.active_signing_key_path)
    kid = stage_signing_key(settings, generate_ed25519())
    ring = keyring_from_settings(settings)
    assert [k.kid for k in ring.upcoming] == [kid] and kid not in {k.kid for k in ring.retired}


def test_restaging_never_leaves_the_staged_key_without_its_upcoming_copy(key_settings: Settings, monkeypatch) -> None:
    from models import keys

    first = rotate("--stage")["staged_kid"]
    retired = key_settings.retired_signing_keys_path
    real_replace, writes = keys.replace_file, []

    def disk_full_after_the_upcoming_copy(path, content, **kwargs):
        writes.append(path.name)
        if len(writes) == 2:  # the staged private key's write fails
            raise OSError(28, "No space left on device")
        return real_replace(path, content, **kwargs)

    monkeypatch.setattr(keys, "replace_file", disk_full_after_the_upcoming_copy)
    with pytest.raises(OSError):
        keys.stage_signing_key(key_settings, generate_ed25519())
    monkeypatch.setattr(keys, "replace_file", real_replace)
    assert keys.staged_signing_key(key_settings).kid == first and (retired / f"{first}.next.pem").is_file()
    second = rotate("--stage", "--rsa")["staged_kid"]  # staging again replaces it, once it can
    assert f"{second}.next.pem" in {p.name for p in retired.glob("*.next.pem")}
    assert not (retired / f"{first}.next.pem").exists() and first != second
    assert rotate("--promote")["new_kid"] == second


def test_promotion_is_refused_without_a_staged_key_or_its_upcoming_copy_and_finished_if_cut_short(
        key_settings: Settings) -> None:
    from models import keys

    nothing = CliRunner().invoke(cli, ["signing-keys", "rotate", "--promote"])
    assert nothing.exit_code == 1 and "no staged key to promote" in nothing.stderr
    staged = rotate("--stage")["staged_kid"]
    upcoming = key_settings.retired_signing_keys_path / f"{staged}.next.pem"
    published = upcoming.read_bytes()
    upcoming.unlink()  # its upcoming copy gone: processes restarted since do not trust it
    distrusted = CliRunner().invoke(cli, ["signing-keys", "rotate", "--promote"])
    assert distrusted.exit_code == 1 and "has no upcoming copy" in distrusted.stderr
    upcoming.write_bytes(published)
    old = keyring_from_settings(key_settings).active
    # The promotion died after the staged key went active, before its leftovers went:
    keys._swap_active(key_settings, old, keys.staged_signing_key(key_settings))
    finished = rotate("--promote")
    assert finished["old_kid"] == finished["new_kid"] == staged and finished["retired_key_file"] is None
    assert not upcoming.exists() and not keys.staged_key_path(key_settings).exists()
    ring = keyring_from_settings(key_settings)
    assert ring.active.kid == staged and {k.kid for k in ring.retired} == {old.kid}


def test_signing_keys_list_tells_an_upcoming_key_from_a_retired_or_sealed_one() -> None:
    """The JWKS showed a key staged for the next rotation like a retired one ("verifies"): the
    operator could not tell which key signs next. An upcoming key's entry says so now."""
    from cli.access import _role
    from models.signing import UPCOMING_MEMBER, KeyRing, KeySeal

    active, retired, sealed, upcoming = (generate_ed25519() for _ in range(4))
    seal = KeySeal(kid=sealed.kid, digest_id=1, heads_root="00" * 32, as_of="2026-12-01T00:00:00Z")
    ring = KeyRing(active, (retired.verifier(), sealed.verifier()), (seal,), upcoming=(upcoming.verifier(),))
    keys = ring.jwks()["keys"]
    roles = {k["kid"]: _role(k, active=i == 0) for i, k in enumerate(keys)}
    assert roles == {active.kid: "active", retired.kid: "retired", sealed.kid: "retired, sealed 2026-12-01T00:00:00Z",
                     upcoming.kid: "upcoming"}
    assert [k.get(UPCOMING_MEMBER) for k in keys] == [None, None, None, True]
