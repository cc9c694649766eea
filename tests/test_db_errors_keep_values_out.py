"""A database error names its statement, never the values bound to it.

SQLAlchemy writes a failed statement's parameters into the exception's message
(``[parameters: {...}]``), and that message reaches the logs of every 500, job failure and
retry warning: an API key's hash, an entity's content, a member's details. The engines Plant
makes hide them (``hide_parameters``); the statement itself is still there to debug with.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

SECRET = "review-secret-value-0f3c"


def test_an_error_of_the_applications_engine_keeps_its_bound_values_out_of_its_message(engine: Engine) -> None:
    with engine.connect() as connection, pytest.raises(DBAPIError) as raised:
        connection.execute(text("SELECT CAST(:secret AS text), 1 / 0"), {"secret": SECRET})
    message = str(raised.value)
    assert "division by zero" in message and "1 / 0" in message  # the statement is still named
    assert SECRET not in message
