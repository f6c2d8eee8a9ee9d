"""``from mona_client.mona_thread import MonaThread``: the import path of the original client."""

from .threads import MonaThread

__all__ = ["MonaThread"]
