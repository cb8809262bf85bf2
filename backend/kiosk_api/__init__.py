"""Kiosk API: enrollment, then requests authenticated by the kiosk's own signed assertions."""

from backend.kiosk_api.router import build_router

__all__ = ["build_router"]
