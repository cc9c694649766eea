"""Domain exceptions: one place, no HTTP.

Each exception carries a stable ``code`` slug and a human ``title``; ``web`` maps the
classes to HTTP status codes and RFC 9457 problem documents, and workers store the same
shape in a failed job's ``error`` column via :meth:`PlantError.problem`.
"""

from __future__ import annotations

import errno
from typing import Any

PROBLEM_TYPE_PREFIX = "/problems/"
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})  # RFC 9457 §3.1


class PlantError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "plant-error"
    title = "Plant error"
    retry_after_seconds: int | None = None  # sent as Retry-After: the error passes if the client waits

    def __init__(self, detail: str = "", **extensions: Any) -> None:
        reserved = PROBLEM_MEMBERS.intersection(extensions)
        if reserved:  # an extension would overwrite a member RFC 9457 defines (a string "status", say)
            raise TypeError(f"problem extensions may not be named {sorted(reserved)}")
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions

    def problem(self, status: int | None = None) -> dict[str, Any]:
        """The RFC 9457 problem object for this error (``status`` added when known)."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "detail": self.detail,
            **self.extensions,
        }
        if status is not None:
            body["status"] = status
        return body


class NotFound(PlantError):
    code = "not-found"
    title = "Not found"


class InvalidInput(PlantError):
    code = "invalid-input"
    title = "Invalid input"


class Conflict(PlantError):
    code = "conflict"
    title = "Conflict"


class LastAdminKey(Conflict):
    """Revoking this key would leave no live admin key, and nothing to manage keys with."""

    code = "last-admin-key"
    title = "The last live admin key cannot be revoked"


class EntityReferenced(Conflict):
    """A deletion of an entity that live entities still name (``models.reference_guards``)."""

    code = "entity-referenced"
    title = "The entity is named by live entities"


class EntityDeleted(Conflict):
    """A write to a soft-deleted entity: its chain ends at the signed deletion, and Plant has no
    undelete (an entity a digest keeps a tombstone for is never live again)."""

    code = "entity-deleted"
    title = "The entity is deleted and takes no change"


class JobNotCancellable(Conflict):
    code = "job-not-cancellable"
    title = "Job is already finished"


class JobCancelled(PlantError):
    """Raised inside a running job at a checkpoint after a cancel was requested."""

    code = "job-cancelled"
    title = "Job cancelled"


class StaleAttempt(PlantError):
    """A write from an attempt that no longer owns the job (fencing token mismatch)."""

    code = "stale-attempt"
    title = "Stale job attempt"


class RunClosed(PlantError):
    """An audit run was found finished while its job's attempt still worked on it."""

    code = "audit-run-closed"
    title = "The audit run was closed outside its job"


class JobTimedOut(PlantError):
    code = "job-timed-out"
    title = "Job exceeded its time limit"


class InternalJobError(PlantError):
    code = "internal-error"
    title = "Internal error"


class TeamFull(Conflict):
    code = "team-full"
    title = "The team has no free seat"


class NotEligible(InvalidInput):
    code = "not-eligible"
    title = "The agent is not eligible for the team"


class NoEligibleTeam(Conflict):
    code = "no-eligible-team"
    title = "No eligible team has a free seat"


class CanonicalizationError(InvalidInput):
    """A value that has no single canonical JSON form."""

    code = "not-canonicalizable"
    title = "Value cannot be canonicalized"


class AlreadyCertified(Conflict):
    code = "already-certified"
    title = "Skill is already certified"


class NotCertifiable(Conflict):
    code = "not-certifiable"
    title = "Skill cannot be certified in its current state"


class ConstitutionViolation(InvalidInput):
    code = "constitution-violation"
    title = "The write would break the constitution"


class EmbedderUnavailable(PlantError):
    """The configured embedder cannot be used in this installation."""

    code = "embedder-unavailable"
    title = "Embedder unavailable"


class IdempotencyKeyReused(InvalidInput):
    code = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class WorkerLost(PlantError):
    code = "worker-lost"
    title = "The job's worker stopped responding"


class JwsError(PlantError):
    """A JWS that is malformed, names an unknown key, or does not verify."""

    code = "signature-invalid"
    title = "Signature invalid"


class EntityTampered(Conflict):
    """The entity's row no longer matches its signed head version: no new version is
    signed on top of it (that would make the tampering look legitimate)."""

    code = "entity-tampered"
    title = "The entity's row no longer matches its signed history"


class ImmutableEntity(Conflict):
    code = "immutable-entity"
    title = "The entity can no longer be changed"


class PreconditionFailed(Conflict):
    code = "precondition-failed"
    title = "The entity changed since the client read it"


class SealListInvalid(PlantError):
    """The database's list of what a sealed key signed outside the chain is not the one its seal commits to."""

    code = "seal-list-invalid"
    title = "A key seal's list does not match the seal"


class LedgerBusy(PlantError):
    """Version writes stayed in flight for longer than a digest looks for a quiet moment."""

    code = "ledger-busy"
    title = "Ledger busy"
    retry_after_seconds = 5


class DigestsBusy(LedgerBusy):
    """Every digest this API process may take at once is being taken (``PLANT_DIGESTS_AT_ONCE``)."""

    code = "digests-busy"
    title = "Digests busy"
    retry_after_seconds = 2  # a digest takes about a second per 200,000 entities


class SigningKeyError(PlantError):
    """Key material that is malformed, encrypted, or of a type or size we do not accept."""

    code = "signing-key-invalid"
    title = "Signing key invalid"


class KeyFileTooOpen(SigningKeyError):
    """A private key file its own user left open to its group or others (as ssh refuses one);
    the message names the file and its mode."""


class KeySealFileInvalid(SigningKeyError):
    """A retired key's seal file a running process found (``models.keys.RetiredSealWatch``)
    stayed malformed, or one it may not read (its mode, a directory, a link loop, a FIFO), past the
    window a seal being written is given: the server's files are at fault, not the request, so
    the API answers 500 (``web.problems``), and a job fails; a process starting on these files
    refuses to start. Passes only once someone puts the file right (or removes it)."""

    code = "key-seal-file-invalid"
    title = "A retired signing key's seal file cannot be read as a seal"


class SigningKeySealed(PlantError):
    """The key this process signs with was sealed after the process loaded it (``plant
    signing-keys seal`` ran while it still ran on the old key): whatever it signed now would be
    ``signed-after-seal`` everywhere else, so it signs nothing. Passes once the process restarts
    on the active key; a client retrying may reach a process that has."""

    code = "signing-key-sealed"
    title = "This process's signing key is sealed: it must restart"
    retry_after_seconds = 5


class JobHandedBack(PlantError):
    """The attempt stops and hands its job back to the queue, for another to take: its
    worker shuts down (at a checkpoint), or its lease expired between a bulk job's batches."""

    code = "job-handed-back"
    title = "The job was handed back to the queue"


class TransientJobError(PlantError):
    code = "transient-error"
    title = "A dependency was unavailable"  # the job is retried, unless this was its last allowed attempt


class KeySealUnreadable(TimeoutError):
    """A retired key's seal file is there but cannot be read as a seal yet: one being copied
    in place (rather than renamed in) or chmod'ed after, or a network mount answering EIO or
    ESTALE for a moment (:class:`models.keys.RetiredSealWatch`). Whether the key is sealed cannot be told, so
    nothing it signed is judged now; asking again shortly may tell. Not a ``PlantError``, which
    fails a job for good: a ``TimeoutError``, which a job's attempt and an audit chunk retry
    as transient (``tasks.runner.is_transient``); the API answers 503 with ``Retry-After``
    (``web.problems``). A seal file that stays malformed, or that this process may not read
    (EACCES, EISDIR, ELOOP: the file's own fault), is a :class:`KeySealFileInvalid` after a
    few seconds instead."""

    code = "key-seal-unreadable"
    title = "A signing key's seal file cannot be read yet"
    retry_after_seconds = 2

    def __init__(self, detail: str) -> None:
        super().__init__(errno.ETIMEDOUT, detail)  # strerror: what a CLI prints of an OSError
        self.detail = detail

    def __str__(self) -> str:
        return self.detail

    def __reduce__(self) -> tuple[type[KeySealUnreadable], tuple[str]]:  # as built: OSError's would pass (errno, detail)
        return type(self), (self.detail,)

    def problem(self, status: int | None = None) -> dict[str, Any]:
        return {"type": PROBLEM_TYPE_PREFIX + self.code, "title": self.title, "detail": self.detail,
                **({"status": status} if status is not None else {})}
