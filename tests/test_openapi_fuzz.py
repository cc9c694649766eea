"""Schemathesis against our own /openapi.json: no 5xx, and every response matches the spec.

Generated requests (valid and invalid) go through the real app, database and broker,
authenticated as admin. Checked for each: no server error, the status code, the
content type and the body schema are all documented for that operation.
"""

import collections
import json

import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)
EXAMPLES = 800


def problem_wrong(status: int, content_type: str, body: bytes) -> str | None:
    """What README's "Errors" promises of every error that the document's schema leaves open:
    problem+json, a ``status`` member equal to the HTTP status, a ``detail``, and a 422's bad
    fields in ``errors`` (or its broken rules in ``violations``)."""
    if status < 400:
        return None
    if content_type.split(";")[0].strip() != "application/problem+json":
        return f"content type {content_type}"
    problem = json.loads(body)
    if problem.get("status") != status:
        return f"status member {problem.get('status')!r}"
    if not isinstance(problem.get("detail"), str) or not problem["detail"]:
        return "no detail"
    if status == 422 and not (problem.get("errors") or problem.get("violations")):
        return "a 422 naming no field and no rule"
    return None


def test_every_operation_answers_as_documented(app, admin_key) -> None:
    # schemathesis' pytest plugin does not run on pytest 9 yet; drive its strategies directly.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40
    failures: collections.Counter = collections.Counter()
    examples: dict = {}

    @given(st.data())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(data: st.DataObject) -> None:
        operation = data.draw(st.sampled_from(operations))
        case = data.draw(operation.as_strategy())
        response = case.call(headers={"Authorization": f"Bearer {admin_key}"})
        for check in CHECKS:
            try:
                case.validate_response(response, checks=[check])
            except BaseException as failure:  # schemathesis raises exception groups
                key = (operation.label, check.__name__, response.status_code)
                failures[key] += 1
                examples.setdefault(key, str(failure)[:500])
        content_type = next((value for name, value in response.headers.items() if name.lower() == "content-type"), "")
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        wrong = problem_wrong(response.status_code, content_type, response.content)
        if wrong:
            key = (operation.label, "problem_as_readme_says", response.status_code)
            failures[key] += 1
            examples.setdefault(key, f"{wrong}: {response.text[:400]}")

    fuzz()
    assert not failures, "\n".join(f"{n}× {key}: {examples[key]}" for key, n in failures.most_common(10))
