"""Making and reading signing key material: fresh Ed25519 and RSA-4096 keys, PEM text (one
key per block, one block per file or variable), and the dev key file made on first use.

What a key is and does (its ``kid``, signing, verifying, the published JWK) is
:mod:`models.signing`; which keys a process trusts, and rotating their files, :mod:`models.keys`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from models.errors import KeyFileTooOpen, SigningKeyError
from models.regular_files import open_regular_file
from models.signing import MIN_RSA_BITS, SigningKey, VerifyingKey


def generate_ed25519() -> SigningKey:
    return SigningKey.from_private_key(ed25519.Ed25519PrivateKey.generate())


def generate_rsa4096() -> SigningKey:
    return SigningKey.from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS))


def load_signing_key_pem(pem: bytes) -> SigningKey:
    """An unencrypted PEM private key (PKCS#8 or traditional) as a :class:`SigningKey`."""
    _one_pem_block(pem)
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise SigningKeyError("encrypted private keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"not a readable PEM private key: {exc}") from exc
    return SigningKey.from_private_key(private_key)


def load_verifying_key_pem(pem: bytes) -> VerifyingKey:
    """A PEM public key: a retired or upcoming key file (:mod:`models.keys`).

    A private key is refused, never read for its public half: Plant writes only public halves
    there (``rotate``, ``rotate --stage``; the Terraform module refuses a private one), and
    needs no more, since those keys only verify. A private half kept there is the leaked
    copy a seal guards against, in a directory mounted into every process that verifies, so
    no mode of the file would make it safe to keep."""
    _one_pem_block(pem)
    if b"PRIVATE KEY" in pem:
        raise SigningKeyError("holds a private key: a retired or upcoming key file holds the key's public half "
                              "only (Plant never uses the private half there, and whoever can read the file could "
                              "sign as the key); write its public half in its place (`openssl pkey -in FILE -pubout "
                              "-out FILE.pub`, then move that over FILE) and destroy the private copy")
    try:
        public_key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"not a readable PEM public key: {exc}") from exc
    return VerifyingKey.from_public_key(public_key)


_PEM_BEGIN = re.compile(rb"-----BEGIN [^-\r\n]*-----")


def _one_pem_block(pem: bytes) -> None:
    """Refuse PEM text holding more than one block: the loaders read the first and drop the
    rest unsaid, so a key file with an old and a new key (or retired keys gathered into one
    file) would sign with, or trust, whichever came first."""
    blocks = len(_PEM_BEGIN.findall(pem))
    if blocks > 1:
        raise SigningKeyError(f"the PEM holds {blocks} blocks: one key per file (or per PLANT_SIGNING_KEY), "
                              "or which one is meant would be a guess")


OPEN_TO_OTHERS = 0o077  # a private key file's group and other permission bits, which ssh wants clear


def read_private_key_file(path: Path) -> bytes:
    """The bytes of private key file ``path``, refused (``KeyFileTooOpen``) when this process's
    user owns it and left it open to its group or others, as ssh refuses such a key: whoever
    else can read it can sign as Plant. A file another user owns and lets this process read is
    taken as that owner set it (the documented compose deployment bind-mounts the operator's
    0644 file, behind a 0700 directory, into containers running as uid 10001; a Kubernetes
    secret volume's files are root's, 0644 by default), unless its group or anyone may write it:
    then they could put their own key in. (A process running as root owns a root-owned secret:
    for it a 0644 file is refused; give the volume ``defaultMode: 0400``.) Mode and bytes come from one open file, so a file swapped in
    between cannot pass on the other's mode."""
    with open_regular_file(path) as handle:  # a FIFO at the path would hang the open; refused instead
        status = os.fstat(handle.fileno())
        mode, owned = stat.S_IMODE(status.st_mode), status.st_uid == os.geteuid()
        if owned and mode & OPEN_TO_OTHERS or mode & (stat.S_IWGRP | stat.S_IWOTH):
            fix = f"run `chmod 600 {path}`" if owned else "its owner must make it writable by itself alone"
            raise KeyFileTooOpen(f"permissions 0{mode:03o} for private key file {path} are too open: "
                                 f"{'its group or others' if owned else 'its group or anyone'} may read or replace it, and so "
                                 f"sign as Plant; {fix} (a file another user owns, as a mounted secret is, may be "
                                 "readable by others, never writable)")
        return handle.read()


def ensure_key_file(path: Path) -> bytes:
    """The PEM at ``path``, first generating an Ed25519 key there (mode 0600) if it is missing;
    one found open to others is refused (:func:`read_private_key_file`).

    Safe when several processes race: the file appears complete or not at all, and every
    caller gets the one key that won.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _publish_private_file(path, generate_ed25519().private_pem())
    return read_private_key_file(path)


def _publish_private_file(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask must not change the mode we promise
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)  # unlike rename, never replaces a key another process wrote
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the name too: what the key signs must not outlive it after a crash
    finally:
        os.close(directory)
