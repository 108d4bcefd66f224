"""schemathesis against the served OpenAPI spec: no 5xx, every response matches the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.api_fixtures import *  # noqa: F403
from tests.api_fixtures import make_settings

# Each operation is fuzzed independently; a few dozen cases each keep the suite fast.
MAX_EXAMPLES = 25
# Long-polling or streaming endpoints: they are exercised with a short `timeout` elsewhere.
SKIP = {("GET", "/api/v1/events")}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Any:
    from web import create_app

    tmp: Path = tmp_path_factory.mktemp("schema")
    cfg = make_settings(tmp, redis_server)
    cfg.api.rate_limit_per_minute = 0
    cfg.api.sync_timeout_seconds = 2
    app = create_app(cfg)
    _info, secret = app.extensions["appliance"].tokens.create("schemathesis", "admin")
    headers = {"Authorization": f"Bearer {secret}"}
    return app, headers


def test_api_conforms_to_its_spec(served: Any) -> None:
    # One loop over the operations (schemathesis' lazy pytest loader does not run on pytest 9).
    app, headers = served
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, headers=headers)
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIP:
            continue

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy())
        def check(case: Any) -> None:
            # Schema-valid is not content-valid: random bytes are not a JPEG, so "positive
            # data accepted" does not apply; no 5xx and schema conformance do.
            excluded = [schemathesis.checks.positive_data_acceptance]
            if case.path == "/readyz":
                # No worker runs here, so its documented 503 "not ready" is the right answer.
                excluded.append(schemathesis.checks.not_a_server_error)
            case.call_and_validate(headers=headers, excluded_checks=excluded)

        ran += 1
        try:
            check()
        except BaseException as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{operation.label}: {exc}"[:3000])
    assert ran >= 14
    assert not failures, "\n\n".join(failures)
