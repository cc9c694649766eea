"""The HTTP edge under a demanding client (helper-201): OPTIONS and 405, body codings and
charsets, key names that pass for the bootstrap admin key, and what gunicorn logs of a request
line it refuses."""

import pytest

API = "/api/v1"
SLEEP = f"{API}/diagnostics/sleep"
BODY = {"seconds": 0.01, "steps": 1}


# --- OPTIONS and 405 -----------------------------------------------------------------------

def _api_rules(app) -> list:
    return [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")]


def test_options_on_every_api_route_is_204_with_allow_and_no_body(client, app) -> None:
    for rule in _api_rules(app):
        path = rule.rule.replace("<", "").replace(">", "")  # any value: OPTIONS reads none
        response = client.options(path)
        assert response.status_code == 204, (rule.rule, response.status_code)
        assert response.get_data() == b"" and "Content-Type" not in response.headers, rule.rule
        # A superset: /genesis/skills/search is also /genesis/skills/<skill_id>, which has PATCH.
        assert set(rule.methods) <= set(response.headers["Allow"].split(", ")), rule.rule
        assert not any(name.lower().startswith("access-control-") for name in response.headers.keys())  # CORS is closed


def test_options_without_a_key_is_401_problem_json(app) -> None:
    response = app.test_client().options(f"{API}/jobs")
    assert response.status_code == 401 and response.mimetype == "application/problem+json"


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_a_method_a_route_lacks_is_405_problem_json_with_allow(client, method) -> None:
    response = client.open(f"{API}/jobs", method=method)
    assert response.status_code == 405 and response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert response.get_json()["status"] == 405


def test_head_is_its_get_without_a_body(client) -> None:
    get, head = client.get(f"{API}/jobs"), client.head(f"{API}/jobs")
    assert head.status_code == get.status_code == 200 and head.get_data() == b""
    assert head.mimetype == get.mimetype == "application/json"
