"""Opaque keyset cursors for list endpoints.

A page token encodes the sort key of the last row returned (``created_at``, ``id``);
the next page starts strictly after it, so concurrent inserts never shift or repeat rows.
A row committed during a walk whose ``created_at`` (its transaction's start) sorts behind the
cursor is on no page of that walk: a walk lists what was committed before its first page
(README, "Listings"). Tokens are base64url JSON: opaque to clients, cheap to validate.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from models.errors import InvalidInput

T = TypeVar("T")


@dataclass(frozen=True)
class Cursor:
    created_at: dt.datetime
    id: uuid.UUID


def encode_cursor(cursor: Cursor) -> str:
    return page_token(json.dumps([cursor.created_at.isoformat(), str(cursor.id)], separators=(",", ":")))


def decode_cursor(token: str) -> Cursor:
    """Parse a page token; any malformed token is an ``InvalidInput`` naming the field.

    The decoded JSON is checked to be the two strings :func:`encode_cursor` writes before
    either is parsed: a client can send any JSON, and the parsers' errors for other types
    (``uuid.UUID(123)`` raises ``AttributeError``) are not ones to rely on.
    """
    try:
        fields = json.loads(page_token_text(token))
        if not _is_cursor_pair(fields):
            raise ValueError("a page token holds two strings")
        created_at, ident = fields
        cursor = Cursor(dt.datetime.fromisoformat(created_at), uuid.UUID(ident))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise invalid_page_token() from exc
    if cursor.created_at.tzinfo is None:
        raise invalid_page_token()
    return cursor


def _is_cursor_pair(fields: Any) -> bool:
    return isinstance(fields, list) and len(fields) == 2 and all(isinstance(field, str) for field in fields)


def page_token(text: str) -> str:
    """``text`` as a page token: unpadded base64url (the inverse of :func:`page_token_text`)."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def page_token_text(token: str) -> str:
    """The text inside an (unpadded base64url) page token; anything else is :func:`invalid_page_token`."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_page_token() from exc


def invalid_page_token() -> InvalidInput:
    return InvalidInput("page_token is not a token this API issued", field="page_token")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str | None


def keyset_page(session: Session, query: Select, model: Any, *, page_size: int, page_token: str | None) -> Page:
    """Run ``query`` (a ``select(model)``) newest first, one page after ``page_token``.

    ``model`` must have ``created_at`` and ``id`` columns; an index on them (or on a
    filter column followed by them) serves the query.
    """
    rows = list(session.scalars(keyset_query(query, model, page_size=page_size, page_token=page_token)))
    return page_of(rows, page_size)


def keyset_query(query: Select, model: Any, *, page_size: int, page_token: str | None) -> Select:
    """``query`` newest first, after ``page_token``, limited to one page and one row more (which
    says whether there is a next page: :func:`page_of`)."""
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(page_size + 1)
    if page_token:
        after = decode_cursor(page_token)
        query = query.where(
            or_(
                model.created_at < after.created_at,
                and_(model.created_at == after.created_at, model.id < after.id),
            )
        )
    return query


def page_of(rows: list[Any], page_size: int) -> Page:
    """The page of ``rows`` (a :func:`keyset_query`'s, each with ``created_at`` and ``id``)."""
    if len(rows) <= page_size:
        return Page(rows, None)
    last = rows[page_size - 1]
    return Page(rows[:page_size], encode_cursor(Cursor(last.created_at, last.id)))
