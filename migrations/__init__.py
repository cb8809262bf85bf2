"""Alembic migrations; ``concierge migrate`` applies them (``backend.migrate``)."""
