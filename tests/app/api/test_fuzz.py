"""Fuzzing from the OpenAPI schema (schemathesis) against a real server: no 5xx, every answer as declared.

Each operation gets requests generated from its declared schema, valid ones and ones that break it, and
every response is checked: never a server error, a status code the operation declares, the declared
content type and headers, a body that matches the declared schema. Examples are bounded (``MAX_EXAMPLES``
per operation, no shrinking) and derandomized, so that the module takes well under a minute and a
failure reruns the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.app.payloads import make_settings
from tools.process import serving

pytestmark = [pytest.mark.server, pytest.mark.slow]

MAX_EXAMPLES = 20
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # a body that breaks the schema must be refused (4xx)
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    env = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm,hybrid",
        "CPE_MODEL": "lstm",
        "CPE_MAX_WINDOW": "16",
        "CPE_MAX_BATCH": "4",
        "CPE_MAX_ROUTES": "4",
        "CPE_LOG_LEVEL": "warning",
    }
    with serving(env) as [served]:
        yield served.url
        served.stop()
        tail = served.output()[-3000:]
        assert "Traceback" not in tail, tail  # no handler failed, even where the answer was fine


@pytest.fixture(scope="module")
def api_schema(server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server}/openapi.json")


# the operations, from the app's own schema (no server needed to list them); schemathesis's pytest
# plugin (schema.parametrize) does not run under pytest 9, so the cases are drawn here with hypothesis
# (a schema-breaking case exists only for an operation that takes something: these take a body)
OPERATIONS = [
    pytest.param(path, method, mode, id=f"{method} {path} {mode.value}")
    for path, methods in create_app(make_settings()).openapi()["paths"].items()
    for method, spec in methods.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or "requestBody" in spec or spec.get("parameters")
]


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_every_operation_answers_as_declared(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    fuzz()
