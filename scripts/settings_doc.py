"""Print the CPE_* settings as the README's markdown table or as .env.example.

    python -m scripts.settings_doc table   > (paste into README.md)
    python -m scripts.settings_doc env     > .env.example

tests/app/test_settings_doc.py checks that both documents name every setting.
"""

from __future__ import annotations

import sys

from app.settings import Settings


def _default(name: str) -> str:
    value = getattr(Settings(), name)
    if name == "checkpoint_dir":
        return "(the shipped models/checkpoints)"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `CPE_{name.upper()}` | `{_default(name)}` | {field.description} |")
    return "\n".join(rows)


def env() -> str:
    lines = ["# Every CPE_* setting with its default; copy to .env and change what you need."]
    for name, field in Settings.model_fields.items():
        lines.append(f"\n# {field.description}")
        value = "" if name == "checkpoint_dir" else _default(name)
        prefix = "# " if name == "checkpoint_dir" else ""
        lines.append(f"{prefix}CPE_{name.upper()}={value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "table"
    print({"table": table, "env": env}[what]())
