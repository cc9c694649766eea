"""Reading the database's json and jsonb values.

Every engine decodes json and jsonb with :func:`load_json`, which reads a value Python cannot
take exactly (nested too deeply, a number too long, a fraction a float would round) as the
:data:`UNREADABLE_JSON` marker instead of failing the read of its whole row.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

# What a json or jsonb value Python cannot read stands for: nested deeper than its recursion
# limit, a number of more than 4,300 digits, a fraction too large for a float, which Python
# reads as infinity and writes back as ``Infinity``, which is not JSON, or a fraction a float
# would round, ``100.0000000000000000001`` (PostgreSQL takes all four). It holds a NUL, which no jsonb value can, so it never equals anything stored (a
# signed head version's content, say) and every check of it fails, instead of every read of
# its row: one such value in a running audit run stopped its close and its exports for good.
UNREADABLE_JSON = {"plant.unreadable": "\u0000a JSON value Python cannot read (nested too deeply, or a number too long "
                                       "or too large)"}


def _finite_float(text: str) -> float:
    """The float ``text`` spells, if it spells one exactly.

    Plant writes a float as its shortest spelling (``repr``) and jsonb keeps that decimal
    exactly, writing it back with no exponent (``0.0000001`` for ``1e-07``): the same number.
    A different decimal that rounds to the same float, ``100.0000000000000000001`` set
    through SQL, would read as ``100.0`` and match a head that signed ``100``, while every SQL
    reader saw another number than the one signed; so it is not a float Python can read.
    """
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]}... is too large for a float")
    if text != repr(value) and Decimal(text) != Decimal(repr(value)):
        raise ValueError(f"{text[:20]}... is not a float: it would read as {value!r}")
    return value


# One decoder for every value: ``json.loads`` with a keyword builds a new one per call, which
# cost the full audit 3 µs an entity row (its ``attributes``) for ``{}``.
_JSON_DECODER = json.JSONDecoder(parse_float=_finite_float)


def load_json(data: str | bytes) -> Any:
    """``json.loads`` for the database's json and jsonb values (see :data:`UNREADABLE_JSON`);
    PostgreSQL sends them as UTF-8."""
    try:
        return _JSON_DECODER.decode(data if isinstance(data, str) else str(data, "utf-8"))
    except (RecursionError, ValueError):  # UnicodeDecodeError is a ValueError
        return dict(UNREADABLE_JSON)
