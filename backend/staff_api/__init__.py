"""Staff and admin API: properties, people, kiosks, doors, audit (and, per feature, more)."""

from backend.staff_api.router import build_router

__all__ = ["build_router"]
