"""Flattening an ARC document into named values, one per field.

Root fields keep their name; a sub-ARC's fields are named ``<sub-ARC class>.<field>`` (the sub-context
id when the node has no class), recursively, so a field two levels down reads ``MODEL.CALIBRATION.x``;
globals are ``globals.<key>``. When two sub-contexts of one ARC share a class, their fields share
names and the one shown last gives the value. The implementation is in :mod:`mona_collector.report_rows`,
shared with the merger, which keeps every ARC flattened for the report.
"""

from __future__ import annotations

from ..report_rows import GLOBALS_PREFIX, flatten_arc

__all__ = ["GLOBALS_PREFIX", "flatten_arc"]
