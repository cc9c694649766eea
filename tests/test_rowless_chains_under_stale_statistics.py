"""The search for chains no row holds stays one pass over the versions whatever the planner
believes of ``entity_versions``.

It was the versions whose id is IN the distinct ids of an anti-join of the versions with every
table's ids. In a full suite run, ``entity_versions`` had been vacuumed while it held one live
row in many pages (the dead ones of rolled-back tests), so its statistics said a row in ten
thousand pages; the planner then ran that anti-join again for each version it read through the
start's cursor (a nested loop over every version per version), and a FETCH of the rowless
chains' first page took over 30 s: ``QueryCanceled`` in both incremental-streaming tests. Here
the statistics say the same while the table holds thousands of versions."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.audit import ROW_MISSING, rowless_chains
from models.settings import Settings
from models.signing import KeyRing
from tests.conftest import recorded_statements
from tests.test_audit_start_streams_findings import rowless
from tests.test_incremental_audit_streams_findings import _industries

INDUSTRIES, ROWLESS = 2_000, 40


def _believed_nearly_empty(session: Session) -> None:
    """What a VACUUM of a table bloated by dead rows, holding one live one, leaves in pg_class."""
    session.execute(text("UPDATE pg_class SET reltuples = 1, relpages = 10000 WHERE oid = 'entity_versions'::regclass"))


def test_chains_no_row_holds_are_found_in_one_pass_when_the_versions_look_nearly_empty(
        db_session: Session, settings: Settings, keyring: KeyRing, steward: uuid.UUID) -> None:
    _industries(db_session, settings, steward, INDUSTRIES)  # two versions each
    rowless(db_session, ROWLESS, keyring)
    db_session.flush()
    _believed_nearly_empty(db_session)
    db_session.execute(text("SET LOCAL statement_timeout = '10s'"))  # the nested loop took minutes here
    with recorded_statements(db_session.connection()) as seen:
        findings = rowless_chains(db_session)
    assert len(findings) == ROWLESS and {f.code for f in findings} == {ROW_MISSING}
    assert [f.entity_id for f in findings] == sorted(f.entity_id for f in findings)
    # As the start's cursor plans it (fast-start), the versions are read once, not once per version.
    (statement,) = [sql for _, sql in seen if "entity_versions" in sql]
    plan = "\n".join(db_session.scalars(text("EXPLAIN DECLARE rowless_plan NO SCROLL CURSOR FOR " + statement)))
    assert len(re.findall(r"\bon entity_versions\b", plan)) == 1, plan
