"""A finished audit run's findings read in keyset pages, for its exports.

A finished run takes no more findings and its findings take no UPDATE or DELETE (triggers:
migrations 0014 and 0015), so reading them page by page, by id, in autocommit, gives exactly
the rows one read would. What an export needs of all of them is made page by page, and a
page's rows are let go before the next is read:

- the canonical bytes of the report's ``findings`` array: RFC 8785 writes an array as ``[``,
  its items' canonical bytes joined by ``,``, and ``]`` (each string NFC-normalized on its
  own, so an item's bytes are the same alone as in the array), so the bytes of each page's
  items, joined, are the array's;
- the count and SHA-256 of those bytes, what the run's close signs
  (:func:`models.audit_findings.findings_hashed`: the array's bytes are the same at any depth);
- a fingerprint of each page read, so a second pass (the CSV's, after the check) can tell
  it reads the rows the first one checked.

Memory: one page of rows and resources, plus the array's bytes where they are kept (the JSON
export signs them whole).

A running run takes findings as it is read, so its pages are not read by id, statement after
statement (a batch committing between two would be listed in part): :func:`running_finding_pages`
reads them with one statement, as of its snapshot, through a cursor the server holds, and hands
them out a page at a time all the same (:func:`models.report_reads.read_report`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from models.audit_findings import finding_resource
from models.audit_tables import AuditFinding
from models.canonical import canonical_bytes
from models.db_statements import driver_sql, held_pages
from models.errors import CanonicalizationError

PAGE_FINDINGS = 1_000
# The report's "findings" array lies in the report, which lies in its document
# (models.report_reads.report_payload): two arrays or objects enclose it.
FINDINGS_ENCLOSED = 2


def finding_pages(session: Session, run_id: uuid.UUID, *, size: int | None = None) -> Iterator[list[Row[Any]]]:
    """The run's findings in id order, ``size`` (:data:`PAGE_FINDINGS`) at a time, as rows of their columns (as
    :func:`models.audit_findings.all_findings` reads them), each page read by its own statement
    after the last id of the one before. For a finished run only (see the module doc)."""
    size = size or PAGE_FINDINGS
    after: int | None = None
    while True:
        statement = select(*AuditFinding.__table__.c).where(AuditFinding.run_id == run_id)
        if after is not None:
            statement = statement.where(AuditFinding.id > after)
        rows = list(session.execute(statement.order_by(AuditFinding.id).limit(size)))
        if rows:
            yield rows
        if len(rows) < size:
            return
        after = rows[-1].id


# A running run's findings as of one statement, in id order (as models.audit_findings.all_findings reads them).
_FINDINGS_AS_OF_NOW = driver_sql(select(*AuditFinding.__table__.c).where(AuditFinding.run_id == bindparam("run"))
                                 .order_by(AuditFinding.id))


def running_finding_pages(session: Session, run_id: uuid.UUID, *,
                          size: int | None = None) -> AbstractContextManager[Iterator[list[Any]]]:
    """A running run's findings as one statement reads them (its snapshot: every batch that
    committed before it, whole, and none after), in id order, ``size`` (:data:`PAGE_FINDINGS`)
    at a time, as rows read by attribute: :func:`models.db_statements.held_pages`. The
    statement runs as the block is entered; the cursor is closed as it is left."""
    return held_pages(session, _FINDINGS_AS_OF_NOW, {"run": run_id}, size=size or PAGE_FINDINGS,
                      row_factory=namedtuple_row)


def canonical_items(resources: Sequence[dict[str, Any]], *, first: int) -> bytes:
    """The canonical bytes of ``resources`` as items of the report's findings array, joined
    by ``,`` with no brackets. ``first``: the index of the first in the array, so that a
    refusal (``CanonicalizationError``) names the item as canonicalizing the whole report does."""
    try:
        return canonical_bytes(list(resources), enclosed=FINDINGS_ENCLOSED)[1:-1]
    except CanonicalizationError:
        for index, resource in enumerate(resources, start=first):
            canonical_bytes(resource, enclosed=FINDINGS_ENCLOSED + 1, path=f"$.findings[{index}]")
        raise  # pragma: no cover - an item above raises


def fingerprint(rows: Sequence[Row[Any]]) -> bytes:
    """A page's fingerprint, the same for two reads of the same rows: the SHA-256 of each
    row's every column, by its ``repr`` (which writes no line break), one line a row."""
    lines = "".join(f"{tuple(row)!r}\n" for row in rows)
    return hashlib.sha256(lines.encode("utf-8", "backslashreplace")).digest()


@dataclass
class FindingsArray:
    """The report's ``findings`` array, made a page of rows at a time (:meth:`add`): each
    page's resources and, as asked, the array's canonical bytes (``[`` to ``]``) appended to
    ``into`` (kept: the JSON export signs them) and fed to ``hashing`` (what a finished run's
    close signs). Asked for neither (a running run's CSV), it makes no canonical bytes at all."""

    into: bytearray | None = None
    hashing: Any = None  # a hashlib object, started empty
    count: int = 0  # the items added

    def __post_init__(self) -> None:
        self._write(b"[")

    def add(self, rows: Sequence[Any]) -> list[dict[str, Any]]:
        """The resources of the next page of rows, its items' bytes written where asked. A value
        canonical JSON cannot hold raises ``CanonicalizationError`` (naming its item as
        canonicalizing the whole report does), with nothing of the page written or counted."""
        resources = [finding_resource(row) for row in rows]
        if self.into is not None or self.hashing is not None:
            self._write((b"," if self.count else b"") + canonical_items(resources, first=self.count))
        self.count += len(resources)
        return resources

    def close(self) -> None:
        """End the array: no page is added after."""
        self._write(b"]")

    def _write(self, data: bytes) -> None:
        if self.hashing is not None:
            self.hashing.update(data)
        if self.into is not None:
            self.into += data


@dataclass
class PagedFindings:
    """One pass over a finished run's findings (:func:`read_findings`)."""

    array: FindingsArray  # hashed, its bytes kept where asked
    pages: list[bytes] = field(default_factory=list)  # each page's fingerprint, in order
    error: CanonicalizationError | None = None  # the first value canonical JSON cannot hold: read no further

    def hashed(self) -> dict[str, Any]:
        """:func:`models.audit_findings.findings_hashed` of the findings read (or the refusal
        canonicalizing them met), for :func:`models.audit_record.close_problem`."""
        if self.error is not None:
            raise self.error
        return {"count": self.array.count, "sha256": self.array.hashing.copy().digest().hex()}


def read_findings(session: Session, run_id: uuid.UUID, *, into: bytearray | None = None,
                  each_page: Callable[[list[dict[str, Any]]], None] | None = None) -> PagedFindings:
    """Read the finished run's findings page by page: their count, the hash of their array's
    canonical bytes and each page's fingerprint; ``into``: where the array's bytes (``[`` to
    ``]``) are appended, if they are kept; ``each_page``: called with each page's resources. Stops at the first
    value canonical JSON cannot hold (``error``)."""
    read = PagedFindings(FindingsArray(into, hashlib.sha256()))
    for rows in finding_pages(session, run_id):
        read.pages.append(fingerprint(rows))
        try:
            resources = read.array.add(rows)
        except CanonicalizationError as exc:
            read.error = exc
            return read
        if each_page is not None:
            each_page(resources)
        del resources  # not held while the next page is read and canonicalized
    read.array.close()
    return read
