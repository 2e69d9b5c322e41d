"""Write the README's list of metrics from the registry of a started app.

    python -m scripts.metrics_doc           # rewrite README.md's list, between its two markers
    python -m scripts.metrics_doc --check   # exit 1 if README.md's list differs from the registry's

tests/app/test_metrics_doc.py fails when the README's list is not the registry's.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.core import Metric

from app.main import create_app
from app.metrics import GpuMemory
from app.services import Services
from app.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- metrics:begin -->", "<!-- metrics:end -->"
# prometheus_client's own collectors (process_*, python_*): listed once, not per series
OWN = ("cpe_", "http_")


@functools.cache
def families() -> list[Metric]:
    """Every family the service registers, once started, with its optional parts on (pattern memory);
    the GPU's whatever the device."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, models=("lstm",), model="lstm", patterns_enabled=True, patterns_capacity=10_000
    )
    with TestClient(create_app(settings)) as client:
        found = {family.name: family for family in Services.of(client.app).registry.collect()}
    found.update((family.name, family) for family in GpuMemory("cpu").describe())
    return sorted((f for f in found.values() if f.name.startswith(OWN)), key=lambda f: f.name)


def table() -> str:
    rows = ["| metric | type | meaning |", "|---|---|---|"]
    for family in families():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        rows.append(f"| `{name}` | {family.type} | {family.documentation} |")
    rows.append(
        "| `process_*`, `python_*` | | prometheus_client's standard collectors: resident memory, CPU "
        "seconds, open file descriptors, start time, garbage collections. |"
    )
    return "\n".join(rows)


def with_table(readme: str, listing: str) -> str:
    """``readme`` with ``listing`` between the markers."""
    head, found, rest = readme.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise ValueError(f"README.md lacks the markers {BEGIN} and {END}")
    return f"{head}{BEGIN}\n{listing}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme = README.read_text()
    wanted = with_table(readme, table())
    if "--check" in argv:
        if wanted != readme:
            print("README.md's metrics differ from the registry's: python -m scripts.metrics_doc")
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
