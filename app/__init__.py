"""The SomaAgent 01 Faust application; ``faust -A app worker`` finds ``app.app`` here.

The app is built on first access so that ``app.settings`` and friends import without side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.faust_app import SomaApp

    app: SomaApp


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.faust_app import default_app

        return default_app()
    raise AttributeError(f"module 'app' has no attribute {name!r}")
