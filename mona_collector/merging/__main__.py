"""Entry point of the merger process: ``python -m mona_collector.merging --db PATH``.

See :func:`.process.main`; the collector starts and supervises this process (:class:`.process.MergerProcess`).
"""

import sys

from .process import main

if __name__ == "__main__":
    sys.exit(main())
