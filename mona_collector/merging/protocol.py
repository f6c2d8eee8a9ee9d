"""What the collector and its merger process say to each other: one ASCII line per message.

The collector writes commands to the merger's stdin; the merger writes reports to its stdout:

=========================  ==========================  ==================================================
line                       message                     meaning
=========================  ==========================  ==================================================
``raw <id>``               :class:`RowsAppended`       collector -> merger: raw rows up to ``id`` exist
``stop <id>``              :class:`StopAt`             collector -> merger: merge up to row ``id``, then exit
(end of stdin)             :class:`InputClosed`        the collector is gone: commit what is merged, exit
``merged <row> <events>``  :class:`Merged`             merger -> collector: rows up to ``row`` are
                                                       committed, ``events`` more events since the last
                                                       report (the first report, with 0, says "ready")
``error <text>``           :class:`Failed`             merger -> collector: why it is about to exit with
                                                       status 1 (one line: whitespace runs are one space)
``stopped``                :class:`Stopped`            merger -> collector: its last line, exiting with 0
=========================  ==========================  ==================================================

Lines end with ``\\n``; ids and counts are decimal integers. A line that does not parse raises
:class:`ProtocolError`. :class:`~.process.MergerThread` puts the same command objects on its queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Union

__all__ = [
    "Command",
    "Failed",
    "InputClosed",
    "Merged",
    "ProtocolError",
    "Report",
    "RowsAppended",
    "StopAt",
    "Stopped",
    "encode",
    "parse_command",
    "parse_report",
]


class ProtocolError(ValueError):
    """A line that is not a message of the merger protocol."""


@dataclass(frozen=True)
class RowsAppended:
    """Raw rows up to ``last_id`` are in the raw log."""

    last_id: int


@dataclass(frozen=True)
class StopAt:
    """Merge everything up to row ``last_id``, commit, then exit."""

    last_id: int


@dataclass(frozen=True)
class InputClosed:
    """The collector's end of the command pipe closed (no line: the end of the stream)."""


@dataclass(frozen=True)
class Merged:
    """Rows up to ``watermark`` are committed; ``events`` events were merged since the last report."""

    watermark: int
    events: int


@dataclass(frozen=True)
class Failed:
    """The merger cannot go on (it exits with status 1); ``error`` says why, on one line."""

    error: str


@dataclass(frozen=True)
class Stopped:
    """The merger's last line when it ends normally (exit status 0)."""


Command = Union[RowsAppended, StopAt, InputClosed]
Report = Union[Merged, Failed, Stopped]


def encode(message: Union[RowsAppended, StopAt, Merged, Failed, Stopped]) -> bytes:
    """The line of ``message``, newline included."""
    if isinstance(message, RowsAppended):
        return b"raw %d\n" % message.last_id
    if isinstance(message, StopAt):
        return b"stop %d\n" % message.last_id
    if isinstance(message, Merged):
        return b"merged %d %d\n" % (message.watermark, message.events)
    if isinstance(message, Failed):
        return b"error " + " ".join(message.error.split()).encode("utf-8", "replace") + b"\n"
    return b"stopped\n"


def _words(line: bytes) -> List[str]:
    return line.decode("utf-8", "replace").rstrip("\n").split(" ")


def _number(text: str, line: bytes) -> int:
    if not text.isdigit() or not text.isascii():
        raise ProtocolError(f"not a merger protocol line: {line[:100]!r}")
    return int(text)


def parse_command(line: bytes) -> Command:
    """The command of a line the collector wrote (see the module doc)."""
    words = _words(line)
    if len(words) == 2 and words[0] == "raw":
        return RowsAppended(_number(words[1], line))
    if len(words) == 2 and words[0] == "stop":
        return StopAt(_number(words[1], line))
    raise ProtocolError(f"not a merger command: {line[:100]!r}")


def parse_report(line: bytes) -> Report:
    """The report of a line the merger wrote (see the module doc)."""
    kind, _, rest = line.decode("utf-8", "replace").rstrip("\n").partition(" ")
    if kind == "merged":
        words = rest.split(" ")
        if len(words) == 2:
            return Merged(_number(words[0], line), _number(words[1], line))
    elif kind == "error":
        return Failed(rest)
    elif kind == "stopped" and not rest:
        return Stopped()
    raise ProtocolError(f"not a merger report: {line[:100]!r}")
