"""A retired key's seal file a running process may not read (a directory by its name, a link
loop, a mode its user cannot read) is the file's fault, not a mount's outage: after the window a
seal being written is given, it fails closed naming the file and the errno; and a seal file the
server's own process finds at fault answers 500, not a client's 400."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import models.keys
from models.errors import KeySealFileInvalid, KeySealUnreadable, SigningKeyError
from models.key_material import generate_ed25519
from models.keys import SEAL_SUFFIX, keyring_from_settings, rotate_signing_key
from models.settings import Settings
from tasks.runner import is_transient
from tests.conftest import bearer, wait_for
from tests.test_seal_files_read_half_written_or_unreadable import refused_once_settled, watching
from tests.test_sealed_keys_in_running_processes_and_key_file_modes import own_key_dir
from web import create_app
from web.problems import status_for


def a_directory(path: Path) -> None:
    path.mkdir()


def a_link_loop(path: Path) -> None:
    path.symlink_to(path.name)


@pytest.mark.parametrize(("put", "errno_name"), [(a_directory, "EISDIR"), (a_link_loop, "ELOOP")])
def test_a_seal_file_this_process_may_not_read_fails_closed_after_the_window(
        key_settings: Settings, put: Callable[[Path], None], errno_name: str) -> None:
    """Before, a directory at the seal's path (or a loop, or mode 0600 under another uid) was
    taken for a mount's outage forever: the API answered 503 and jobs retried until their
    attempts ran out, and nothing said the file was at fault."""
    old_kid, _ = rotate_signing_key(key_settings, generate_ed25519())
    retired_dir = key_settings.retired_signing_keys_path
    ring = watching(keyring_from_settings(key_settings), retired_dir, settle_seconds=0.2)
    path = retired_dir / f"{old_kid}{SEAL_SUFFIX}"
    put(path)
    with pytest.raises(KeySealUnreadable):  # within the window: perhaps still being put right (a chmod after the copy)
        ring.seal(old_kid)
    invalid = refused_once_settled(ring, old_kid, KeySealFileInvalid)
    assert str(path) in invalid.detail and errno_name in invalid.detail and old_kid in invalid.detail, invalid.detail
    assert not is_transient(invalid) and isinstance(invalid, SigningKeyError)
    path.unlink() if path.is_symlink() else path.rmdir()  # put right by removing it: unsealed again
    assert ring.seal(old_kid) is None


@pytest.mark.parametrize("put", [a_directory, lambda path: path.write_text("{not json")])
def test_the_api_answers_500_for_a_seal_file_at_fault_and_400_still_for_key_material_handed_in(
        settings: Settings, admin_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        put: Callable[[Path], None]) -> None:
    """Before, a seal file that stayed malformed answered 400 ``signing-key-invalid``: the
    server's own file reported as the client's error."""
    monkeypatch.setattr(models.keys, "SEAL_SETTLE_SECONDS", 0.0)  # the app's ring: no window to wait out
    own = own_key_dir(settings, tmp_path)
    old_kid, _ = rotate_signing_key(own, generate_ed25519())
    client = create_app(own).test_client()
    keys = lambda: client.get("/api/v1/signing-keys", environ_base=bearer(admin_key))  # noqa: E731
    assert keys().status_code == 200
    put(own.retired_signing_keys_path / f"{old_kid}{SEAL_SUFFIX}")
    answer = wait_for(lambda: (answer := keys()).status_code != 200 and answer, timeout=10, what="the seal file to be seen")
    assert answer.status_code == 500, answer.get_json()
    assert answer.mimetype == "application/problem+json" and "Retry-After" not in answer.headers
    problem = answer.get_json()
    assert problem["type"] == "/problems/key-seal-file-invalid" and problem["status"] == 500, problem
    assert old_kid in problem["detail"], problem
    assert status_for(SigningKeyError("not a readable PEM public key")) == 400  # key material handed in: unchanged
