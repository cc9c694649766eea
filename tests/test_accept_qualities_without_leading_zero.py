"""``Accept`` qualities as clients write them (web/content_negotiation.py). Java's
``HttpURLConnection`` sends ``text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2`` when its caller
sets no ``Accept``; werkzeug's strict reading dropped every entry with ``q=.2``, ``*/*`` among them,
so every JSON operation answered such a client 406. A quality that cannot be read at all refuses
nothing either: the field is disregarded, as one holding no media range is."""

from __future__ import annotations

import pytest

from web.content_negotiation import accepts

JAVA_DEFAULT = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"


@pytest.mark.parametrize(("accept", "media_type", "taken"), [
    (JAVA_DEFAULT, "application/json", True),
    (JAVA_DEFAULT, "text/csv", True),
    ("text/csv;q=.5", "application/json", False),  # read leniently, still a preference: JSON not in it
    ("*/*;q=.0", "application/json", False),  # ".0" is a refusal
    ("application/json;q=.0, */*", "application/json", False),
    ("application/xml;q=high, text/csv", "application/json", True),  # an unreadable quality: disregarded whole
])
def test_a_quality_without_its_leading_zero_is_read_and_an_unreadable_one_refuses_nothing(
        accept: str, media_type: str, taken: bool) -> None:
    assert accepts(accept, media_type) is taken


def test_a_java_client_that_sets_no_accept_is_answered(client) -> None:
    response = client.get("/api/v1/jobs", headers={"Accept": JAVA_DEFAULT})
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "application/json"
