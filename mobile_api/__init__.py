"""Phone-app API for residents and vendors: auth, profile, devices (and, per feature, more)."""

from mobile_api.router import build_router

__all__ = ["build_router"]
