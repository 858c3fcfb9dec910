"""``csa serve``: a FastAPI app (REST API + one static brush page) around one model."""
from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
