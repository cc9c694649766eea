"""Review of the HTTP API's request semantics (review-api): each test is one finding."""

import pytest

API = "/api/v1"


@pytest.mark.parametrize("if_match", [
    '""',              # an empty entity-tag: werkzeug parses it to None, which crashed the version match (500)
    '"1" "2"',         # a list missing its comma
    '"999" "1"',       # a stale version, in a list missing its comma
    '"1',              # unterminated
    'xyz"',
    ",",
    "",                # present but blank
], ids=["empty-tag", "no-comma", "stale-no-comma", "unterminated", "garbage", "comma", "blank"])
def test_finding_1_a_present_if_match_that_names_no_version_is_a_failed_precondition(
        client, committed_steward, if_match) -> None:
    """A PATCH that sent an If-Match the server cannot read must not be applied unconditionally:
    the client asked for a precondition, and a lost update is what it asked to prevent."""
    url = f"{API}/agents/{committed_steward}"
    before = client.get(url).get_json()
    response = client.patch(url, json={"description": "an edit that must not land"}, headers={"If-Match": if_match})
    assert response.status_code == 409, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"] == "/problems/precondition-failed"
    assert client.get(url).get_json()["version"] == before["version"]
