"""What ``clean_db`` (tests/conftest.py::_truncate_all) leaves for the next test: nothing, even
of a transaction that commits while the tables are being emptied."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tests.conftest import _truncate_all, outcome_once_committed


def test_a_row_committed_while_the_tables_are_emptied_is_emptied_too(engine: Engine, clean_db: None) -> None:
    """Only the tables holding a row are truncated, and a row not committed yet is none to a
    read: emptying must wait for the writer, as one TRUNCATE of every table did, not find its
    table empty and leave the row to the next test (a worker's late transaction)."""
    from models.api_keys import create_api_key

    holding = Session(engine)
    holding.begin()
    create_api_key(holding, name="late", scopes=["admin"])
    holding.flush()
    outcome = outcome_once_committed(engine, holding, lambda: _truncate_all(engine), "emptying the tables")
    assert outcome == [None]
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM api_keys")) == 0
