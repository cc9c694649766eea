"""Builds the process's signing ``KeyRing`` from settings, and rotates the key files.

The active key comes from ``PLANT_SIGNING_KEY`` (PEM text) or a PEM file; every ``*.pem``
in the retired-keys directory stays trusted for verifying what it signed, and a
``<kid>.seal.json`` beside one seals it (:mod:`models.key_seals`). A ``*.next.pem`` there is
an upcoming key: trusted before it signs, so that a rolling rotation's old processes accept
what the new key signs, and never sealed. Keys and seals never
come from the database, so someone who can write the database cannot add or move one. A
private key file its own user left open to others is refused
(:func:`models.key_material.read_private_key_file`), and the active key stops signing once
its seal appears, however long the process has run (:class:`SealWatch`); a retired key's seal
written after the ring was loaded is found within ``SEAL_RECHECK_SECONDS`` (:class:`RetiredSealWatch`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from models.settings import Settings
from models.canonical import aware_time, canonical_bytes, strict_json_loads
from models.signing import KeyRing, KeySeal, SigningKey, VerifyingKey
from models.key_material import load_signing_key_pem, load_verifying_key_pem, read_private_key_file
from models.regular_files import NotARegularFile, read_regular_file
from models.errors import KeyFileTooOpen, KeySealFileInvalid, KeySealUnreadable, SigningKeyError, SigningKeySealed

ROTATION_LOCK = ".rotate.lock"
SEAL_SUFFIX = ".seal.json"
# A seal file's mark that its list holds the key's audit records too; a seal file without it
# (written before) is read as listing none (``KeySeal.lists_audit_records``).
AUDIT_RECORDS_MEMBER = "lists_audit_records"
# A key published before it signs (a rolling rotation's next key): trusted, never sealed.
UPCOMING_SUFFIX = ".next.pem"
T = TypeVar("T")


class _KeyFilesChanged(SigningKeyError):
    """A key file went, or the active key changed, while the key ring was read: a rotation
    running on the same files. Read again; raised as is once the reads are given up."""


# A rotation writes a few small files under its lock: over within milliseconds, so a few short
# waits outlast it; a link whose target is gone (a volume not mounted) stays gone, and is refused.
_READ_ATTEMPTS = 5


def keyring_from_settings(settings: Settings) -> KeyRing:
    """The ring the key files hold, read as one: a ring read while a rotation ran on them
    (``rotate --promote`` swaps the active key, then removes its upcoming copy) could sign with
    the old key and trust neither the new one's copy nor the new file, so it is read again
    until the active key is the same after the retired keys as before them (and none went)."""
    retrying = Retrying(stop=stop_after_attempt(_READ_ATTEMPTS), wait=wait_exponential(multiplier=0.02, max=0.5),
                        retry=retry_if_exception_type(_KeyFilesChanged), reraise=True)
    return retrying(_read_keyring, settings)


def _read_keyring(settings: Settings) -> KeyRing:
    before = _active_pem(settings)
    active = _loaded(_active_source(settings), lambda: load_signing_key_pem(before))
    retired_dir = settings.retired_signing_keys_path
    if (retired_dir.exists() or retired_dir.is_symlink()) and not retired_dir.is_dir():
        # Read as "no retired keys", every chain an old key signed would pass for tampered,
        # and every seal would be gone with them. A link whose target is gone (a volume not
        # mounted) is no directory either, though exists() says there is nothing there.
        raise SigningKeyError(f"the retired signing keys' directory {retired_dir} is not a directory")
    files = sorted(retired_dir.iterdir()) if retired_dir.is_dir() else []
    # A retired or upcoming key file holds a public half (one holding a private key is refused:
    # models.key_material.load_verifying_key_pem); the active key's own file, in a retired-keys
    # directory that is also the active key's, is no retired key, and is read as the active one.
    pems = [path for path in files if path.name.endswith(".pem") and not _is_active_key_file(settings, path)]
    def verifying(path: Path) -> VerifyingKey:
        return _loaded(path, lambda: load_verifying_key_pem(read_regular_file(path)))

    ring = KeyRing(
        replace(active, guard=SealWatch(retired_dir / f"{active.kid}{SEAL_SUFFIX}", active.kid)),
        retired=tuple(verifying(path) for path in pems if not path.name.endswith(UPCOMING_SUFFIX)),
        seals=tuple(load_seal(path) for path in files if path.name.endswith(SEAL_SUFFIX)),
        upcoming=tuple(verifying(path) for path in pems if path.name.endswith(UPCOMING_SUFFIX)),
        seal_watch=RetiredSealWatch(retired_dir),
    )
    if _active_pem(settings) != before:
        raise _KeyFilesChanged(f"{_active_source(settings)}: the active key changed while the key ring was read")
    return ring


@dataclass(frozen=True)
class SealWatch:
    """Stops a process's active key signing once its seal appears beside the retired keys.

    A process loads its ring at start; one still running on the old key when ``plant
    signing-keys seal`` sealed it (a restart missed after a rotation) would go on signing
    versions, digests, audit records and reports that every process started since takes for
    ``signed-after-seal``: writes on top of them refused, audits reporting tampering. So each
    signature first looks for the seal file: one ``stat`` of a name that is normally absent
    (no read, no database: about 3 µs, against some 70 µs for an Ed25519 signature here).
    Where the retired keys arrive on a volume fixed per revision (Cloud Run), a running
    process never sees a later seal: there the rollout must end before the seal."""

    seal_path: Path
    kid: str

    def __call__(self) -> None:
        try:
            os.stat(self.seal_path)
        except (FileNotFoundError, NotADirectoryError):
            return  # not sealed (or the retired keys' directory is gone: nothing seals it there)
        except OSError as exc:  # cannot look: fail closed, as a restart on these files would
            raise SigningKeySealed(f"cannot tell whether signing key {self.kid} was sealed since this process started "
                                   f"({self.seal_path}: {exc.strerror or exc}); nothing was signed") from exc
        raise SigningKeySealed(f"signing key {self.kid} was sealed after this process started ({self.seal_path}): "
                               "what it signed now would be signed-after-seal, so nothing was signed; restart this "
                               "process to sign with the active key")


# How long a retired key found unsealed is taken as unsealed before its seal file is looked
# for again: the window in which a process started before a seal still trusts what the key
# signs after it. A full audit meets a retired key on every version it signed; one look a
# second per key keeps that off its path (measured: 0.2 µs more a version, where a stat a
# version cost 5 µs, against 40-80 µs for the version's Ed25519 check).
SEAL_RECHECK_SECONDS = 1.0
# How long a seal file found but not readable as a seal is taken for one still being written
# (copied in place rather than renamed in; on a network mount, a reader may see a file another
# host is writing short for a few seconds), or one whose mode or type is still being put right
# (written, then chmod'ed), before it counts as malformed. Either way nothing the key signed
# is judged meanwhile.
SEAL_SETTLE_SECONDS = 5.0
# Read errors that are the file's own (its mode, its type, a link loop), not a mount's outage:
# they pass only when someone changes the file, so they get SEAL_SETTLE_SECONDS, not forever.
SEAL_FILE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP, errno.ENXIO, errno.ENAMETOOLONG})


class RetiredSealWatch:
    """Finds the seal of a retired key written after this process loaded its key ring.

    A process started between a rotation and ``plant signing-keys seal`` loaded the retired
    key unsealed; without this it trusted whatever a leaked copy of the key signed after the
    seal until it restarted. :meth:`models.signing.KeyRing.seal` asks here for a retired key
    it holds no seal for: the key's ``<kid>.seal.json`` is looked for (one ``open``) at most
    once every ``SEAL_RECHECK_SECONDS``, and read once found; from then on the key is sealed
    for this process's life (as a seal file is meant to stay: one removed by mistake is
    forgotten at the next restart). Threads share it: at worst two read the same new seal.

    A seal file whose read fails for the mount (EIO, ESTALE) raises ``KeySealUnreadable``
    however long that lasts: whether the key is sealed cannot be told yet, so a job retries
    and the API answers 503. So does one there but not yet a whole seal (being copied in), or
    one this process may not read (``SEAL_FILE_ERRNOS``: its mode, a directory, a link loop; or
    no regular file, such as a FIFO, which is never waited on: ``models.regular_files``),
    for ``settle_seconds`` after it was first found so; then ``KeySealFileInvalid`` (the API's
    500, a job failed), as a restart on these files would refuse to start, until it reads
    whole (or is removed)."""

    def __init__(self, retired_dir: Path, recheck_seconds: float = SEAL_RECHECK_SECONDS,
                 settle_seconds: float | None = None) -> None:
        self._retired_dir = retired_dir
        self._recheck_seconds = recheck_seconds
        self._settle_seconds = SEAL_SETTLE_SECONDS if settle_seconds is None else settle_seconds
        self._found: dict[str, KeySeal] = {}
        self._unsealed_until: dict[str, float] = {}  # monotonic time until which a key is taken as unsealed
        self._faulty_since: dict[str, float] = {}  # monotonic time a key's seal file was first found malformed or unreadable

    def __call__(self, kid: str) -> KeySeal | None:
        if (seal := self._found.get(kid)) is not None:
            return seal
        now = time.monotonic()
        if now < self._unsealed_until.get(kid, 0.0):
            return None
        path = self._retired_dir / f"{kid}{SEAL_SUFFIX}"
        try:
            content = read_regular_file(path)  # a FIFO there must not hang every check of the key
        except (FileNotFoundError, NotADirectoryError):  # not sealed (or removed again before it was read)
            self._faulty_since.pop(kid, None)
            self._unsealed_until[kid] = now + self._recheck_seconds
            return None
        except OSError as exc:
            cause = f"{path}: {exc.strerror or exc}"
            if exc.errno in SEAL_FILE_ERRNOS or isinstance(exc, NotARegularFile):
                code = f", {errno.errorcode[exc.errno]}" if exc.errno in SEAL_FILE_ERRNOS else ""
                self._settling(kid, now, f"retired signing key {kid}'s seal file cannot be read ({cause}{code}): "
                               "it must be a regular file this process's user can read", exc)
            raise KeySealUnreadable(f"cannot tell yet whether retired signing key {kid} was sealed since this process "
                                    f"started ({cause}); nothing it signed was judged") from exc
        self._found[kid] = self._whole(kid, path, content, now)
        return self._found[kid]

    def _whole(self, kid: str, path: Path, content: bytes, now: float) -> KeySeal:
        try:
            seal = parse_seal(path, content)
        except SigningKeyError as exc:
            self._settling(kid, now, exc.detail, exc)
            raise KeySealUnreadable(f"{exc.detail}: taken for a seal still being written (write a seal file "
                                    "elsewhere and rename it into place); nothing the key signed was judged") from exc
        self._faulty_since.pop(kid, None)
        return seal

    def _settling(self, kid: str, now: float, fault: str, cause: Exception) -> None:
        """Raise ``KeySealFileInvalid`` (``fault``) once kid's seal file has been found faulty
        for ``settle_seconds``; before, return, for the caller to say it is not known yet."""
        since = self._faulty_since.setdefault(kid, now)
        if now - since >= self._settle_seconds:
            raise KeySealFileInvalid(f"{fault} (so since it was first read, {now - since:.1f} s ago)") from cause


def _is_active_key_file(settings: Settings, path: Path) -> bool:
    return settings.signing_key is None and path.resolve() == settings.active_signing_key_path.resolve()


def _active_source(settings: Settings) -> Path | str:
    return "PLANT_SIGNING_KEY" if settings.signing_key is not None else settings.active_signing_key_path


def _active_pem(settings: Settings) -> bytes:
    if settings.signing_key is not None:
        return settings.signing_key.get_secret_value().encode()
    path = settings.active_signing_key_path
    if not path.is_file():
        raise SigningKeyError(
            f"no signing key: set PLANT_SIGNING_KEY or PLANT_SIGNING_KEY_FILE "
            f"(looked for {path}; `plant dev` generates one)"
        )
    return _loaded(path, lambda: read_private_key_file(path))


def _loaded(source: Path | str, load: Callable[[], T]) -> T:
    """``load()``, its failure naming ``source`` (the file, or the variable), so that a
    process that refuses to start says which of its keys is at fault."""
    try:
        return load()
    except KeyFileTooOpen:
        raise  # it names the file already
    except SigningKeyError as exc:
        raise SigningKeyError(f"{source}: {exc.detail}") from exc
    except FileNotFoundError as exc:  # listed, then gone: a rotation replaced it (or a link's target is gone)
        raise _KeyFilesChanged(f"{source}: cannot be read: it is gone (removed while the keys were read, "
                               "or a link whose target is gone)") from exc
    except OSError as exc:  # unreadable: permissions, a directory named *.pem
        raise SigningKeyError(f"{source}: cannot be read: {exc.strerror or exc}") from exc


def load_seal(path: Path) -> KeySeal:
    """A retired key's seal file (``<kid>.seal.json``, written by ``plant signing-keys seal``)."""
    try:
        content = read_regular_file(path)  # a FIFO there would hang the process's start
    except OSError as exc:
        raise SigningKeyError(f"unreadable key seal {path}: {exc}") from exc
    return parse_seal(path, content)


def parse_seal(path: Path, content: bytes) -> KeySeal:
    """The seal ``content`` read from ``path`` holds; ``SigningKeyError`` if it is not one."""
    try:
        document = strict_json_loads(content)
        seal = KeySeal(kid=document["kid"], digest_id=document["digest_id"], heads_root=document["heads_root"],
                       as_of=document["as_of"], deleted=tuple((d["entity_id"], d["head"]) for d in document.get("deleted", [])),
                       signed_count=document.get("signed_count"), signed_root=document.get("signed_root"),
                       tombstones_root=document.get("tombstones_root"),
                       lists_audit_records=document.get(AUDIT_RECORDS_MEMBER, False))
    except (ValueError, KeyError, TypeError) as exc:
        raise SigningKeyError(f"unreadable key seal {path}: {exc}") from exc
    if not (isinstance(seal.kid, str) and isinstance(seal.digest_id, int) and isinstance(seal.heads_root, str)
            and aware_time(seal.as_of) is not None  # what the key's digests are compared with (signed_after_seal)
            and all(isinstance(i, str) and isinstance(h, str) for i, h in seal.deleted)
            and (seal.tombstones_root is None or (isinstance(seal.tombstones_root, str) and not seal.deleted))
            and ((seal.signed_count, seal.signed_root) == (None, None)
                 or (type(seal.signed_count) is int and isinstance(seal.signed_root, str)))
            and type(seal.lists_audit_records) is bool and (seal.lists or not seal.lists_audit_records)
            and path.name == f"{seal.kid}{SEAL_SUFFIX}"):
        raise SigningKeyError(f"malformed key seal {path}")
    return seal


def write_seal(settings: Settings, seal: KeySeal) -> Path:
    """Write ``seal`` beside its retired key, atomically (mode 0644: it holds no secret)."""
    path = settings.retired_signing_keys_path / f"{seal.kid}{SEAL_SUFFIX}"
    held = ({"tombstones_root": seal.tombstones_root} if seal.tombstones_root is not None else
            {"deleted": [{"entity_id": entity_id, "head": head} for entity_id, head in seal.deleted]})
    document = {"kid": seal.kid, "digest_id": seal.digest_id, "heads_root": seal.heads_root, "as_of": seal.as_of, **held,
                **({"signed_count": seal.signed_count, "signed_root": seal.signed_root} if seal.lists else {}),
                **({AUDIT_RECORDS_MEMBER: True} if seal.attests_audit_records else {})}
    replace_file(path, canonical_bytes(document), mode=0o644)
    return path


def staged_key_path(settings: Settings) -> Path:
    """Where ``plant signing-keys rotate --stage`` keeps the next key's private half, beside
    the active key (its public half goes to the retired-keys directory as upcoming). Not a
    ``*.pem`` name, so no key ring ever loads it, wherever the retired keys live."""
    return settings.active_signing_key_path.with_name("staged-signing-key.private")


def stage_signing_key(settings: Settings, new_key: SigningKey) -> str:
    """The first half of a rotation that survives a process restarting early: publish
    ``new_key`` as an upcoming key (``<kid>.next.pem``, trusted before it signs) and keep its
    private half beside the active key. Once every process has restarted (and so trusts it),
    :func:`promote_staged_key` makes it active. Returns its kid; staging again replaces it.
    The new upcoming file is written first and the replaced one removed last, so a crash
    never leaves a staged key without its upcoming copy."""
    active_path = _rotatable(settings)
    with key_files_lock(settings):
        active = load_signing_key_pem(read_private_key_file(active_path))
        retired_dir = settings.retired_signing_keys_path
        if active.kid == new_key.kid or (retired_dir / f"{new_key.kid}.pem").exists():
            raise SigningKeyError(f"key {new_key.kid} has signed already (it is the active or a retired key)")
        retired_dir.mkdir(parents=True, exist_ok=True)
        replaced = staged_signing_key(settings)
        replace_file(retired_dir / f"{new_key.kid}{UPCOMING_SUFFIX}", new_key.verifier().public_pem(), mode=0o644)
        replace_file(staged_key_path(settings), new_key.private_pem(), mode=0o600)
        if replaced is not None and replaced.kid != new_key.kid:
            (retired_dir / f"{replaced.kid}{UPCOMING_SUFFIX}").unlink(missing_ok=True)
    return new_key.kid


def staged_signing_key(settings: Settings) -> SigningKey | None:
    staged = staged_key_path(settings)
    return load_signing_key_pem(read_private_key_file(staged)) if staged.is_file() else None


def promote_staged_key(settings: Settings) -> tuple[str, str]:
    """Make the staged key active (:func:`rotate_signing_key`); return ``(old kid, new kid)``,
    equal when a promotion cut short had made it active already (its leftovers go now).
    Refused when nothing is staged, or when its upcoming copy is gone: processes restarted
    since would not trust it."""
    _rotatable(settings)
    with key_files_lock(settings):
        staged = staged_signing_key(settings)
        if staged is None:
            raise SigningKeyError("no staged key to promote (`plant signing-keys rotate --stage` stages one)")
        upcoming = settings.retired_signing_keys_path / f"{staged.kid}{UPCOMING_SUFFIX}"
        active = load_signing_key_pem(read_private_key_file(settings.active_signing_key_path))
        if active.kid != staged.kid and not upcoming.is_file():
            raise SigningKeyError(f"staged key {staged.kid} has no upcoming copy ({upcoming}), so processes do not "
                                  "trust it: stage a new key and restart every process before promoting it")
        if active.kid != staged.kid:
            _swap_active(settings, active, staged)
        upcoming.unlink(missing_ok=True)  # active now: no longer upcoming, and no private copy beside it
        staged_key_path(settings).unlink()
    return active.kid, staged.kid


def _rotatable(settings: Settings) -> Path:
    if settings.signing_key is not None:
        raise SigningKeyError("PLANT_SIGNING_KEY is set: the signing key is managed outside Plant; rotate it there")
    active_path = settings.active_signing_key_path
    if not active_path.is_file():
        raise SigningKeyError(f"no active signing key at {active_path} to rotate (`plant dev` generates one)")
    return active_path


def _swap_active(settings: Settings, old_key: SigningKey, new_key: SigningKey) -> None:
    """The old key's public half into the retired keys first, then the new key active."""
    retired_dir = settings.retired_signing_keys_path
    retired_dir.mkdir(parents=True, exist_ok=True)
    replace_file(retired_dir / f"{old_key.kid}.pem", old_key.verifier().public_pem(), mode=0o644)
    replace_file(settings.active_signing_key_path, new_key.private_pem(), mode=0o600)


def rotate_signing_key(settings: Settings, new_key: SigningKey) -> tuple[str, str]:
    """Make ``new_key`` the active key file; return ``(old kid, new kid)``.

    The old key's public half is written to ``<retired dir>/<old kid>.pem`` first, then the
    new private key replaces the active file (mode 0600). Both writes are atomic renames,
    in that order, so a crash at any point leaves the old key trusted and never loses it;
    the retired copy holds no private key, so nothing can sign as the old key any more.
    Running processes keep the ring they loaded until they restart. Concurrent rotations
    of one key directory are serialized by a lock file next to the active key.

    Raises ``SigningKeyError`` when ``PLANT_SIGNING_KEY`` supplies the key (it is managed
    outside Plant), when there is no active key file, when ``new_key`` is the active key, or
    while a key is staged (checked under the lock, so a ``--stage`` racing this cannot slip
    in between): its promotion would then retire ``new_key`` at once.
    """
    active_path = _rotatable(settings)
    with key_files_lock(settings):
        if (staged := staged_signing_key(settings)) is not None:
            raise SigningKeyError(f"key {staged.kid} is staged: `rotate --promote` makes it active once every process "
                                  "has restarted (`rotate --stage` again replaces it)")
        old_key = load_signing_key_pem(read_private_key_file(active_path))
        if old_key.kid == new_key.kid:
            raise SigningKeyError(f"key {new_key.kid} is already the active key")
        _swap_active(settings, old_key, new_key)
    return old_key.kid, new_key.kid


def key_files_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Serializes rotations and seals of one key directory (a lock file next to the active key)."""
    return _exclusive(settings.active_signing_key_path.parent / ROTATION_LOCK)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)) as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def replace_file(path: Path, content: bytes, *, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Write ``content`` to ``path`` all at once: readers see the old file or the new, never
    half, and a crash or a full disk leaves the old one whole (keys, seals, evidence files).
    ``owner`` (uid, gid), when given, owns the new file from before it takes the name."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # whatever the umask says
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
