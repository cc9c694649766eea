"""Canonical bytes for everything the hash chain signs: RFC 8785 (JCS) plus NFC.

Two parties must turn the same logical record into the same bytes, or a signature made by
one cannot be checked by the other. :func:`canonical_bytes` first walks the value into a
plain JSON tree, normalising and checking as it goes, and then serialises it with JCS
(sorted keys by UTF-16 code units, no whitespace, ECMAScript number formatting):

* Strings, object keys included, are NFC-normalised, so "é" typed precomposed or as
  "e" + combining accent hashes the same. Note that NFC also rewrites composition
  exclusions (U+FB33 becomes U+05D3 U+05BC); two keys that become equal are rejected.
  Strings holding lone surrogates are not Unicode text and are rejected.
* Integers must lie within ±(2**53 − 1), the range every JSON reader holds exactly.
  ``bool`` is kept as ``true``/``false``, never treated as the integer it subclasses.
* Float rule: only finite floats (NaN and ±Infinity are rejected). A float is emitted the
  way JCS emits the IEEE double, so a float with an integral value is written as that
  integer (``1.0`` → ``1``, ``-0.0`` → ``0``) and every other float uses the ECMAScript
  shortest round-trip form (``4.50`` → ``4.5``, ``1E30`` → ``1e+30``). Hence ``1.0`` and
  ``1`` canonicalise identically. One more refusal keeps canonical output re-readable:
  ECMAScript writes integral doubles below 1e21 as plain digits, which JSON readers parse
  back as integers, so integral floats with magnitude in (2**53 − 1, 1e21) are rejected
  like the integers they would become; 1e21 and above are written ``1e+21`` and accepted.
* ``None`` → ``null``; tuples → arrays; object keys must be ``str``.
* Arrays and objects nest at most :data:`MAX_NESTING_DEPTH` (64) levels, the outermost
  counting as one. Real records are a few levels deep; the bound keeps the recursive
  walk far from Python's recursion limit, so a deeply nested client value (entity
  ``attributes``) is refused like any other, instead of failing with ``RecursionError``.
* Model values are converted to strings: ``uuid.UUID`` → canonical lowercase form;
  timezone-aware ``datetime`` → RFC 3339 in UTC, always with microseconds and ``Z``
  (``2024-05-01T12:00:00.000000Z``), naive ones are rejected; ``date`` → ``YYYY-MM-DD``;
  ``enum.Enum`` → its value (converted in turn). ``Decimal``, ``bytes``, sets and any
  other type are rejected rather than guessed at.

Every rejection is a :class:`CanonicalizationError` naming the JSON path of the
offending value (``$.skills[2].level``) in its message and its ``field`` extension.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import math
import re
import unicodedata
import uuid
from typing import Any

import rfc8785

from models.errors import CanonicalizationError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_NESTING_DEPTH = 64  # arrays and objects inside one another, the outermost included
ECMASCRIPT_EXPONENT_FROM = 1e21  # from here on ECMAScript writes numbers as "1e+21"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


def canonical_bytes(value: Any, *, enclosed: int = 0, path: str = "$") -> bytes:
    """The RFC 8785 bytes of ``value`` after the normalisation rules in the module docstring.

    ``enclosed``: the arrays and objects ``value`` will be written inside, counted against
    :data:`MAX_NESTING_DEPTH` (a value's bytes are the same inside another's, but one that
    fits alone may not fit there); ``path``: where ``value`` stands in them, as a refusal
    names it. Pure: the input is not modified. Raises :class:`CanonicalizationError`.
    """
    tree = to_json_tree(value, path, depth=enclosed)
    if _json_layout_is_jcs(tree):
        return json.dumps(tree, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    try:
        return rfc8785.dumps(tree)
    except rfc8785.CanonicalizationError as exc:  # pragma: no cover - the walk rejects these first
        raise CanonicalizationError(str(exc), field="$") from exc


def _json_layout_is_jcs(tree: JSONValue) -> bool:
    """Whether the C JSON encoder, in JCS's layout, writes exactly RFC 8785's bytes for ``tree``.

    It does for a normalized tree (no lone surrogates, safe integers) unless a float is
    present (ECMAScript number spelling differs from Python's) or an object key holds a
    character beyond U+FFFF (JCS sorts keys by UTF-16 code units, Python by code points;
    the two orders differ only there). Strings are escaped identically: ``"``, ``\\``
    and control characters, lowercase ``\\u00xx``. A property test holds this against
    the rfc8785 library on generated values.
    """
    pending = [tree]
    while pending:
        value = pending.pop()
        if type(value) is float:
            return False
        if type(value) is dict:
            for key, item in value.items():
                if not key.isascii() and max(map(ord, key)) > 0xFFFF:
                    return False
                pending.append(item)
        elif type(value) is list:
            pending.extend(value)
    return True


def to_json_tree(value: Any, path: str = "$", *, depth: int = 0) -> JSONValue:
    """``value`` as plain, NFC-normalised JSON types, checked against the canonical rules.

    ``depth`` is the number of arrays and objects that enclose ``value``.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        # Before int/str: IntEnum and str-mixin enums are instances of those too.
        return to_json_tree(value.value, path, depth=depth)
    if isinstance(value, int):
        return _checked_int(value, path)
    if isinstance(value, float):
        return _checked_float(value, path)
    if isinstance(value, str):
        return _checked_text(value, path)
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_NESTING_DEPTH:
        raise _error(path, f"arrays and objects are nested more than {MAX_NESTING_DEPTH} deep")
    if isinstance(value, dict):
        return _object_tree(value, path, depth + 1)
    if isinstance(value, (list, tuple)):
        return [to_json_tree(item, f"{path}[{index}]", depth=depth + 1) for index, item in enumerate(value)]
    return _model_value_text(value, path)


def as_jsonb_keeps_it(tree: JSONValue, path: str = "$") -> JSONValue:
    """``tree`` (from :func:`to_json_tree`), if PostgreSQL's jsonb gives it back as it is.

    jsonb keeps a number as a ``numeric`` and writes it back without an exponent: ``1e+21``
    comes back as ``1000000000000000000000``, which every reader takes for an integer
    outside ±(2**53 − 1). A row holding such a float could never match the version that
    signed it, so it is refused (``CanonicalizationError``): integral floats of magnitude 1e21
    and up, since :func:`to_json_tree` refuses those between 2**53 and 1e21 already.
    """
    pending: list[tuple[JSONValue, str]] = [(tree, path)]
    while pending:
        value, where = pending.pop()
        if type(value) is float and abs(value) >= ECMASCRIPT_EXPONENT_FROM:
            raise _error(where, f"{value!r} would come back from the database as an integer outside ±(2**53 - 1)")
        if isinstance(value, dict):
            pending.extend((item, _member_path(where, key)) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
    return tree


# Characters that draw nothing though they are neither whitespace nor a format or control
# character: the Hangul fillers, the blank Braille pattern, the combining grapheme joiner,
# the Khmer inherent vowels and the variation selectors (which alone show nothing).
INVISIBLE = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5\u180b\u180c\u180d\u180f"
    + "".join(map(chr, range(0xFE00, 0xFE10))) + "".join(map(chr, range(0xE0100, 0xE01F0))))


def normalize_text(s: str) -> str:
    """``s`` in Unicode Normalization Form C, as stored and hashed."""
    return unicodedata.normalize("NFC", s)


def sha256(data: bytes) -> bytes:
    """The SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def _checked_int(value: int, path: str) -> int:
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise _error(path, f"integer {value} is outside ±(2**53 - 1)")
    return int(value)


def _checked_float(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise _error(path, f"{value} is not a finite number")
    if value.is_integer() and MAX_SAFE_INTEGER < abs(value) < ECMASCRIPT_EXPONENT_FROM:
        raise _error(path, f"{value!r} would be written as an integer outside ±(2**53 - 1)")
    return float(value)


def _checked_text(value: str, path: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _error(path, "string contains a lone surrogate") from None
    return normalize_text(value)


def _object_tree(value: dict[Any, Any], path: str, depth: int) -> dict[str, JSONValue]:
    tree: dict[str, JSONValue] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _error(path, f"object key {key!r} is a {type(key).__name__}, not a string")
        child = _member_path(path, key)
        normalized = _checked_text(key, child)
        if normalized in tree:
            raise _error(child, "two keys are equal after NFC normalization")
        tree[normalized] = to_json_tree(item, child, depth=depth)
    return tree


def _model_value_text(value: Any, path: str) -> str:
    """Strings for the non-JSON types model code passes in; anything else is refused."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return _rfc3339_utc(value, path)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise _error(path, f"{type(value).__name__} has no canonical JSON form")


def _rfc3339_utc(value: dt.datetime, path: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise _error(path, "datetime must be timezone-aware")
    utc = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    # A fixed six-digit fraction: the same instant must never have two spellings.
    return utc.isoformat(timespec="microseconds") + "Z"


def _member_path(path: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"{path}['{visible_text(escaped)}']"


def visible_text(text: str) -> str:
    """``text`` with every character that is not printable (control codes such as ESC and
    CR, format characters such as bidi overrides, separators other than the space) written
    as a ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN`` escape: for text from a document that is
    shown on a terminal, where such characters could rewrite or hide what is printed.
    Printable text is returned unchanged."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _error(path: str, reason: str) -> CanonicalizationError:
    return CanonicalizationError(f"{path}: {reason}", field=path)


def rfc3339_utc(value: dt.datetime | None) -> str | None:
    """An aware datetime as RFC 3339 in UTC with a ``Z`` (None stays None); for API output."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def aware_time(value: Any) -> dt.datetime | None:
    """``value`` read as an ISO 8601 / RFC 3339 time with an offset; None for anything else."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.utcoffset() is not None else None


def matches_canonical(value: Any, stored: bytes) -> bool:
    """Whether ``value`` canonicalizes to ``stored`` (canonical JSON bytes).

    The fast path serializes with the C JSON encoder in JCS's layout (sorted keys, no
    spaces, no ASCII escaping): if that equals ``stored``, ``value`` is exactly what was
    stored (the encoding is injective) and canonical JSON is idempotent, so the answer
    is yes. Anything else (an NFD string, ``1.0`` for ``1``, non-BMP keys, float
    spellings) is decided by real canonicalization, exactly as a byte comparison would.
    (Which stored strings must be NFC already is the caller's to say: ``models.chain_verification``.)
    """
    try:
        fast = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if fast.encode() == stored:
            return True
    except (TypeError, ValueError, RecursionError):  # RecursionError: a row nested ~1,000 deep (edited by SQL)
        pass
    try:
        return canonical_bytes(value) == stored
    except CanonicalizationError:
        return False


def strict_json_loads(document: bytes | str) -> JSONValue:
    """Parse ``document`` so that every reader sees the same value: the parse for signed JSON.

    Refused, each as ``ValueError``: a member name repeated in any object (Python's reader
    keeps the last, others keep the first, so a forged member placed before the real one
    would be read by a person or another tool while the signature is checked over the
    other), ``NaN`` and ``±Infinity`` (not JSON), and nesting deep enough to exhaust the
    parser. Anything else :func:`json.loads` refuses is a ``ValueError`` already.
    """
    try:
        return json.loads(document, object_pairs_hook=_unique_members, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValueError("JSON is nested too deeply") from exc


def parse_canonical_json(document: bytes | str) -> JSONValue:
    """The value of ``document``, which must be exactly its own canonical bytes.

    On top of :func:`strict_json_loads`, the UTF-8 bytes of ``document`` must equal
    :func:`canonical_bytes` of what they parse to, so a document that a canonical writer
    would spell differently is refused: whitespace, member order, number spellings
    (``3.0``, ``3e0``), string escapes, non-NFC text, a byte order mark or a trailing
    newline. Raises ``ValueError``.
    """
    data = document.encode("utf-8") if isinstance(document, str) else bytes(document)
    value = strict_json_loads(data)
    try:
        canonical = canonical_bytes(value)
    except CanonicalizationError as exc:
        raise ValueError(f"not canonical JSON: {exc}") from exc
    if canonical != data:
        raise ValueError(f"not canonical JSON (RFC 8785): {_first_difference(data, canonical)}")
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"duplicate member name {name!r}")
        members[name] = value
    return members


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _first_difference(data: bytes, canonical: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(data, canonical, strict=False)) if a != b), min(len(data), len(canonical)))
    return f"differs from the canonical form at byte {at}"
