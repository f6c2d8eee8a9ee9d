"""The collector's web dashboard and Prometheus endpoint (docs/dashboard.md).

Its web dependencies (Flask, waitress, prometheus_client) come with the ``ui`` extra and are imported
only when the dashboard starts: :func:`load_server` says in one line how to install them when missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Type

from .settings import INSTALL_HINT, DashboardSettings, is_loopback

if TYPE_CHECKING:
    from .server import DashboardServer

__all__ = ["INSTALL_HINT", "DashboardSettings", "UiMissingError", "is_loopback", "load_server"]


class UiMissingError(ImportError):
    """The ``ui`` extra is not installed; the message says how to install it."""


def load_server() -> Type[DashboardServer]:
    """The :class:`~.server.DashboardServer` class, or :class:`UiMissingError` without the ``ui`` extra."""
    try:
        from . import server
    except ImportError as exc:
        raise UiMissingError(f"{INSTALL_HINT} ({exc.name or exc} is missing)") from None
    return server.DashboardServer
