"""journal epoch: a re-enrolled kiosk (a replaced computer) starts its journal at seq 1 again

Existing rows belong to epoch 0, the first enrollment.

Revision ID: 1b07b23034f9
Revises: a4073f5e3852
Create Date: 2026-11-26 13:32:48.904273
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1b07b23034f9"
down_revision: str | Sequence[str] | None = "a4073f5e3852"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _epoch(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    with op.batch_alter_table("journal_cursor", schema=None) as batch_op:
        batch_op.add_column(_epoch("epoch"))

    with op.batch_alter_table("journal_entry", schema=None) as batch_op:
        batch_op.add_column(_epoch("epoch"))
        batch_op.drop_constraint("uq_journal_entry_kiosk_seq", type_="unique")
        batch_op.create_unique_constraint(
            "uq_journal_entry_kiosk_epoch_seq", ["kiosk_id", "epoch", "seq"]
        )

    with op.batch_alter_table("journal_fork", schema=None) as batch_op:
        batch_op.add_column(_epoch("epoch"))
        batch_op.drop_constraint("uq_journal_fork_content", type_="unique")
        batch_op.create_unique_constraint(
            "uq_journal_fork_epoch_content", ["kiosk_id", "epoch", "seq", "content_hash"]
        )

    with op.batch_alter_table("kiosk", schema=None) as batch_op:
        batch_op.add_column(_epoch("journal_epoch"))


def downgrade() -> None:
    with op.batch_alter_table("kiosk", schema=None) as batch_op:
        batch_op.drop_column("journal_epoch")

    with op.batch_alter_table("journal_fork", schema=None) as batch_op:
        batch_op.drop_constraint("uq_journal_fork_epoch_content", type_="unique")
        batch_op.create_unique_constraint(
            "uq_journal_fork_content", ["kiosk_id", "seq", "content_hash"]
        )
        batch_op.drop_column("epoch")

    with op.batch_alter_table("journal_entry", schema=None) as batch_op:
        batch_op.drop_constraint("uq_journal_entry_kiosk_epoch_seq", type_="unique")
        batch_op.create_unique_constraint("uq_journal_entry_kiosk_seq", ["kiosk_id", "seq"])
        batch_op.drop_column("epoch")

    with op.batch_alter_table("journal_cursor", schema=None) as batch_op:
        batch_op.drop_column("epoch")
