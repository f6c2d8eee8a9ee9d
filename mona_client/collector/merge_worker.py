"""Entry point of the merger process: ``python -m mona_client.collector.merge_worker --db PATH``.

Kept apart from :mod:`.merger` (which the package imports) so that running it as ``-m`` does not load
that module twice. See :func:`.merger.main`.
"""

import sys

from .merger import main

if __name__ == "__main__":
    sys.exit(main())
