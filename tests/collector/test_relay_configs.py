"""The relay configurations in config/ say what their formats mean them to say."""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_fluent_bit_config_has_no_comment_inside_a_value():
    """Fluent Bit's classic format takes a "#" after a value as part of the value (a storage path
    ending in "# comment" is a different path): comments must be lines of their own."""
    for number, line in enumerate((CONFIG / "fluent-bit.conf").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or re.fullmatch(r"\[[A-Z]+\]", stripped):
            continue
        assert re.fullmatch(r"[A-Za-z_.]+\s+\S.*", stripped), f"line {number}: not a key and a value: {line!r}"
        assert "#" not in stripped, f"line {number}: a comment inside a value: {line!r}"


def test_fluent_bit_config_asks_for_acks_and_buffers_on_disk():
    text = (CONFIG / "fluent-bit.conf").read_text()
    settings = {
        key.lower(): value
        for key, value in re.findall(r"^\s*([A-Za-z_.]+)\s+(\S.*?)\s*$", text, re.M)
        if not key.startswith("#")
    }
    assert settings["require_ack_response"] == "true"
    assert settings["storage.path"] == "/var/lib/fluent-bit/buffer"
