"""Settings: environment parsing, unknown variables rejected, and the README table kept true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.settings import Settings, describe

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_run_embedded() -> None:
    settings = Settings.from_env({})
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.redis_url is None and settings.firebase_credentials is None


def test_environment_values_are_typed() -> None:
    settings = Settings.from_env(
        {"CONCIERGE_ACCESS_TOKEN_TTL_SECONDS": "60", "CONCIERGE_JSON_LOGS": "true", "PATH": "/bin"}
    )
    assert settings.access_token_ttl_seconds == 60 and settings.json_logs is True


def test_unknown_variable_is_rejected() -> None:
    with pytest.raises(ValueError, match="CONCIERGE_DATABSE_URL"):
        Settings.from_env({"CONCIERGE_DATABSE_URL": "postgresql+asyncpg://x"})


def test_badly_typed_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid setting"):
        Settings.from_env({"CONCIERGE_ACCESS_TOKEN_TTL_SECONDS": "soon"})


def test_readme_configuration_table_matches_settings() -> None:
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"^\| `(CONCIERGE_[A-Z0-9_]+)` \| (.*?) \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = match.group(3).strip()
    documented = {name: description for name, _default, description in describe()}
    assert set(rows) == set(documented), "README configuration table and Settings differ"
    for name, description in documented.items():
        assert description, f"{name} has no description"
        assert rows[name] == description, f"README row for {name} is out of date"
