"""Which stored digest a new digest is checked from: its base (:mod:`models.digest_check`).

The base is the newest stored digest with leaf or tombstone rows that can be trusted
(:func:`models.ledger_trust.base_problem`), looked for newest first. Rows anyone with
INSERT can add (unsigned, forged, copies of a signed document, published digests planted
as stored ones) must neither be trusted nor push a real digest out of reach, and the search
must stay bounded however many there are: it reads at most :data:`BASE_ROWS_READ` rows, for
at most :data:`BASE_SEARCH_SECONDS`, and says so when it stops short. A restore
(:mod:`models.repair`) holds a chain to the same base.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from sqlalchemy import desc, or_, select
from sqlalchemy.orm import Session

from models.audit_tables import LedgerDigest, LedgerDigestHead, LedgerDigestTombstone
from models.digest_check import BATCH, planted
from models.ledger_digest import digest_problem
from models.signing import KeyRing

BASES_TRIED = 30  # signed stored digests looked at, newest first, for one that can be trusted
BASE_ROWS_READ = 1_000  # stored digest rows with leaf or tombstone rows read at most in that search, signed or not
BASE_SEARCH_SECONDS = 60.0  # and for at most this long (looked at after each signed one that fails)


@dataclass(frozen=True)
class BaseSearch:
    """The stored digest a new digest is checked from (None: the genesis), each stored digest
    passed over on the way (with why), and why the search stopped before the oldest, if it did."""

    digest: LedgerDigest | None
    passed_over: list[str]
    cut_short: str | None = None


def trusted_base(session: Session, keyring: KeyRing, problem_of: Any, passed_over: list[str] | None = None) -> LedgerDigest | None:
    """:func:`base_search`'s digest; why it stopped short, if it did, and what it passed over
    are appended to ``passed_over``."""
    search = base_search(session, keyring, problem_of)
    if passed_over is not None:
        passed_over += ([search.cut_short] if search.cut_short else []) + search.passed_over
    return search.digest


def base_search(session: Session, keyring: KeyRing, problem_of: Any) -> BaseSearch:
    """The newest stored digest with leaf or tombstone rows whose ``problem_of(session,
    digest, keyring)`` is None (:func:`models.ledger_trust.base_problem`); None when there is
    none. Only digests whose signed document verifies count toward the :data:`BASES_TRIED`
    looked at, and no published digest planted as a stored one (:func:`planted`), and copies
    of one document count once, so rows made up through SQL cannot push a real one out of
    reach; each signed one passed over is named, with why, and the others counted. At most
    :data:`BASE_ROWS_READ` rows are read, for at most :data:`BASE_SEARCH_SECONDS`: rows made up
    by the million (each a signature check) once made every digest read them all. Stopped
    short, it says so (``cut_short``): heads are then checked from the genesis, as with no
    digest, and a restore refuses a chain it cannot hold to a digest."""
    with_rows = or_(*(select(table.digest_id).where(table.digest_id == LedgerDigest.id).exists()
                      for table in (LedgerDigestHead, LedgerDigestTombstone)))
    query = (select(LedgerDigest).where(with_rows, ~planted()).order_by(desc(LedgerDigest.as_of), desc(LedgerDigest.id))
             .limit(BASE_ROWS_READ).execution_options(yield_per=BATCH))
    passed: list[str] = []
    tried: set[str] = set()  # signatures: a copy of a signed document, made through SQL, counts once
    unsigned = read = 0
    deadline = time.monotonic() + BASE_SEARCH_SECONDS
    with closing(session.scalars(query)) as candidates:
        for read, digest in enumerate(candidates, 1):
            if digest_problem(digest.document, keyring) is not None:
                unsigned += 1
                continue
            problem = problem_of(session, digest, keyring)
            if problem is None:
                return BaseSearch(digest, _not_signed(unsigned) + passed)
            passed.append(f"digest {digest.id} ({digest.as_of.isoformat()}): {problem}")
            tried.add(digest.document["signature"])
            if len(tried) == BASES_TRIED or time.monotonic() > deadline:
                return BaseSearch(None, _not_signed(unsigned) + passed, _stopped_after(read, len(tried)))
    return BaseSearch(None, _not_signed(unsigned) + passed, _stopped_after(read, len(tried)) if read == BASE_ROWS_READ else None)


def _not_signed(rows: int) -> list[str]:
    return [f"{rows} stored digest row(s) with leaf or tombstone rows whose document Plant did not sign (unsigned, "
            "forged, or signed by a key this ring does not hold)"] if rows else []


def _stopped_after(rows: int, signed: int) -> str:
    return (f"the search for a trusted digest stopped after {rows} row(s) with leaf or tombstone rows, {signed} of them "
            f"signed documents (at most {BASES_TRIED} signed, {BASE_ROWS_READ} rows, {BASE_SEARCH_SECONDS:g} s): older "
            "digests were not looked at")
