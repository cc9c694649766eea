"""Detached JWS signatures over Plant reports, checkable offline from the published JWKS.

A report is signed as an RFC 7515 compact JWS with detached content (RFC 7515 Appendix F):
``BASE64URL(header) + ".." + BASE64URL(signature)``, where the signing input is
``BASE64URL(header) "." BASE64URL(payload)`` exactly as for an attached payload, so the
report travels as its own file and any JOSE library can check it once the payload is put
back in the middle. The protected header is ``{"alg", "kid", "typ": "plant-report+jws"}``
serialised with JCS; ``kid`` is the key's RFC 7638 thumbprint. Verification trusts
nothing in the header but the ``kid`` it looks up: the key must be one the caller supplied
(verifying keys, a :class:`~models.signing.KeyRing`, or a JWKS document), its algorithm must
equal the header's ``alg``, and ``alg: none``, RFC 7797 unencoded payloads and any
``crit`` extension are refused, since this module understands none of them. Every refusal
is a :class:`JwsError`; the cryptography itself stays in :mod:`models.signing`.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

from models.canonical import aware_time, sha256, strict_json_loads
from models.errors import JwsError, SigningKeyError
from models.signing import (
    RETIRED_MEMBER,
    SEALED_AT_MEMBER,
    SEALED_SIGNATURES_MEMBER,
    UPCOMING_MEMBER,
    KeyRing,
    SigningKey,
    VerifyingKey,
)

REPORT_TYPE = "plant-report+jws"
SUPPORTED_ALGORITHMS = frozenset({"EdDSA", "PS256"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

KeySource = KeyRing | Mapping[str, Any] | Iterable[VerifyingKey | SigningKey]
"""Where verifiers come from: a key ring, ``{kid: key}``, an iterable of keys, or a JWKS dict."""


@dataclass(frozen=True)
class VerifiedSignature:
    """Which key made a signature that checked out, and with which algorithm."""

    kid: str
    alg: str


def sign_detached(payload: bytes, key: SigningKey) -> str:
    """The compact detached JWS ``header..signature`` by ``key`` over ``payload``."""
    header = {"alg": key.algorithm, "kid": key.kid, "typ": REPORT_TYPE}
    encoded_header = b64url_encode(rfc8785.dumps(header))
    signature = key.sign(_signing_input(encoded_header, payload))
    return f"{encoded_header}..{b64url_encode(signature)}"


def verify_detached(payload: bytes, jws: str, keys: KeySource) -> VerifiedSignature:
    """Check ``jws`` over ``payload`` with one of ``keys``; raises :class:`JwsError` otherwise."""
    if not isinstance(payload, (bytes, bytearray)):
        raise JwsError("the payload must be bytes")
    encoded_header, signature = _split_compact(jws)
    header = _parse_header(encoded_header)
    verifier = find_verifier(keys, header["kid"])
    if verifier is None:
        raise JwsError(f"no published key has kid {header['kid']!r}", kid=header["kid"])
    if verifier.algorithm != header["alg"]:
        raise JwsError(f"key {verifier.kid!r} signs with {verifier.algorithm}, not {header['alg']}")
    if not verifier.verify(signature, _signing_input(encoded_header, bytes(payload))):
        raise JwsError("the signature does not match the payload", kid=verifier.kid)
    if not listed_by_seal(keys, verifier.kid, signature):
        raise JwsError(f"key {verifier.kid!r} is sealed, and its seal does not list this signature: it was made after "
                       "the seal, with a copy of a retired private key", kid=verifier.kid)
    return VerifiedSignature(verifier.kid, verifier.algorithm)


def find_verifier(keys: KeySource, kid: str) -> VerifyingKey | None:
    """The verifying key named ``kid`` in ``keys``, or None.

    Keys are matched by their own thumbprint, never by the name a mapping files them
    under. JWKS entries that are not usable keys (other types, a ``kid`` that is not
    the thumbprint, malformed members) are skipped: they cannot vouch for anything.
    """
    if isinstance(keys, KeyRing):
        return keys.verifier(kid)
    for key in _candidate_keys(keys, kid):
        verifier = key.verifier() if isinstance(key, SigningKey) else key
        if isinstance(verifier, VerifyingKey) and verifier.kid == kid:
            return verifier
    return None


def signature_sha256(signature: bytes) -> bytes:
    """What a seal lists of a signature it vouches for: the SHA-256 of its raw bytes."""
    return sha256(bytes(signature))


def listed_by_seal(keys: KeySource, kid: str, signature: bytes) -> bool:
    """Whether a signature by key ``kid`` outside the chain (a report, a repair record, a
    certificate; seals list no digest) may have been made before the key's seal: the key is
    not sealed, its seal lists nothing (written before seals listed, or for a key that signed
    before Plant recorded the reports it hands out), or the seal lists this signature. From a ring,
    the list is the one read from the database and checked against the seal
    (:func:`models.key_seals.with_seal_lists`; a ring whose lists were not read raises);
    from a JWKS, a sealed key's ``plant_sealed_signatures`` in each of the key's entries
    (:func:`_jwk_entries`), where anything but a list of strings lists nothing."""
    if isinstance(keys, KeyRing):
        seal = keys.seal(kid)
        if seal is None or not seal.lists:
            return True
        return b64url_encode(signature_sha256(signature)) in seal.listed()
    lists = [entry[SEALED_SIGNATURES_MEMBER] for entry in _jwk_entries(keys, kid) if SEALED_SIGNATURES_MEMBER in entry]
    listed = b64url_encode(signature_sha256(signature))
    # Every list the set gives the key must hold it (one list, as Plant publishes; more only
    # in a set merged by hand, where the stricter one must not be outvoted).
    return all(isinstance(hashes, list) and all(isinstance(h, str) for h in hashes) and listed in hashes
               for hashes in lists)


def seal_lists(keys: KeySource, kid: str) -> bool:
    """Whether key ``kid`` is sealed by a seal that lists what it signed outside the chain."""
    if isinstance(keys, KeyRing):
        seal = keys.seal(kid)
        return seal is not None and seal.lists
    return any(SEALED_SIGNATURES_MEMBER in entry for entry in _jwk_entries(keys, kid))


def published_as_upcoming(keys: KeySource, kid: str) -> bool:
    """Whether ``keys`` name key ``kid`` as upcoming: published ahead of a rotation, trusted,
    and signing nothing until a rotation makes it active (``plant_upcoming``, :meth:`KeyRing.jwks`)."""
    if isinstance(keys, KeyRing):
        return kid != keys.active.kid and any(key.kid == kid for key in keys.upcoming)
    return any(entry.get(UPCOMING_MEMBER) is True for entry in _jwk_entries(keys, kid))


def published_as_retired(keys: KeySource, kid: str) -> bool:
    """Whether ``keys`` name key ``kid`` as retired (sealed or not): trusted for what it signed
    before a rotation, though nothing dates a document it signs (``plant_retired``, and a
    seal time, which only a retired key has: :meth:`KeyRing.jwks`)."""
    if isinstance(keys, KeyRing):
        return kid != keys.active.kid and not published_as_upcoming(keys, kid) and any(key.kid == kid for key in keys.retired)
    return any(entry.get(RETIRED_MEMBER) is True or SEALED_AT_MEMBER in entry for entry in _jwk_entries(keys, kid))


def _jwk_entries(keys: KeySource, kid: str) -> list[dict[str, Any]]:
    """The JWKS entries that are usable key ``kid`` (so their other members may speak for it):
    every one :func:`find_verifier` could take the key from, those that omit the optional
    ``kid`` member (RFC 7517 section 4.5) included. A set merged from copies saved at different
    times lists a key more than once; what any of its entries says of a seal holds."""
    if not (isinstance(keys, Mapping) and isinstance(keys.get("keys"), list)):
        return []
    entries = []
    for jwk in keys["keys"]:
        if isinstance(jwk, dict) and jwk.get("kid", kid) == kid:
            try:
                if VerifyingKey.from_jwk(jwk).kid == kid:
                    entries.append(jwk)
            except SigningKeyError:
                continue
    return entries


def sealed_at(keys: KeySource, kid: str) -> dt.datetime | None:
    """When key ``kid`` was sealed (``plant signing-keys seal``), by ``keys``' account, or None.

    A ring knows its seals; a JWKS names them in a sealed key's entry (``plant_sealed_at``,
    :meth:`KeyRing.jwks`), read only from entries that are that usable key (:func:`_jwk_entries`;
    the earliest, should several name one).
    Anything a sealed key signed that names a later time was signed after the seal, by
    someone holding a copy of its private key. A seal time that cannot be read counts as
    a seal at the earliest time, so that nothing the key signed is taken for pre-seal.
    """
    if isinstance(keys, KeyRing):
        seal = keys.seal(kid)
        return _instant(seal.as_of) if seal is not None else None
    named = [_instant(entry[SEALED_AT_MEMBER]) for entry in _jwk_entries(keys, kid) if SEALED_AT_MEMBER in entry]
    return min(named, default=None)


# What a document names where a time goes but that is not an RFC 3339 time with an offset
# (a leap second, no offset, "tomorrow"): later than any seal, so a sealed key's document
# naming one is refused. People read such text as a date; the check must not skip it.
UNREADABLE_TIME = dt.datetime.max.replace(tzinfo=dt.UTC)


def time_named(value: Any) -> dt.datetime | None:
    """The time a document names in ``value``: None when it names none (the member is
    absent or null), :data:`UNREADABLE_TIME` when it cannot be read."""
    return None if value is None else aware_time(value) or UNREADABLE_TIME


def signed_after_its_seal(keys: KeySource, kid: str, named: dt.datetime | None) -> str | None:
    """Why a document key ``kid`` signed, naming no time later than ``named`` (see
    :func:`time_named`), must have been signed after that key's seal; None when it may
    predate the seal (or the key has none). A time before the seal proves nothing: whoever
    signs can backdate."""
    sealed = sealed_at(keys, kid)
    if sealed is None or named is None or named < sealed:
        return None
    if named == UNREADABLE_TIME:
        return (f"key {kid} was sealed at {sealed.isoformat()}, and the document names a time that cannot be read, "
                "which counts as after the seal: it may have been signed with a copy of a retired private key")
    return (f"key {kid} was sealed at {sealed.isoformat()}, and the document names {named.isoformat()}: "
            "it was signed after the seal, with a copy of a retired private key")


def _instant(text: Any) -> dt.datetime:
    return aware_time(text) or dt.datetime.min.replace(tzinfo=dt.UTC)


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: foreign characters, padding and stray bits are refused."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:  # unused low bits set: a second spelling of the same bytes
        raise ValueError("not the canonical base64url spelling")
    return data


def verify_b64url_signature(keys: KeySource, kid: Any, signature: Any, data: bytes, *, named: Any) -> bool:
    """Whether ``signature`` (strict unpadded base64url text) is key ``kid``'s over ``data``,
    a record that names the time ``named`` (RFC 3339 text): the check of Plant's own signed
    records (certificates, repair records), with a key ring or, offline, a JWKS. A sealed
    key's record that its seal does not list (:func:`listed_by_seal`), or that names a time
    at or after the seal (:func:`signed_after_its_seal`), was signed after it and does not
    verify; such a record must name its time, so one it lacks or that cannot be read counts
    as after the seal."""
    try:
        raw = b64url_decode(signature)
    except ValueError:
        return False
    verifier = find_verifier(keys, str(kid))
    return (verifier is not None and verifier.verify(raw, data) and listed_by_seal(keys, str(kid), raw)
            and signed_after_its_seal(keys, str(kid), aware_time(named) or UNREADABLE_TIME) is None)


def _candidate_keys(keys: KeySource, kid: str) -> Iterable[Any]:
    if isinstance(keys, Mapping) and "keys" in keys:
        return _keys_of_jwks(keys["keys"], kid)
    if isinstance(keys, Mapping):
        return keys.values()
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise JwsError(f"cannot look keys up in a {type(keys).__name__}")
    return keys


def _keys_of_jwks(entries: Any, kid: str) -> Iterator[VerifyingKey]:
    if not isinstance(entries, list):
        raise JwsError("a JWKS 'keys' member must be a list")
    for jwk in entries:
        if not isinstance(jwk, dict) or jwk.get("kid", kid) != kid:
            continue  # parsing only the keys that could match keeps RSA sets cheap
        try:
            yield VerifyingKey.from_jwk(jwk)
        except SigningKeyError:
            continue


def _split_compact(jws: Any) -> tuple[str, bytes]:
    """``(encoded header, signature bytes)`` of a detached compact JWS."""
    if not isinstance(jws, str):
        raise JwsError("a compact JWS is a string")
    parts = jws.split(".")
    if len(parts) != 3:
        raise JwsError("a compact JWS has exactly three parts")
    encoded_header, embedded_payload, encoded_signature = parts
    if embedded_payload:
        raise JwsError("expected detached content: the middle part must be empty")
    try:
        signature = b64url_decode(encoded_signature)
    except ValueError as exc:
        raise JwsError(f"signature part: {exc}") from exc
    return encoded_header, signature


def _parse_header(encoded_header: str) -> dict[str, Any]:
    header = _decode_header_json(encoded_header)
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:  # an array or object is unhashable
        raise JwsError(f"algorithm {alg!r} is not accepted")
    if not isinstance(kid, str) or not kid:
        raise JwsError("the header must name its key with a string 'kid'")
    if header.get("typ") != REPORT_TYPE:
        raise JwsError(f"header typ {header.get('typ')!r} is not {REPORT_TYPE!r}")
    if "crit" in header:
        raise JwsError(f"critical header parameters {header['crit']!r} are not understood")
    if header.get("b64", True) is not True:
        raise JwsError("unencoded payloads (RFC 7797) are not accepted")
    return header


def _decode_header_json(encoded_header: str) -> dict[str, Any]:
    try:
        text = b64url_decode(encoded_header).decode("utf-8")
        header = strict_json_loads(text)  # RFC 7515 §4: duplicate header names must be rejected
    except ValueError as exc:  # UnicodeDecodeError included
        raise JwsError(f"the protected header is not base64url JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise JwsError("the protected header must be a JSON object")
    return header


# Payload bytes base64url-encoded at a time into a signing input: a multiple of 3, so only the last pads.
SIGNING_INPUT_CHUNK = 3 << 20


def _signing_input(encoded_header: str, payload: bytes | bytearray) -> bytearray:
    """``header "." BASE64URL(payload)`` (RFC 7515 §5.1), written into one buffer a chunk of
    the payload at a time: a report's payload runs to tens of MB (some 40 at 200,000 findings),
    and encoding it whole held four copies of its base64 at once (the encoding, its URL-safe
    translation, the text, the signing input)."""
    signing_input = bytearray(encoded_header.encode("ascii"))
    signing_input += b"."
    with memoryview(payload) as whole:
        for start in range(0, len(whole), SIGNING_INPUT_CHUNK):
            signing_input += base64.urlsafe_b64encode(whole[start:start + SIGNING_INPUT_CHUNK])
    while signing_input.endswith(b"="):  # unpadded (RFC 7515 §2): at most two, of the last chunk
        del signing_input[-1]
    return signing_input
