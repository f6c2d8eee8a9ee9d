"""numpy is the collector's dependency for ``mona report`` only: the client never loads it, nor does
the ``mona`` command line before the report runs."""

from __future__ import annotations

import subprocess
import sys


def _loads_numpy(code: str) -> bool:
    probe = code + "\nimport sys\nprint('numpy' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip().splitlines()[-1] == "True"


def test_the_client_never_loads_numpy() -> None:
    code = (
        "import importlib, pkgutil, mona_client\n"
        "for info in pkgutil.walk_packages(mona_client.__path__, 'mona_client.'):\n"
        "    importlib.import_module(info.name)\n"
    )
    assert not _loads_numpy(code)


def test_the_command_line_loads_numpy_only_for_the_report() -> None:
    assert not _loads_numpy("import mona_collector.cli, mona_collector.service")
    assert _loads_numpy("import mona_collector.report")
