"""Where and how the dashboard listens: plain settings, importable without the ``ui`` extra.

Binding to any address that is not loopback requires a token, so that a dashboard reachable from the
network is never open to whoever finds it (see docs/dashboard.md, "Access").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

#: What ``pip`` needs for the dashboard, said in one line when it is missing.
INSTALL_HINT = 'the dashboard needs its extra: pip install "mona-client[ui]"'


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


@dataclass(frozen=True)
class DashboardSettings:
    """The dashboard's HTTP listener: ``port`` (0 picks a free one), ``bind`` (loopback by default)
    and ``token`` (required when ``bind`` is not loopback; checked on every page, API call and scrape)."""

    port: int = 8080
    bind: str = "127.0.0.1"
    token: Optional[str] = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"the dashboard port must be between 0 and 65535, not {self.port}")
        if self.token is not None and not self.token.strip():
            raise ValueError("the dashboard token is empty")
        if self.token is None and not is_loopback(self.bind):
            raise ValueError(
                f"the dashboard binds to {self.bind}, which is not loopback: give it a token (--token-file)"
            )
