"""The README's Python snippets run verbatim, in a fresh interpreter, and do what they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_set_up_commands():
    text = README.read_text()
    first_block = re.match(r"```sh\n(.*?)```", text, flags=re.S)
    assert first_block, "the README must open with the set-up commands"
    commands = [line for line in first_block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    assert "mona_collector.demo" in commands[0] and "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python3 -m pytest" in ci and 'python3 -m pip install -q -e ".[test]"' in ci


def test_readme_snippets_run_verbatim(receiver):
    blocks = python_blocks()
    assert len(blocks) == 2
    # The second snippet continues the first (it uses `client`), as a reader would run them.
    script = (
        blocks[0] + blocks[1] + "\nimport threading\nfor t in threading.enumerate():\n"
        "    if t is not threading.current_thread() and not t.daemon: t.join()\n"
    )
    env = dict(os.environ, MONA_PORT=str(receiver.port), MONA_USER_ID="readme", MONA_PRINT_LOGS="false")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    records = receiver.wait_records(5)
    messages = [r["message"] for r in records]
    assert messages == [
        {"MONA_ARC_CLASS": "MY_COOL_ALGORITHM_NAME"},
        {"foo": "bar"},
        {"MONA_ARC_CLASS": "MY_COOL_SUB_COMPONENT_NAME"},
        {"score": 0.93, "segment": "eu"},
        {"MONA_ARC_CLASS": "threaded_algorithm_name"},
    ]
    assert {r["user_id"] for r in records} == {"readme"}
