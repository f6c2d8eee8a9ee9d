"""Which record ids were already stored, so that a resent chunk adds nothing twice.

The client's ``record_id`` is ``"<source>:<sequence>"`` (a per-process source and a counter). Ids of
that form are remembered per ``(user_id, source)`` as a set of integer ranges: a steady stream from one
source is a single range, so checking and remembering an id is a few comparisons, and the state to
persist is tiny. Any other id (from other clients) is remembered one by one by the store.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from mona_client.record import RECORD_ID, USER_ID

from ..forward_codec import Event


class RangeSet:
    """A set of non-negative integers kept as sorted, disjoint, non-adjacent inclusive ranges."""

    __slots__ = ("ends", "starts")

    def __init__(self, ranges: Optional[List[Tuple[int, int]]] = None) -> None:
        # Ranges come from to_list() of an earlier set: already sorted, disjoint and non-adjacent.
        pairs = sorted(ranges or ())
        self.starts: List[int] = [start for start, _ in pairs]
        self.ends: List[int] = [end for _, end in pairs]

    def add(self, number: int) -> bool:
        """Remember ``number``; False when it was already there."""
        starts, ends = self.starts, self.ends
        if ends and number == ends[-1] + 1:  # the common case: the next id of a stream
            ends[-1] = number
            return True
        index = bisect_right(starts, number) - 1
        if index >= 0 and number <= ends[index]:
            return False
        join_left = index >= 0 and ends[index] + 1 == number
        join_right = index + 1 < len(starts) and starts[index + 1] - 1 == number
        if join_left and join_right:
            ends[index] = ends[index + 1]
            del starts[index + 1]
            del ends[index + 1]
        elif join_left:
            ends[index] = number
        elif join_right:
            starts[index + 1] = number
        else:
            starts.insert(index + 1, number)
            ends.insert(index + 1, number)
        return True

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        index = bisect_right(self.starts, number) - 1
        return index >= 0 and number <= self.ends[index]

    def to_list(self) -> List[Tuple[int, int]]:
        return list(zip(self.starts, self.ends))


def split_record_id(record_id: str) -> Optional[Tuple[str, int]]:
    """``(source, sequence)`` for an id of the form ``"<source>:<decimal>"``, else None.

    Leading zeros are refused so that two different ids never map to the same number.
    """
    source, separator, sequence = record_id.rpartition(":")
    if (
        not separator
        or not sequence.isdigit()
        or not sequence.isascii()
        or (len(sequence) > 1 and sequence[0] == "0")
        or len(sequence) > 18
    ):
        return None
    return source, int(sequence)


#: The largest sequence number of the ``"<source>:<n>"`` form (18 digits).
LAST_SEQUENCE = 10**18 - 1

#: A sequence stream's state for the merge loop's fast path: (user, "<source>:", highest, ends).
Run = Tuple[str, str, int, List[int]]

Loader = Callable[[Sequence[Tuple[str, str]]], Dict[Tuple[str, str], List[Tuple[int, int]]]]
KnownIds = Callable[[Sequence[Tuple[str, str]]], Set[Tuple[str, str]]]


class RecordIdFilter:
    """Drops events whose ``(user_id, record_id)`` was stored before or seen earlier in the same
    transaction, and collects what the store must remember about the ones it lets through.

    ``load_ranges`` and ``known_ids`` are the store's lookups. Range sets of recently used sources are
    cached (LRU, ``cache_size`` of them); changed ones stay in memory until :meth:`take_changes`.
    """

    def __init__(self, load_ranges: Loader, known_ids: KnownIds, cache_size: int = 100000) -> None:
        self._load_ranges = load_ranges
        self._known_ids = known_ids
        self._cache_size = cache_size
        self._ranges: OrderedDict[Tuple[str, str], RangeSet] = OrderedDict()
        self._dirty: Dict[Tuple[str, str], RangeSet] = {}
        self._pending_ids: Set[Tuple[str, str]] = set()
        self._events: Sequence[Any] = ()
        self._record_index = 2
        # What take_changes handed out for transactions not committed yet, oldest first.
        self._in_flight: Deque[Tuple[Dict[Tuple[str, str], RangeSet], Set[Tuple[str, str]]]] = deque()
        self._known: Optional[Set[Tuple[str, str]]] = None

    def _range_set(self, key: Tuple[str, str]) -> RangeSet:
        ranges = self._ranges.get(key) or self._dirty.get(key)
        if ranges is None:
            for taken, _ in reversed(self._in_flight):
                ranges = taken.get(key)
                if ranges is not None:
                    break
        if ranges is None:
            ranges = RangeSet(self._load_ranges([key]).get(key))
        self._ranges[key] = ranges
        self._ranges.move_to_end(key)
        while len(self._ranges) > self._cache_size:
            self._ranges.popitem(last=False)
        return ranges

    def begin(self, events: Sequence[Any], record_index: int = 2) -> None:
        """Start a message: ``events`` are the tuples its ids come from, the record at
        ``record_index`` (``(seconds, nanoseconds, record)`` or ``[time, record]``)."""
        self._events = events
        self._record_index = record_index
        self._known: Optional[Set[Tuple[str, str]]] = None

    def admit(self, user: str, record_id: str, index: int) -> Tuple[bool, Optional[Run]]:
        """Whether the record at ``index`` of the current message is new (it is then remembered).

        When its id is the highest of a sequence stream, also the stream's state for the caller's fast
        path: ``(user, "<source>:", sequence, ends)``; the caller takes the next id of the stream
        (``sequence + 1``) as new without calling here, by setting ``ends[-1]`` to it.
        """
        split = split_record_id(record_id)
        if split is None:
            key = (user, record_id)
            if self._known is None:  # the first id of another form in this message: look up all
                self._known = self._known_ids(self._other_ids(index))
            if key in self._known or key in self._pending_ids or any(key in ids for _, ids in self._in_flight):
                return False, None
            self._pending_ids.add(key)
            return True, None
        source, number = split
        key = (user, source)
        ranges = self._range_set(key)
        if not ranges.add(number):
            return False, None
        self._dirty[key] = ranges
        if number == ranges.ends[-1] and number < LAST_SEQUENCE:
            return True, (user, source + ":", number, ranges.ends)
        return True, None

    def _other_ids(self, start: int) -> List[Tuple[str, str]]:
        """The ``(user, record_id)`` pairs of the current message from ``start`` on whose id is not
        of the sequence form."""
        keys = []
        at = self._record_index
        for event in itertools.islice(self._events, start, None):
            record = event[at]
            record_id = record.get(RECORD_ID) if type(record) is dict else None
            if type(record_id) is str and split_record_id(record_id) is None:
                user = record.get(USER_ID)
                keys.append((user if type(user) is str else ("" if user is None else str(user)), record_id))
        return keys

    def filter(self, events: List[Event]) -> Tuple[List[Event], int]:
        """The events to store, in their order, and how many were dropped as duplicates."""
        self.begin(events)
        kept = []
        for index, event in enumerate(events):
            record = event.record
            record_id = record.get(RECORD_ID) if type(record) is dict else None
            if type(record_id) is str:
                user = record.get(USER_ID)
                user = user if type(user) is str else ("" if user is None else str(user))
                if not self.admit(user, record_id, index)[0]:
                    continue
            kept.append(event)
        return kept, len(events) - len(kept)

    def take_changes(self) -> Tuple[List[Tuple[str, str, List[Tuple[int, int]]]], List[Tuple[str, str]]]:
        """The range sets and the other ids to write in this transaction."""
        ranges = [(user, source, ranges.to_list()) for (user, source), ranges in self._dirty.items()]
        ids = list(self._pending_ids)
        self._in_flight.append((self._dirty, self._pending_ids))
        self._dirty = {}
        self._pending_ids = set()
        return ranges, ids

    def committed(self) -> None:
        """The oldest changes taken by :meth:`take_changes` are in the store now."""
        if self._in_flight:
            self._in_flight.popleft()

    def forget(self) -> None:
        """Drop all cached state (after a failed write, so that the store is the truth again)."""
        self._ranges.clear()
        self._dirty.clear()
        self._pending_ids.clear()
        self._in_flight.clear()
