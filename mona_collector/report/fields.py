"""Flattening an ARC document into named values, one per field.

Root fields keep their name; a sub-ARC's fields are named ``<sub-ARC class>.<field>`` (the sub-context
id when the node has no class), recursively, so a field two levels down reads ``MODEL.CALIBRATION.x``;
globals are ``globals.<key>``. When two sub-contexts of one ARC share a class, their fields share
names and the one created last gives the value.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

GLOBALS_PREFIX = "globals."


def _name(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


def flatten_arc(document: Mapping[str, Any]) -> Dict[str, Any]:
    """The named values of one public ARC document (see docs/arc-document.md)."""
    flat: Dict[str, Any] = {}
    for key, value in (document.get("fields") or {}).items():
        flat[_name(key)] = value
    for key, value in (document.get("globals") or {}).items():
        flat[GLOBALS_PREFIX + _name(key)] = value
    _add_sub_arcs(flat, document.get("sub_arcs") or {}, "")
    return flat


def _add_sub_arcs(flat: Dict[str, Any], sub_arcs: Mapping[Any, Any], prefix: str) -> None:
    for sub_id, node in sub_arcs.items():
        if not isinstance(node, Mapping):
            continue
        arc_class = node.get("arc_class")
        name = prefix + _name(arc_class if arc_class is not None else sub_id) + "."
        for key, value in (node.get("fields") or {}).items():
            flat[name + _name(key)] = value
        _add_sub_arcs(flat, node.get("sub_arcs") or {}, name)
