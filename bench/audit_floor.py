"""The floor of a full audit: read every version and verify its chain, and nothing else.

Two spawned processes each take half of the UUID space, one per core, as the bench's audit
worker runs two. Each one streams ``entity_versions`` in ``(entity_id, version)`` order,
as the audit's binary rows, through a server-side cursor. It runs Plant's own
:func:`models.chain_verification.verify_versions` on each entity's versions: every content hash, every
link, and the head signature.

The audit also does work this floor leaves out:
- it reads the entity rows and compares each row with its head version;
- it evaluates the constitution's rules;
- it writes findings, checkpoints and the job's progress.

The clock starts when both processes are connected and ready, and stops when the last
one finishes. The floor's ratio to ``COPY`` is the best any audit on this stack can reach
here, whatever else is made faster.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

from models.audit_runs import id_ranges
from models.chain_verification import verify_versions
from models.keys import keyring_from_settings
from models.settings import Settings, libpq_url

RANGE_SQL = (
    "SELECT entity_type, entity_id, version, content, content_hash, prev_link, link_hash, kid, signature "
    "FROM entity_versions WHERE entity_id BETWEEN %s AND %s ORDER BY entity_id, version"
)
FETCH_ROWS = 5_000


def _verify_range(settings: Settings, low: Any, high: Any, ready: Any, results: Any) -> None:
    keyring = keyring_from_settings(settings)
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        ready.wait()
        started = time.time()
        checked = _checked(conn, keyring, low, high)
    results.put((started, time.time(), checked))


def verify_range_here(settings: Settings, low: Any = None, high: Any = None) -> int:
    """The floor's loop in this process, over the whole id space by default (for
    ``bench/audit_steps.py``): how many versions it checked."""
    whole = id_ranges(1)[0]
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        return _checked(conn, keyring_from_settings(settings), low or whole[0], high or whole[1])


def _checked(conn: psycopg.Connection, keyring: Any, low: Any, high: Any) -> int:
    checked = 0
    cursor = conn.cursor("chain_floor", binary=True, row_factory=namedtuple_row)
    cursor.execute(RANGE_SQL, [low, high])
    rows: list[Any] = []
    while batch := cursor.fetchmany(FETCH_ROWS):
        for row in batch:
            if rows and row.entity_id != rows[0].entity_id:
                checked += _verified(rows, keyring)
                rows = []
            rows.append(row)
    return checked + (_verified(rows, keyring) if rows else 0)


def _verified(rows: list[Any], keyring: Any) -> int:
    count, findings = verify_versions(rows, keyring=keyring, signatures="heads")
    if findings:
        raise RuntimeError(f"clean bench data failed chain verification: {findings[:3]}")
    return count


def chain_floor_seconds(settings: Settings, *, processes: int = 2) -> tuple[float, int]:
    """Wall seconds for ``processes`` processes to verify every chain, and the versions verified."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_verify_range, args=(settings, low, high, ready, results))
               for low, high in id_ranges(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if any(worker.exitcode for worker in workers):
        raise RuntimeError("a chain-floor process failed; see its traceback above")
    spans = [results.get(timeout=10) for _ in workers]
    return max(end for _, end, _ in spans) - min(start for start, _, _ in spans), sum(n for _, _, n in spans)
