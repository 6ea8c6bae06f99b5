"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis) with a valid key: no input gets a 5xx.

A bounded run (a few examples per operation) and a long one. Both are in the slow suite until the bounded run
has been seen to pass on this machine; then the bounded one joins the default suite.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serving.harness import prism_app_fixture  # noqa: F401  (registers `prism_app`)


def fuzz(app, examples: int) -> list[str]:
    """Run ``examples`` generated requests per operation; returns the failures (status >= 500)."""
    schema = schemathesis.openapi.from_url(app.url + "/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def call(case):
            response = case.call(headers=app.headers, timeout=300)
            if response.status_code >= 500:
                failures.append(f"{response.status_code} {response.text[:200]}\n{case.as_curl_command()}")

        call()
    return failures


@pytest.mark.slow
def test_no_5xx(prism_app):
    assert fuzz(prism_app, examples=6) == []


@pytest.mark.slow
def test_no_5xx_long(prism_app):
    assert fuzz(prism_app, examples=150) == []
