"""Signing keys for the hash chain: Ed25519 by default, RSA-4096 with PSS accepted.

A key is named by its RFC 7638 JWK thumbprint (``kid``), so anyone holding the published
JWK can recompute the name and check a signature without trusting our key store. A
:class:`KeyRing` signs with one active key and still verifies signatures made by keys it
has rotated out; its :meth:`KeyRing.jwks` is what gets published. Ed25519 signs with
``alg`` "EdDSA" (RFC 8037); RSA signs with "PS256": RSASSA-PSS, SHA-256, MGF1-SHA-256 and a
32-byte salt, verified with exactly that salt length. Only the ``cryptography`` library
touches private keys (and HMAC, keyed with a key's private bytes: :meth:`SigningKey.secret_mac`). Ed25519 signatures are verified by libsodium (PyNaCl, also from
PyCA): the full audit verifies one per entity, and libsodium's check costs about 60 % of
OpenSSL's here (42 against 71 µs). Both implement RFC 8032; libsodium also refuses
non-canonical and small-order encodings, which no honest signer produces. Making keys and
reading them from PEM is :mod:`models.key_material`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import nacl.bindings
import nacl.exceptions
import rfc8785
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from models.canonical import sha256
from models.errors import SigningKeyError

MIN_RSA_BITS = 4096
EDDSA = "EdDSA"
PS256 = "PS256"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
ED25519_SIGNATURE_BYTES = 64

PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey
# RFC 7518 6.2.2, 6.3.2 and 6.4 (RSA, EC, symmetric), RFC 8037 2 (OKP): private key material.
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class VerifyingKey:
    """A public key that checks chain signatures; all an outside auditor needs."""

    kid: str
    algorithm: str
    public_key: PublicKey = field(repr=False, compare=False)

    @classmethod
    def from_public_key(cls, public_key: Any) -> VerifyingKey:
        algorithm = _algorithm_of(public_key)  # first: only accepted key types have a thumbprint
        return cls(public_key_thumbprint(public_key), algorithm, public_key)

    @classmethod
    def from_jwk(cls, jwk: dict[str, Any]) -> VerifyingKey:
        """Build from a published JWK; a ``kid`` or ``alg`` it carries must match the key, and
        one that says it is not for checking signatures (``use``, ``key_ops``: RFC 7517 4.2,
        4.3) or publishes its private half (anyone could sign as it) is no verifying key."""
        if _PRIVATE_JWK_MEMBERS & set(jwk):
            raise SigningKeyError("JWK carries private key members: its private half is published, anyone can sign as it")
        if jwk.get("use", "sig") != "sig" or not isinstance(ops := jwk.get("key_ops", ["verify"]), list) or "verify" not in ops:
            raise SigningKeyError("JWK is not for verifying signatures (its use or key_ops say otherwise)")
        key = cls.from_public_key(_public_key_from_jwk(jwk))
        if "kid" in jwk and jwk["kid"] != key.kid:
            raise SigningKeyError(f"JWK kid {jwk['kid']!r} is not its thumbprint {key.kid!r}")
        if "alg" in jwk and jwk["alg"] != key.algorithm:
            raise SigningKeyError(f"JWK alg {jwk['alg']!r} does not fit a {key.algorithm} key")
        return key

    def public_pem(self) -> bytes:
        """The key as a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo): a retired or upcoming key file."""
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's signature over ``data``; never raises on a bad one."""
        try:
            if isinstance(self.public_key, rsa.RSAPublicKey):
                self.public_key.verify(signature, data, _PSS, hashes.SHA256())
                return True
            if len(signature) != ED25519_SIGNATURE_BYTES:
                return False
            # crypto_sign_open takes signature || message and raises unless it verifies.
            nacl.bindings.crypto_sign_open(bytes(signature) + bytes(data), self._ed25519_public_bytes)
        except (InvalidSignature, nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True

    @cached_property
    def _ed25519_public_bytes(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def public_jwk(self) -> dict[str, str]:
        return {**_required_members(self.public_key), "kid": self.kid, "alg": self.algorithm, "use": "sig"}


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs chain entries. Its ``repr`` never shows key material."""

    kid: str
    algorithm: str
    private_key: PrivateKey = field(repr=False, compare=False)
    # Called before each signature; raises when the key must not sign any more (a process's
    # active key sealed since it loaded it: models.keys.SealWatch). None: nothing to check.
    guard: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_private_key(cls, private_key: Any) -> SigningKey:
        if not isinstance(private_key, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)):
            raise _unsupported(private_key)
        verifier = VerifyingKey.from_public_key(private_key.public_key())
        return cls(verifier.kid, verifier.algorithm, private_key)

    def sign(self, data: bytes) -> bytes:
        if self.guard is not None:
            self.guard()
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(data, _PSS, hashes.SHA256())
        return self.private_key.sign(data)

    def verifier(self) -> VerifyingKey:
        return VerifyingKey(self.kid, self.algorithm, self.private_key.public_key())

    def public_jwk(self) -> dict[str, str]:
        return self.verifier().public_jwk()

    def secret_mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` keyed with this private key's PKCS#8 bytes: a value only the
        key's holder can compute (or predict), the same in every process holding the key."""
        der = self.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return hmac.new(der, data, hashlib.sha256).digest()

    def private_pem(self) -> bytes:
        """PKCS#8, unencrypted: protect the file, not the bytes."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


# JWK members (RFC 7517 section 4 allows more) that name a sealed key's seal time, and the
# signatures outside the chain its seal lists (base64url SHA-256 of each signature's bytes).
SEALED_AT_MEMBER = "plant_sealed_at"
UPCOMING_MEMBER = "plant_upcoming"  # true on a key published ahead of a rotation (it signs nothing yet)
# True on a retired key (sealed or not): it only verifies what it signed before a rotation. RFC 7517
# gives the order of a set's keys no meaning, so "the active key first" alone cannot tell them apart.
RETIRED_MEMBER = "plant_retired"
SEALED_SIGNATURES_MEMBER = "plant_sealed_signatures"


@dataclass(frozen=True)
class KeySeal:
    """A retired key's seal: the stored ledger digest, signed by its successor once every
    process had switched, that holds every version the retired key may have signed
    (``plant signing-keys seal``, :mod:`models.key_seals`). Kept in a file beside the
    retired key, so someone who can write the database cannot move it."""

    kid: str
    digest_id: int
    heads_root: str  # hex, as in the digest's signed document
    as_of: str
    # The soft-deleted entities' (id, head link hex) at the seal, as a seal written before
    # ``tombstones_root`` lists them (some 125 bytes each in the file: past Secret Manager's
    # 64 KiB a version, where a Cloud Run deployment keeps its seals, after ~500 of them).
    deleted: tuple[tuple[str, str], ...] = ()
    # What the key signed outside the chain (reports it handed out, repair records,
    # certificates), committed to here by count and root (:func:`models.key_seals.seal_list_root`);
    # the list itself is kept in the database. None: the seal lists nothing (written before seals
    # listed, or the key signed before Plant recorded what it handed out).
    signed_count: int | None = None
    signed_root: str | None = None
    # That list (base64url SHA-256s) once read from the database and checked against the root
    # (:func:`models.key_seals.with_seal_lists`); empty when it does not match. Never in the file.
    signed: frozenset[str] | None = field(default=None, compare=False)
    # Hex root of the seal digest's tombstones (its soft-deleted entities' heads, signed in the
    # v2 document): a seal written since names it in place of listing them (``deleted``), and
    # the tombstone rows are read and checked against it (:func:`models.seal_check.sealed_leaves`).
    tombstones_root: str | None = None
    # Whether the list holds the key's audit records too (each run's close, and a running run's
    # plan and checkpoints): a seal file says so (``lists_audit_records``) since it does; one
    # written before lists none of them, so its key's plans and closes are judged by the times
    # they name alone, and its checkpoints not at all (:func:`models.audit_record`).
    lists_audit_records: bool = True

    @property
    def lists(self) -> bool:
        """Whether this seal lists what its key signed outside the chain."""
        return self.signed_root is not None

    @property
    def attests_audit_records(self) -> bool:
        """Whether an audit record its key signed verifies only if this seal lists it."""
        return self.lists and self.lists_audit_records

    def listed(self) -> frozenset[str]:
        """The list, as read and checked; raises if it was never read: a check that went ahead
        without it would refuse everything the key signed, with a forgery's message."""
        if self.signed is None:
            raise RuntimeError(f"the seal of key {self.kid} lists signatures, but the list was not read: "
                               "verify with models.key_seals.with_seal_lists(keyring, session)")
        return self.signed

    @cached_property
    def deleted_heads(self) -> dict[uuid.UUID, bytes]:
        """``deleted`` parsed once: soft-deleted entity id -> its head link at the seal."""
        return {uuid.UUID(entity_id): bytes.fromhex(head) for entity_id, head in self.deleted}


@dataclass(frozen=True)
class KeyRing:
    """The active signing key plus retired keys that still verify what they signed
    (a sealed retired key: only what its seal's digest holds), and upcoming keys: trusted
    before they sign, so that processes still on the old key accept what the new one signs
    during a rolling rotation. An upcoming key is never sealed."""

    active: SigningKey
    retired: tuple[SigningKey | VerifyingKey, ...] = ()
    seals: tuple[KeySeal, ...] = ()
    upcoming: tuple[VerifyingKey, ...] = ()
    # Asked for the seal of a retired key that ``seals`` has none for: one written since the
    # ring was loaded (``models.keys.RetiredSealWatch``, which looks on disk at most once a
    # second per key). None: ``seals`` are all there are (a ring built in memory, or a snapshot).
    seal_watch: Callable[[str], KeySeal | None] | None = field(default=None, repr=False, compare=False)
    _verifiers: dict[str, VerifyingKey] = field(init=False, repr=False, compare=False)
    _seals: dict[str, KeySeal] = field(init=False, repr=False, compare=False)
    _watched: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        verifiers: dict[str, VerifyingKey] = {}
        for key in (self.active, *self.retired, *self.upcoming):
            verifiers.setdefault(key.kid, key.verifier() if isinstance(key, SigningKey) else key)
        object.__setattr__(self, "_verifiers", verifiers)
        # A seal says its key signs nothing valid from then on. Were the sealed key active (a
        # rotation rolled back by hand) or upcoming, the ring would sign with it, and every such
        # version would turn `signed-after-seal` once the key is retired again.
        signers = {self.active.kid: "active", **{key.kid: "upcoming" for key in self.upcoming if key.kid != self.active.kid}}
        for seal in self.seals:
            if seal.kid in signers:
                raise SigningKeyError(
                    f"the {signers[seal.kid]} signing key {seal.kid} is sealed: a sealed key must never sign "
                    f"again. Sign with a new key, or remove {seal.kid}'s seal file if the seal was a mistake"
                )
        retired = {key.kid for key in self.retired} - {self.active.kid}
        object.__setattr__(self, "_seals", {seal.kid: seal for seal in self.seals if seal.kid in retired})
        # Never a key this ring signs with: a seal of one appearing later is models.keys.SealWatch's.
        watched = retired - set(signers) - set(self._seals) if self.seal_watch is not None else set()
        object.__setattr__(self, "_watched", frozenset(watched))

    def seal(self, kid: str) -> KeySeal | None:
        """The seal of retired key ``kid``, if it has one: loaded with the ring, or written
        since (``seal_watch``), so that a process started before the seal trusts nothing
        the key signs after it, as a process started since would not."""
        seal = self._seals.get(kid)
        if seal is None and kid in self._watched:
            assert self.seal_watch is not None
            seal = self.seal_watch(kid)
        return seal

    @property
    def sealed(self) -> bool:
        """Whether any retired key is sealed (only then do versions need checking against seals)."""
        if self._seals:
            return True
        return any(self.seal(kid) is not None for kid in self._watched) if self._watched else False

    def current_seals(self) -> tuple[KeySeal, ...]:
        """``seals`` and the seals written since the ring was loaded (:meth:`seal`)."""
        return (*self.seals, *(seal for kid in sorted(self._watched) if (seal := self.seal(kid)) is not None))

    def snapshot(self) -> KeyRing:
        """This ring with the seals it knows now, looking for none written later: for one
        operation that reads each seal's list once (:func:`models.key_seals.with_seal_lists`)."""
        if self.seal_watch is None:
            return self
        return replace(self, seals=self.current_seals(), seal_watch=None)

    def sign(self, data: bytes) -> tuple[str, bytes]:
        """``(kid, signature)`` by the active key."""
        return self.active.kid, self.active.sign(data)

    def verifier(self, kid: str) -> VerifyingKey | None:
        return self._verifiers.get(kid)

    def verifiers(self) -> tuple[VerifyingKey, ...]:
        return tuple(self._verifiers.values())

    def verify(self, kid: str, signature: bytes, data: bytes) -> bool:
        """Whether key ``kid`` of this ring signed ``data``; an unknown kid is simply False."""
        key = self._verifiers.get(kid)
        return key is not None and key.verify(signature, data)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The JWK Set to publish: every key of the ring, the active one first. A sealed
        retired key's entry also names when it was sealed and what its seal lists, for
        verifiers who hold nothing but this set (:func:`models.jws.sealed_at`,
        :func:`models.jws.listed_by_seal`); an upcoming key's says so (``plant_upcoming``),
        and so does a retired one's (``plant_retired``), so an operator or an offline verifier
        can tell each from the active key whatever order the set is kept in."""
        upcoming = {key.kid for key in self.upcoming} - {self.active.kid}
        retired = {key.kid for key in self.retired} - {self.active.kid} - upcoming
        return {"keys": [{**key.public_jwk(), **_seal_members(self.seal(kid)), **({UPCOMING_MEMBER: True} if kid in upcoming else {}),
                          **({RETIRED_MEMBER: True} if kid in retired else {})}
                         for kid, key in self._verifiers.items()]}

    def rotate(self, new: SigningKey) -> KeyRing:
        """A ring that signs with ``new``; the current active key moves to the retired keys."""
        retired = tuple(key for key in (self.active, *self.retired) if key.kid != new.kid)
        return KeyRing(new, retired, self.seals, tuple(key for key in self.upcoming if key.kid != new.kid), self.seal_watch)


def _seal_members(seal: KeySeal | None) -> dict[str, Any]:
    if seal is None:
        return {}
    listed = {SEALED_SIGNATURES_MEMBER: sorted(seal.listed())} if seal.lists else {}
    return {SEALED_AT_MEMBER: seal.as_of, **listed}


def jwk_thumbprint(required_members: dict[str, str]) -> str:
    """RFC 7638: base64url SHA-256 of the required members as sorted, compact JSON."""
    return _b64url_encode(sha256(rfc8785.dumps(required_members)))


def public_key_thumbprint(public_key: PublicKey) -> str:
    """The ``kid`` of a public key (computed for any RSA size; acceptance is checked elsewhere)."""
    return jwk_thumbprint(_required_members(public_key))


def _algorithm_of(public_key: Any) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return EDDSA
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise SigningKeyError(f"RSA keys need at least {MIN_RSA_BITS} bits, got {public_key.key_size}")
        return PS256
    raise _unsupported(public_key)


def _unsupported(key: Any) -> SigningKeyError:
    return SigningKeyError(f"only Ed25519 and RSA keys are accepted, got {type(key).__name__}")


def _required_members(public_key: PublicKey) -> dict[str, str]:
    """The RFC 7638 required JWK members of ``public_key``."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64url_encode(raw)}


def _public_key_from_jwk(jwk: dict[str, Any]) -> Any:
    try:
        if jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk["x"]))
        if jwk["kty"] == "RSA":
            e, n = (int.from_bytes(_b64url_decode(jwk[name]), "big") for name in ("e", "n"))
            return rsa.RSAPublicNumbers(e, n).public_key()
    except KeyError as exc:
        raise SigningKeyError(f"JWK lacks member {exc.args[0]!r}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"JWK is not a valid public key: {exc}") from exc
    raise SigningKeyError(f"unsupported JWK kty={jwk.get('kty')!r} crv={jwk.get('crv')!r}")


def _b64url_uint(value: int) -> str:
    """Big-endian with no leading zero octets, as RFC 7518 requires (the thumbprint depends on it)."""
    return _b64url_encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    # The standard decoder silently skips foreign characters; a JWK member must not.
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # binascii.Error is a ValueError
