"""docker-compose.yml against the Compose Specification's JSON Schema (deploy/schemas/, see its README):
what `docker compose config` would reject, checked without Docker. tests/test_deploy.py checks what the
file refers to (mounts, builds, the services nginx and Prometheus reach)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "deploy" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture
def compose() -> dict[str, Any]:
    with (ROOT / "docker-compose.yml").open() as f:
        return yaml.safe_load(f)  # type: ignore[no-any-return]


def problems(validator: Draft202012Validator, document: dict[str, Any]) -> list[str]:
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]


def test_the_compose_file_follows_the_compose_specification(
    validator: Draft202012Validator, compose: dict[str, Any]
) -> None:
    assert problems(validator, compose) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets the key at the dotted ``path`` (its parents exist) to ``value``."""
    *parents, key = path.split(".")

    def change(document: dict[str, Any]) -> None:
        for name in parents:
            document = document[name]
        document[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "where", "what"),
    [
        (_set("services.cpe-1.enviroment", {}), "$.services['cpe-1']", "'enviroment' was unexpected"),
        (
            _set("services.nginx.depends_on.cpe-1.condition", "service_ready"),
            "$.services.nginx.depends_on",
            "not valid",
        ),
        (_set("service", {}), "$", "'service' does not match"),
    ],
    ids=["misspelt-key", "unknown-condition", "unknown-top-level-key"],
)
def test_the_schema_rejects_a_broken_compose_file(
    validator: Draft202012Validator,
    compose: dict[str, Any],
    change: Callable[[dict[str, Any]], None],
    where: str,
    what: str,
) -> None:
    change(compose)
    found = problems(validator, compose)
    assert any(problem.startswith(where) and what in problem for problem in found), found
