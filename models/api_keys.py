"""API keys: random bearer tokens stored only as SHA-256 hashes, with scopes.

Keys are 256-bit random tokens, so a fast hash is enough: there is nothing to brute
force. Scopes nest: ``admin`` includes ``write``, which includes ``read``. A revoked key, or
one past its ``expires_at``, stops working on the next request (every request looks the key
up; nothing caches it; expiry is judged by the database's clock). ``last_used_at`` says when
a key was last used, to within ``LAST_USED_GRANULARITY``: written by the first request after
that much time, not by every request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ARRAY, Connection, CheckConstraint, DateTime, LargeBinary, String, Text, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, CreatedAt, Timestamp, UUIDPk
from models.db_statements import SessionOrConnection, driver_rows, driver_sql
from models.entity_input import nul_refused
from models.errors import InvalidInput, LastAdminKey, NotFound
from models.lookalikes import skeleton

SCOPES = ("read", "write", "admin")
# The actor a write through the API records (chain versions, jobs' requested_by and cancelled_by).
ACTOR_PREFIX = "api-key:"


def key_actor(key_id: object) -> str:
    return f"{ACTOR_PREFIX}{key_id}"


KEY_PREFIX = "plant_"


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("scopes <@ ARRAY['read', 'write', 'admin']::text[]", name="scopes_known"),)

    id: Mapped[UUIDPk]
    name: Mapped[str] = mapped_column(String(200))
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[CreatedAt]
    revoked_at: Mapped[Timestamp | None]
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[Timestamp | None]

    def grants(self, scope: str) -> bool:
        """Whether this key may act with ``scope`` (scopes nest: admin > write > read)."""
        return scopes_grant(self.scopes, scope)


def scopes_grant(held: Sequence[str], scope: str) -> bool:
    return any(SCOPES.index(h) >= SCOPES.index(scope) for h in held)


@dataclass(frozen=True)
class Caller:
    """The live key a request was made with: its id (for attribution) and scopes."""

    id: uuid.UUID
    scopes: tuple[str, ...]
    use_unrecorded: bool = False

    def grants(self, scope: str) -> bool:
        return scopes_grant(self.scopes, scope)


@dataclass(frozen=True)
class ExpiredKey:
    """A key presented after its ``expires_at``: refused as an unknown one is, but said so."""

    expires_at: dt.datetime


@dataclass(frozen=True)
class IssuedKey:
    """A new key: the plaintext is shown once and never stored."""

    key: ApiKey
    plaintext: str


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


KEY_BYTES = 32
PLANT_KEY_LENGTH = len(KEY_PREFIX) + 43  # token_urlsafe(32): 43 base64url characters


def generate_plaintext() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def shown_prefix(plaintext: str) -> str:
    """What a key listing shows of a key: 12 characters of one Plant made (``plant_`` and 6 of
    its 43 random ones), at most a quarter of any other (a configured admin key may be short:
    ``change-me`` was listed whole)."""
    if plaintext.startswith(KEY_PREFIX) and len(plaintext) == PLANT_KEY_LENGTH:
        return plaintext[:12]
    return plaintext[: min(12, len(plaintext) // 4)]


def _key_row(*, name: str, scopes: list[str], plaintext: str) -> dict[str, object]:
    """An ``api_keys`` row's values for ``plaintext``, its scopes and blankness checked."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise InvalidInput(f"scopes must be a non-empty subset of {list(SCOPES)}", field="scopes")
    if not plaintext.strip():
        raise InvalidInput("an API key cannot be blank", field="plaintext")
    if "\x00" in name:  # text cannot hold it: the database's refusal would name no field
        raise nul_refused("name")
    return {"name": name, "key_prefix": shown_prefix(plaintext), "key_hash": hash_key(plaintext),
            "scopes": sorted(set(scopes), key=SCOPES.index)}


# The longest expiry a key may be made with: ten years, within the years a time may hold.
MAX_EXPIRY_DAYS = 3650


def create_api_key(session: Session, *, name: str, scopes: list[str], plaintext: str | None = None,
                   expires_in_days: int | None = None) -> IssuedKey:
    """A new key; with ``expires_in_days``, it stops working that many days from now (the
    database's clock)."""
    plaintext = generate_plaintext() if plaintext is None else plaintext
    key = ApiKey(**_key_row(name=name, scopes=scopes, plaintext=plaintext))
    if expires_in_days is not None:
        if not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
            raise InvalidInput(f"expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}", field="expires_in_days")
        key.expires_at = session.scalar(select(func.now() + dt.timedelta(days=expires_in_days)))
    session.add(key)
    session.flush()
    return IssuedKey(key, plaintext)


# How stale ``last_used_at`` may be: a request finding it older writes it (one UPDATE per
# key per period, not one per request: every request reads the key, few need write it).
LAST_USED_GRANULARITY = dt.timedelta(hours=1)
_KEYS = ApiKey.__table__.c
_NOW = func.now()
_USE_UNRECORDED = func.coalesce(_KEYS.last_used_at < _NOW - LAST_USED_GRANULARITY, True)  # never written, or long ago
# Every API request runs this: compiled once and run by psycopg itself on the request's
# connection (models.db_statements.driver_rows), read as a plain row.
_LOOKUP = driver_sql(
    select(_KEYS.id, _KEYS.scopes, _KEYS.key_hash, _KEYS.expires_at, (_KEYS.expires_at <= _NOW).label("expired"),
           _USE_UNRECORDED.label("stale"))
    .where(_KEYS.key_hash == bindparam("digest"), _KEYS.revoked_at.is_(None)))
# Skips a row another transaction holds (a revocation): no request waits to record its use.
_TOUCH = (ApiKey.__table__.update().values(last_used_at=_NOW).where(_KEYS.id.in_(
    select(_KEYS.id).where(_KEYS.id == bindparam("key_id"), _USE_UNRECORDED)
    .with_for_update(skip_locked=True).scalar_subquery())))


def authenticate(session: SessionOrConnection, presented: str) -> Caller | ExpiredKey | None:
    """The live key matching ``presented``, :class:`ExpiredKey` for one past its expiry, or
    None. The lookup is by hash, so timing reveals nothing about stored keys; the final
    compare is constant-time anyway. ``Caller.use_unrecorded`` says its ``last_used_at`` is
    older than ``LAST_USED_GRANULARITY`` (:func:`record_key_use` writes it)."""
    digest = hash_key(presented)
    rows = driver_rows(session, _LOOKUP, {"digest": digest})  # every request's: see driver_rows
    if not rows or not hmac.compare_digest(bytes(rows[0][2]), digest):
        return None
    key_id, scopes, _, expires_at, expired, stale = rows[0]
    if expired:
        return ExpiredKey(expires_at)
    return Caller(key_id, tuple(scopes), use_unrecorded=stale)


def record_key_use(connection: Connection, key_id: uuid.UUID) -> None:
    """Write ``last_used_at`` of key ``key_id`` (unless it was written within
    ``LAST_USED_GRANULARITY``), in autocommit: the API calls it once a request is answered,
    on a connection of its own, so that no request's transaction (which a read rolls back)
    decides whether it stays."""
    connection.execute(_TOUCH, {"key_id": key_id})


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def _live_admin_keys(session: Session) -> list[uuid.UUID]:
    """The ids of the keys that can manage keys now: admin, not revoked, not expired."""
    return list(session.scalars(select(ApiKey.id).where(
        ApiKey.revoked_at.is_(None), ApiKey.scopes.any_() == "admin",
        (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > func.now()))))


def revoke_api_key(session: Session, *, key_id: uuid.UUID, leave_no_admin_key: bool = False) -> ApiKey:
    """Revoke key ``key_id`` (a revoked one stays as it was). The last live admin key is
    revoked only when ``leave_no_admin_key`` says that is meant (else :class:`LastAdminKey`):
    keys are managed only through the API, with an admin key, so once none is left only a
    new ``PLANT_ADMIN_API_KEY`` and a deploy (or SQL) make one again. Revocations take turns
    with each other and with deploys ensuring the configured key (``ADMIN_KEYS_LOCK``), so
    two admins revoking the last two admin keys at once cannot both go ahead."""
    session.execute(select(func.pg_advisory_xact_lock(ADMIN_KEYS_LOCK)))
    key = session.get(ApiKey, key_id, populate_existing=True)
    if key is None:
        raise NotFound(f"no API key with id {key_id}", id=str(key_id))
    if key.revoked_at is None:
        if not leave_no_admin_key and _live_admin_keys(session) == [key.id]:
            raise LastAdminKey(f"API key {key_id} is the last live admin key: once it is revoked no key can manage keys "
                               "until a new PLANT_ADMIN_API_KEY is deployed; create another admin key first, or revoke "
                               "it with leave_no_admin_key=true if that is meant", id=str(key_id))
        key.revoked_at = session.scalar(select(func.now()))
    session.flush()
    return key


# A configured admin key is chosen by a person, not drawn by Plant: it must be long enough
# not to be guessed, and not the placeholder .env.example ships (anyone can read that one).
MIN_CONFIGURED_KEY_LENGTH = 32
PLACEHOLDER = "change-me"
# What ``Authorization: Bearer <key>`` carries as one key (web.auth.presented_key): printable
# ASCII without a comma. A header is read as Latin-1, and a space or comma splits it.
SENDABLE_KEY = re.compile(r"[!-+\--~]+")


def check_configured_admin_key(plaintext: str) -> None:
    """Refuse a configured admin key (``PLANT_ADMIN_API_KEY``) shorter than
    ``MIN_CONFIGURED_KEY_LENGTH``, holding ``.env.example``'s placeholder, or one no
    ``Authorization: Bearer`` header could send (``SENDABLE_KEY``); the error names the
    setting and never the key."""
    if PLACEHOLDER in plaintext.lower():
        problem = f"holds the placeholder {PLACEHOLDER} of .env.example"
    elif len(plaintext) < MIN_CONFIGURED_KEY_LENGTH:
        problem = f"is {len(plaintext)} characters long"
    elif not SENDABLE_KEY.fullmatch(plaintext):
        # An earlier release read "Bearer a b" as the key "a b": such a key worked until this
        # release, so the refusal says how to upgrade past it (a rotation, as any other).
        problem = ("holds a space, a comma, or a character that is not printable ASCII (no request could send it; "
                   "one an earlier release took is replaced by configuring a new key with the upgrade, which "
                   "revokes it as any rotation does)")
    else:
        return
    raise InvalidInput(
        f"PLANT_ADMIN_API_KEY {problem}: a configured admin key must be at least {MIN_CONFIGURED_KEY_LENGTH} "
        f"characters (printable ASCII, no space or comma) and not contain {PLACEHOLDER}; generate one with "
        "python3 -c \"import secrets; print('plant_' + secrets.token_urlsafe(32))\"")


# The name of the admin key configured at deploy (PLANT_ADMIN_API_KEY) or made by ``plant dev``:
# a new configured key revokes the live admin keys of this name, so no other key may take it.
BOOTSTRAP_ADMIN_NAME = "bootstrap-admin"
# Unicode categories a key's name may not hold: control codes (ESC, CR), format characters (bidi
# overrides, zero-width spaces), line and paragraph separators.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def key_name_problem(name: str) -> str | None:
    """Why ``name`` (NFC, as stored) may not name a key made through the API, or None. A name
    is what an operator tells keys apart by in a listing, so it must show what it is: not
    blank, no leading or trailing whitespace, no control or format character. And it may not
    pass for :data:`BOOTSTRAP_ADMIN_NAME` (compared in NFKC, without regard to case): a key
    named ``Bootstrap-admin`` or ``bootstrap-admin\u200b`` would be listed as the configured
    admin key, yet left live by the rotation that revokes that one."""
    if not name.strip():
        return "a key's name cannot be blank"
    if name != name.strip():
        return "a key's name cannot begin or end with whitespace"
    if hidden := sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) in HIDDEN_CATEGORIES}):
        return f"a key's name cannot hold control or format characters ({', '.join(hidden)})"
    if name_skeleton(name) == name_skeleton(BOOTSTRAP_ADMIN_NAME):
        return f"{BOOTSTRAP_ADMIN_NAME!r} is reserved for the configured admin key (and any name that reads as it)"
    return None


def name_skeleton(name: str) -> str:
    """What ``name`` reads as, for comparing names: NFKC (fullwidth ``ｂ`` is ``b``), without
    regard to case, each letter of another script drawn as a Latin one taken for it (Cyrillic
    ``о`` for ``o``: :func:`models.lookalikes.skeleton`), and every character that is neither a
    letter nor a digit dropped. A key named ``bootstrap‐admin`` (U+2010 HYPHEN),
    ``bootstrap−admin`` (U+2212 MINUS SIGN), ``bootstrap—admin`` or ``bootstrap_admin`` reads as
    the configured admin key in a listing: every dash (Unicode's Pd), minus sign and separator
    is dropped, not only the ones a list of confusables names."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(_letter_read(c) for c in folded if unicodedata.category(c)[0] in "LN")


def _letter_read(char: str) -> str:
    """The Latin letter a casefolded ``char`` reads as. A capital's look-alike is asked too:
    Cyrillic ``т`` is drawn as the small capital ``ᴛ`` but ``Т`` as ``T``; of the two readings
    a plain ASCII one is taken (Greek ``ι``, casefolded from ``Ι``, reads as ``i``, not ``l``)."""
    readings = [skeleton(char).casefold(), skeleton(char.upper()).casefold()]
    return next((reading for reading in readings if reading.isascii()), readings[0])


# pg_advisory_xact_lock key ("plantadm" in ASCII) serializing the admin keys deploys ensure.
ADMIN_KEYS_LOCK = int.from_bytes(b"plantadm", "big")


def ensure_admin_key(session: Session, *, plaintext: str, name: str = BOOTSTRAP_ADMIN_NAME,
                     replaces: bool = True) -> Literal["created", "live", "revoked", "expired"]:
    """Make ``plaintext`` an admin key unless it was revoked: ``created`` (and, when it
    ``replaces`` them, the live admin keys of the same ``name``, the ones configured before it,
    revoked: a rotation takes the old key away; a key ``plant dev`` generates replaces none),
    ``live`` (it already was one), or ``revoked`` (left revoked: revoking the bootstrap key once
    narrower keys exist is what an operator should do, and every later deploy still ensures it),
    or ``expired`` (an API key made to expire, configured: left so, as a revoked one; it grants
    nothing, and a deploy that went on yesterday must not stop today for it).
    A key too short, or the example's placeholder, is refused (:func:`check_configured_admin_key`),
    even one an earlier release ensured."""
    check_configured_admin_key(plaintext)
    # Several containers may run `plant db upgrade` at once, with two keys while a rotation
    # rolls out: one at a time, so the later one sees the earlier's row and revokes it (apart,
    # each missed the other's uncommitted row and both stayed live). With one key, whoever
    # inserts second finds the first's row instead of a unique violation.
    session.execute(select(func.pg_advisory_xact_lock(ADMIN_KEYS_LOCK)))
    created = session.scalar(pg_insert(ApiKey).values(**_key_row(name=name, scopes=["admin"], plaintext=plaintext))
                             .on_conflict_do_nothing(index_elements=[ApiKey.key_hash]).returning(ApiKey.id))
    if created is not None and replaces:
        # A new configured key replaces the one configured before it (rotated because it leaked,
        # say): that one, and any other live admin key of the bootstrap's name, is revoked now.
        session.execute(update(ApiKey).where(ApiKey.name == name, ApiKey.id != created, ApiKey.revoked_at.is_(None),
                                             ApiKey.scopes.any_() == "admin").values(revoked_at=func.now()))
    if created is not None:
        return "created"
    existing = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext))
                               .execution_options(populate_existing=True)).one()
    if existing.revoked_at is not None:
        return "revoked"
    if existing.expires_at is not None and existing.expires_at <= session.scalar(select(func.now())):
        return "expired"  # was "live": plant db upgrade said so, and plant dev printed it as the key to use
    if "admin" not in existing.scopes:
        raise InvalidInput("the configured admin key is a live key without the admin scope; configure another one")
    return "live"
