"""The README and .env.example document every CPE_* setting the service reads."""

from pathlib import Path

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_sets_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    missing = [n for n in Settings.model_fields if f"CPE_{n.upper()}=" not in text]
    assert not missing, f".env.example lacks {missing}; regenerate it: python -m scripts.settings_doc env"


def test_readme_documents_every_setting() -> None:
    text = (ROOT / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`CPE_{n.upper()}`" not in text]
    assert not missing, f"README.md lacks {missing}; see python -m scripts.settings_doc table"


def test_env_example_values_are_accepted() -> None:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.removeprefix("CPE_").lower()] = value
    assert Settings(**values).model_dump() == Settings().model_dump()
