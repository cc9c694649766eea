"""Builds the process's signing ``KeyRing`` from settings.

The active key comes from ``PLANT_SIGNING_KEY`` (PEM text) or a PEM file; every ``*.pem``
in the retired-keys directory stays trusted for verifying what it signed. Keys never
come from the database, so someone who can write the database cannot add a key.
"""

from __future__ import annotations

from models.settings import Settings
from models.signing import KeyRing, SigningKeyError, load_keyring


def keyring_from_settings(settings: Settings) -> KeyRing:
    if settings.signing_key is not None:
        active = settings.signing_key.get_secret_value().encode()
    elif settings.active_signing_key_path.is_file():
        active = settings.active_signing_key_path.read_bytes()
    else:
        raise SigningKeyError(
            f"no signing key: set PLANT_SIGNING_KEY or PLANT_SIGNING_KEY_FILE "
            f"(looked for {settings.active_signing_key_path}; `plant dev` generates one)"
        )
    retired_dir = settings.retired_signing_keys_path
    retired = sorted(retired_dir.glob("*.pem")) if retired_dir.is_dir() else []
    return load_keyring([active, *(path.read_bytes() for path in retired)])
