"""A FIFO (named pipe) at the path of a file an operator hands Plant: a retired key's seal, a
retired or upcoming key, the active key, a secret's ``*_FILE``. An ordinary open of one waits
for a writer for good: a process starting on it hung, and so did every request and job that asked
whether the key was sealed. Each is now refused at once, as other files that cannot be read are;
a seal file so at fault fails closed as a directory there does (``key-seal-file-invalid``)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic_settings import SettingsError

import models.keys
from models.errors import KeySealFileInvalid, KeySealUnreadable, SigningKeyError
from models.key_material import ensure_key_file, generate_ed25519, read_private_key_file
from models.keys import SEAL_SUFFIX, keyring_from_settings, rotate_signing_key
from models.regular_files import NotARegularFile, read_regular_file
from models.settings import Settings, load_settings
from tests.conftest import bearer, wait_for
from tests.test_seal_files_read_half_written_or_unreadable import refused_once_settled, watching
from tests.test_sealed_keys_in_running_processes_and_key_file_modes import own_key_dir
from web import create_app

T = TypeVar("T")
HANG_SECONDS = 10.0  # far past what a refusal takes: a call still running then waits on the FIFO


def within_seconds(fifo: Path, call: Callable[[], T]) -> T:
    """``call()``'s outcome, raised or returned, failing the test should it still wait after
    ``HANG_SECONDS`` (on ``fifo``: then opened for writing, which lets the reader go)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_SECONDS)
    if thread.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader's open returns, then reads nothing
        thread.join(HANG_SECONDS)
        pytest.fail(f"still waiting on the FIFO {fifo} after {HANG_SECONDS:.0f} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def a_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_at_once_naming_what_it_is(tmp_path: Path) -> None:
    fifo = a_fifo(tmp_path / "pipe")
    with pytest.raises(NotARegularFile) as raised:
        within_seconds(fifo, lambda: read_regular_file(fifo))
    assert raised.value.errno is None and "FIFO" in str(raised.value) and str(fifo) in str(raised.value)
    with pytest.raises(IsADirectoryError):  # a directory as a read of one always said
        read_regular_file(tmp_path)
    (tmp_path / "file").write_bytes(b"held")
    assert read_regular_file(tmp_path / "file") == b"held"


def test_a_fifo_at_a_seal_s_path_fails_closed_after_the_window_instead_of_hanging(key_settings: Settings) -> None:
    """Before, the running process's seal watch opened it and waited for a writer for good."""
    old_kid, _ = rotate_signing_key(key_settings, generate_ed25519())
    retired_dir = key_settings.retired_signing_keys_path
    ring = watching(keyring_from_settings(key_settings), retired_dir, settle_seconds=0.2)
    path = a_fifo(retired_dir / f"{old_kid}{SEAL_SUFFIX}")
    with pytest.raises(KeySealUnreadable):  # within the window, as a directory there is
        within_seconds(path, lambda: ring.seal(old_kid))
    invalid = within_seconds(path, lambda: refused_once_settled(ring, old_kid, KeySealFileInvalid))
    assert str(path) in invalid.detail and "FIFO" in invalid.detail and old_kid in invalid.detail, invalid.detail
    path.unlink()  # put right by removing it: unsealed again
    assert ring.seal(old_kid) is None


def test_a_process_starting_on_a_fifo_at_a_seal_s_path_refuses_to_start(key_settings: Settings) -> None:
    old_kid, _ = rotate_signing_key(key_settings, generate_ed25519())
    path = a_fifo(key_settings.retired_signing_keys_path / f"{old_kid}{SEAL_SUFFIX}")
    with pytest.raises(SigningKeyError) as raised:
        within_seconds(path, lambda: keyring_from_settings(key_settings))
    assert str(path) in raised.value.detail and "FIFO" in raised.value.detail, raised.value.detail


def test_the_api_answers_500_for_a_fifo_at_a_seal_s_path(settings: Settings, admin_key: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.keys, "SEAL_SETTLE_SECONDS", 0.0)  # the app's ring: no window to wait out
    own = own_key_dir(settings, tmp_path)
    old_kid, _ = rotate_signing_key(own, generate_ed25519())
    client = create_app(own).test_client()
    keys = lambda: client.get("/api/v1/signing-keys", environ_base=bearer(admin_key))  # noqa: E731
    assert keys().status_code == 200
    path = a_fifo(own.retired_signing_keys_path / f"{old_kid}{SEAL_SUFFIX}")
    answer = within_seconds(path, lambda: wait_for(lambda: (answer := keys()).status_code != 200 and answer,
                                                   timeout=5, what="the seal file to be seen"))
    assert answer.status_code == 500, answer.get_json()
    problem = answer.get_json()
    assert problem["type"] == "/problems/key-seal-file-invalid" and old_kid in problem["detail"], problem


@pytest.mark.parametrize("name", ["old.pem", "new.next.pem"])
def test_a_fifo_named_as_a_retired_or_upcoming_key_stops_the_start_naming_it(key_settings: Settings, name: str) -> None:
    key_settings.retired_signing_keys_path.mkdir(parents=True, exist_ok=True)
    path = a_fifo(key_settings.retired_signing_keys_path / name)
    with pytest.raises(SigningKeyError) as raised:
        within_seconds(path, lambda: keyring_from_settings(key_settings))
    assert str(path) in raised.value.detail and "not a regular file" in raised.value.detail, raised.value.detail


def test_a_fifo_as_the_private_key_file_is_refused(tmp_path: Path) -> None:
    path = a_fifo(tmp_path / "active.pem")
    with pytest.raises(NotARegularFile):
        within_seconds(path, lambda: read_private_key_file(path))
    with pytest.raises(NotARegularFile):  # the dev key made on first use: one is there, and is no file
        within_seconds(path, lambda: ensure_key_file(path))


def test_a_fifo_named_by_a_secret_s_file_variable_stops_the_process_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "PLANT_REDIS_URL", "PLANT_REDIS_URL_FILE"):
        monkeypatch.delenv(name, raising=False)
    path = a_fifo(tmp_path / "redis-url")
    monkeypatch.setenv("REDIS_URL_FILE", str(path))
    with pytest.raises(SettingsError) as raised:
        within_seconds(path, load_settings)
    message = str(raised.value)
    assert "REDIS_URL_FILE" in message and str(path) in message and "FIFO" in message, message
