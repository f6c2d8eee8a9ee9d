"""The client never carries the collector: importing every client module loads no collector module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[1] / "mona_client"


def test_no_client_module_names_the_collector_in_an_import() -> None:
    offenders = []
    for path in sorted(CLIENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.name}:{node.lineno} {name}" for name in names if name.split(".")[0] == "mona_collector"
            ]
    assert offenders == []


def test_importing_every_client_module_loads_no_collector_module() -> None:
    code = (
        "import importlib, pkgutil, sys, mona_client\n"
        "for info in pkgutil.walk_packages(mona_client.__path__, 'mona_client.'):\n"
        "    importlib.import_module(info.name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'mona_collector')\n"
        "print(len([m for m in sys.modules if m.startswith('mona_client')]), loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    count, loaded = result.stdout.split(" ", 1)
    assert int(count) > 10, result.stdout  # the walk really imported the client's modules
    assert loaded.strip() == "[]"
