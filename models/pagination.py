"""Opaque keyset cursors for list endpoints.

A page token encodes the sort key of the last row returned (``created_at``, ``id``);
the next page starts strictly after it, so concurrent inserts never shift or repeat rows.
Tokens are base64url JSON: opaque to clients, cheap to validate.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from dataclasses import dataclass

from models.errors import InvalidInput


@dataclass(frozen=True)
class Cursor:
    created_at: dt.datetime
    id: uuid.UUID


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps([cursor.created_at.isoformat(), str(cursor.id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """Parse a page token; any malformed token is an ``InvalidInput`` naming the field."""
    try:
        padded = token + "=" * (-len(token) % 4)
        created_at, ident = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = Cursor(dt.datetime.fromisoformat(created_at), uuid.UUID(ident))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidInput("page_token is not a token this API issued", field="page_token") from exc
    if cursor.created_at.tzinfo is None:
        raise InvalidInput("page_token is not a token this API issued", field="page_token")
    return cursor
