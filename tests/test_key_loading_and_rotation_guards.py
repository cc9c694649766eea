"""How Plant loads and rotates signing keys: a key it would have to guess (several in one PEM, an unreadable file, a retired-keys path that is no directory, a new key over a signed registry) stops it, and a rotation checks for a staged key under its lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cli.dev import ensure_dev_signing_key
from cli.services import ServiceError
from models.errors import SigningKeyError
from models.keys import keyring_from_settings
from models.settings import Settings, load_settings
from models.key_material import generate_ed25519, load_signing_key_pem


def test_the_dev_runner_never_makes_a_new_key_over_a_registry_another_key_signed(
        settings: Settings, committed_steward: Any, write_ctx: Any, tmp_path: Path) -> None:
    missing = tmp_path / "keys" / "active.pem"  # keys/ removed, or PLANT_SIGNING_KEY_FILE misspelt

    with pytest.raises(ServiceError) as refused:
        ensure_dev_signing_key(settings, missing)

    assert write_ctx.keyring.active.kid in str(refused.value) and str(missing) in str(refused.value)
    assert not missing.exists()


def test_the_dev_runner_makes_its_key_on_an_empty_registry_and_keeps_an_existing_one(
        settings: Settings, clean_db: None, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "active.pem"

    ensure_dev_signing_key(settings, path)
    made = load_signing_key_pem(path.read_bytes())
    ensure_dev_signing_key(settings, path)

    assert load_signing_key_pem(path.read_bytes()).kid == made.kid


def test_a_retired_keys_path_that_is_not_a_directory_is_refused_at_start(tmp_path: Path) -> None:
    active = tmp_path / "active.pem"
    active.write_bytes(generate_ed25519().private_pem())
    active.chmod(0o600)
    retired = tmp_path / "retired"
    retired.write_text("a file where the retired keys and their seals should be\n")

    with pytest.raises(SigningKeyError, match="not a directory"):
        keyring_from_settings(load_settings(signing_key_file=active, retired_signing_keys_dir=retired))

    retired.unlink()  # a directory not made yet (no key retired so far) is no retired key, as before
    assert keyring_from_settings(load_settings(signing_key_file=active, retired_signing_keys_dir=retired)).retired == ()


@pytest.mark.parametrize("where", ["PLANT_SIGNING_KEY", "active file", "retired file"])
def test_a_pem_holding_two_keys_is_refused_naming_where_it_came_from(tmp_path: Path, where: str) -> None:
    first, second = generate_ed25519(), generate_ed25519()
    both = first.private_pem() + second.private_pem()  # an old and a new key, or keys gathered into one file
    active, retired = tmp_path / "active.pem", tmp_path / "retired"
    retired.mkdir()
    active.write_bytes(both if where == "active file" else generate_ed25519().private_pem())
    active.chmod(0o600)
    if where == "retired file":
        (retired / "old.pem").write_bytes(first.verifier().public_pem() + second.verifier().public_pem())
    overrides: dict[str, Any] = {"signing_key": both.decode()} if where == "PLANT_SIGNING_KEY" else {}

    with pytest.raises(SigningKeyError, match="2 blocks") as refused:
        keyring_from_settings(load_settings(signing_key_file=active, retired_signing_keys_dir=retired, **overrides))

    named = {"PLANT_SIGNING_KEY": "PLANT_SIGNING_KEY", "active file": str(active), "retired file": str(retired / "old.pem")}
    assert refused.value.detail.startswith(f"{named[where]}: ")


def test_a_key_that_cannot_be_read_is_refused_naming_its_file(tmp_path: Path) -> None:
    active, retired = tmp_path / "active.pem", tmp_path / "retired"
    active.write_bytes(generate_ed25519().private_pem())
    active.chmod(0o600)
    (retired / "broken.pem").mkdir(parents=True)  # read as a key, it raised IsADirectoryError, naming nothing Plant knows
    (retired / "corrupt.next.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")

    with pytest.raises(SigningKeyError, match=r"broken\.pem: cannot be read"):
        keyring_from_settings(load_settings(signing_key_file=active, retired_signing_keys_dir=retired))
    (retired / "broken.pem").rmdir()
    with pytest.raises(SigningKeyError, match=r"corrupt\.next\.pem: not a readable PEM public key"):
        keyring_from_settings(load_settings(signing_key_file=active, retired_signing_keys_dir=retired))


def test_a_one_step_rotation_is_refused_while_a_key_is_staged_under_the_rotation_lock(key_settings: Settings) -> None:
    from models.keys import rotate_signing_key, stage_signing_key, staged_key_path

    before = key_settings.active_signing_key_path.read_bytes()
    staged = stage_signing_key(key_settings, generate_ed25519())

    # The CLI looked for a staged key before taking the lock; a `--stage` racing it got in between.
    with pytest.raises(SigningKeyError, match=f"key {staged} is staged"):
        rotate_signing_key(key_settings, generate_ed25519())

    assert key_settings.active_signing_key_path.read_bytes() == before and staged_key_path(key_settings).is_file()
