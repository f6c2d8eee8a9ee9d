"""mona_client: instrument algorithm runs (ARCs) and export their KAPIs and dimensions.

The API lives in :mod:`mona_client.client` and is re-exported here, so both spellings work::

    from mona_client import client
    client.export({...})

    import mona_client
    mona_client.export({...})
"""

from .client import *  # noqa: F403 - the facade is the package's API
from .client import __all__ as _client_all
from .threads import MonaThread, MonaThreadPoolExecutor, carry_context, in_new_mona_context, spawn_greenlet

__version__ = "0.1.0"

__all__ = [
    *_client_all,
    "MonaThread",
    "MonaThreadPoolExecutor",
    "carry_context",
    "in_new_mona_context",
    "spawn_greenlet",
]
