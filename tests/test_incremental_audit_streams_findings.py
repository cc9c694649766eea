"""An incremental run writes its findings as it finds them, and records what it recorded when
it held them all.

:func:`models.incremental_audit.audit_since_latest_digest` collected every finding
(``IncrementalResult.findings``) and the run wrote them after the audit; against a digest
every entity fails, that was a finding per entity, all held. Each is now handed to a sink as
it is found (a batch of examined entities' at a time), and the chains' counts are summed as
they come. The old audit is kept verbatim in ``tests/test_audit_start_streams_findings.py``
(:func:`old_audit_since_latest_digest`): here both start the same run over data that takes
every path a finding comes by (several batches of suspects, rolled-back leaves, a chain grown
behind its row, chains no row holds over more than a page, vanished leaves, an id examined
under two types), and must sign and write the same bytes, in the same order, with the same ids.
"""

from __future__ import annotations

import io
import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.audit_data import INDUSTRY_COLUMNS, VERSION_COLUMNS, Slice, _copy_text, _rows
from models.audit import ROWLESS_PAGE, FindingRow
from models.audit_runs import start_run
from models.incremental_audit import BATCH, audit_since_latest_digest
from models.ledger_store import store_digest
from models.settings import Settings
from models.signing import KeyRing
from tests.conftest import EMBEDDER
from tests.test_audit import lift_guard
from tests.test_audit_start_streams_findings import _started_by, old_start_run, rowless

MARKED = 2 * BATCH + 230  # rows marked deleted through SQL after the digest: three batches of suspects
ROLLED, GROWN, GONE = 4, 3, 5
INCREMENTAL = {"since": "latest-digest"}


def _industries(session: Session, settings: Settings, steward: uuid.UUID, count: int) -> list[uuid.UUID]:
    """``count`` industries of two signed versions each (the real chain code, COPYed in), ids in order."""
    industries, versions = io.StringIO(), io.StringIO()
    for industry, rows in _rows(Slice(settings, 0, count, 2, steward)):
        industries.write("\t".join(_copy_text(v) for v in industry) + "\n")
        for row in rows:
            versions.write("\t".join(_copy_text(v) for v in row) + "\n")
    with session.connection().connection.driver_connection.cursor() as cursor:
        with cursor.copy(f"COPY industries {INDUSTRY_COLUMNS} FROM STDIN") as copy:
            copy.write(industries.getvalue())
        with cursor.copy(f"COPY entity_versions {VERSION_COLUMNS} FROM STDIN") as copy:
            copy.write(versions.getvalue())
    return sorted(session.scalars(text("SELECT id FROM industries WHERE name LIKE 'Bench industry %'")))


def _every_path(session: Session, settings: Settings, keyring: KeyRing, steward: uuid.UUID) -> None:
    """A digest of many industries, then, through SQL: most rows marked deleted (each a
    suspect, checked again), a few rolled back to their first version (the leaf gone from the
    chain: ``head-rolled-back``), a few left at their leaf with a version forged behind them
    (the counts unbalanced: the search for grown chains), chains no row holds (more than a
    page of ``entity-row-missing``), leaves whose row and chain are gone (``entity-deleted``),
    and an agent row under the id of a marked industry (one id examined under two types)."""
    ids = _industries(session, settings, steward, MARKED + ROLLED + GROWN + GONE)
    store_digest(session, keyring=keyring)
    marked, rest = ids[:MARKED], ids[MARKED:]
    rolled, grown, gone = rest[:ROLLED], rest[ROLLED : ROLLED + GROWN], rest[ROLLED + GROWN :]
    session.execute(text("UPDATE industries SET deleted_at = now() WHERE id = ANY(:ids)"), {"ids": marked})
    session.execute(text(  # back at their first version, fields and head (plain UPDATE, no key)
        "UPDATE industries SET description = convert_from(v.content, 'UTF8')::jsonb ->> 'description', version = 1,"
        " head_link_hash = v.link_hash FROM entity_versions v WHERE v.entity_id = industries.id AND v.version = 1"
        " AND industries.id = ANY(:ids)"), {"ids": rolled})
    lift_guard(session, "DELETE FROM entity_versions WHERE entity_id = ANY(:ids) AND version = 2", ids=rolled)
    session.execute(text(
        "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, link_hash,"
        " kid, signature, actor) SELECT entity_type, entity_id, 3, content, content_hash, link_hash,"
        " sha256(link_hash), kid, signature, 'intruder' FROM entity_versions WHERE entity_id = ANY(:ids) AND version = 2"),
        {"ids": grown})
    lift_guard(session, "DELETE FROM entity_versions WHERE entity_id = ANY(:ids)", ids=gone)
    lift_guard(session, "DELETE FROM industries WHERE id = ANY(:ids)", table="industries", ids=gone)
    rowless(session, ROWLESS_PAGE + 77, keyring)
    session.execute(text(
        "INSERT INTO agents (id, name, status, tags, attributes, version, head_link_hash, deleted_at, governance_agent_id)"
        " SELECT id, 'Decoy', 'active', tags, attributes, version, head_link_hash, now(), governance_agent_id"
        " FROM industries WHERE id = :id"), {"id": marked[BATCH + 7]})
    session.flush()
    session.expire_all()


def test_an_incremental_run_over_every_path_signs_and_writes_what_the_run_that_held_them_all_did(
        db_session: Session, settings: Settings, keyring: KeyRing, steward) -> None:
    _every_path(db_session, settings, keyring, steward)
    before = _started_by(db_session, keyring, old_start_run, INCREMENTAL)
    after = _started_by(db_session, keyring, start_run, INCREMENTAL)
    signed, plan, findings = after
    assert signed == before[0]  # the plan and the chunk's checkpoint, byte for byte (its coverage counts included)
    assert after == before  # every finding, its id and its place
    codes = {f[4] for f in findings}  # (id, entity_type, entity_id, version, code, ...)
    assert {"row-content-mismatch", "head-rolled-back", "entity-row-missing", "entity-deleted"} <= codes
    assert len(findings) > MARKED + ROWLESS_PAGE and plan["count"] == len(findings)
    assert plan["ids"] == [[findings[0][0], findings[-1][0]]]  # drawn in one run of ids, in the order found


def test_the_incremental_audit_hands_its_findings_over_a_batch_at_a_time(
        db_session: Session, settings: Settings, keyring: KeyRing, steward) -> None:
    """The sink gets each batch's findings as the batch ends, and the rest as they arise: no
    call holds more than a batch's, or a page of chains no row holds."""
    _every_path(db_session, settings, keyring, steward)
    handed: list[list[FindingRow]] = []
    result = audit_since_latest_digest(db_session, keyring=keyring, embedder=EMBEDDER, sink=handed.append)
    sizes = [len(page) for page in handed]
    assert result.findings_written == sum(sizes) > MARKED + ROWLESS_PAGE
    assert 0 not in sizes and max(sizes) <= max(4 * BATCH, ROWLESS_PAGE)
    marked = [page for page in handed if page[0].code == "row-content-mismatch"]
    assert len(marked) >= 3  # three batches of suspects, each written as it ended
    assert not result.version_count_balanced and result.versions_rehashed > 0
