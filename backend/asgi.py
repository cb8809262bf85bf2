"""ASGI entry point for uvicorn workers: settings from the environment, then ``create_app``."""

from __future__ import annotations

from litestar import Litestar

from backend import gc_tuning, logs
from backend.app import create_app
from backend.settings import Settings


def app_from_env() -> Litestar:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.json_logs)
    app = create_app(settings)
    gc_tuning.tune_for_long_running_process()
    return app
