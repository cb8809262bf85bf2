"""Apply Alembic migrations programmatically (``concierge migrate``; tests; the demo).

``heads``, not ``head``: feature branches of the schema may land as parallel heads until a
merge revision joins them; applying every head is always correct.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "heads")
