"""merge feature schemas: credentials, parcels, push, work orders and keys branch from the foundation

Revision ID: d9e2faea2a96
Revises: 051213059409, 5f9ab5193c71, c510f8f84435, e4626dc78bc3
Create Date: 2026-11-26 12:03:44.168471
"""

from collections.abc import Sequence


revision: str = "d9e2faea2a96"
down_revision: str | Sequence[str] | None = (
    "051213059409",
    "5f9ab5193c71",
    "c510f8f84435",
    "e4626dc78bc3",
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
