"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis) with a valid key: no input gets a 5xx.

A bounded run (3 generated requests per operation) in the default suite, a long one (150 per operation) in the
slow suite. With ``PRISM_FUZZ_REPORT=PATH`` a run writes what it sent and got (operations, cases, statuses by
code, failures) as JSON: docs/reports/security-fuzz.json comes from

    PRISM_FUZZ_REPORT=docs/reports/security-fuzz.json pytest -q -m slow tests/serving/test_fuzz.py::test_no_5xx_long
"""

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serving.harness import prism_app_fixture  # noqa: F401  (registers `prism_app`)


def fuzz(app, examples: int) -> dict:
    """Run ``examples`` generated requests per operation; returns the statuses seen and the failures (>= 500)."""
    schema = schemathesis.openapi.from_url(app.url + "/openapi.json")
    failures: list[str] = []
    statuses: Counter = Counter()
    operations = 0
    started = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def call(case):
            response = case.call(headers=app.headers, timeout=300)
            statuses[str(response.status_code)] += 1
            if response.status_code >= 500:
                failures.append(f"{response.status_code} {response.text[:200]}\n{case.as_curl_command()}")

        call()
    report = {"examples_per_operation": examples, "operations": operations, "cases": sum(statuses.values()),
              "statuses": dict(sorted(statuses.items())), "errors_5xx": len(failures), "failures": failures[:20],
              "seconds": round(time.perf_counter() - started, 1), "load_average": list(os.getloadavg()),
              "command": f"pytest tests/serving/test_fuzz.py (examples={examples})"}
    if os.environ.get("PRISM_FUZZ_REPORT"):
        Path(os.environ["PRISM_FUZZ_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    return report


def test_no_5xx(prism_app):
    report = fuzz(prism_app, examples=3)
    assert report["failures"] == [] and report["cases"] >= report["operations"] >= 8


@pytest.mark.slow
def test_no_5xx_long(prism_app):
    report = fuzz(prism_app, examples=150)
    assert report["failures"] == [], report["failures"]
