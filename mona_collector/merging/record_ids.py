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

Loader = Callable[[Sequence[Tuple[str, str]]], Dict[Tuple[str, str], List[Tuple[int, int]]]]
KnownIds = Callable[[Sequence[Tuple[str, str]]], Set[Tuple[str, str]]]


class RecordIdFilter:
    """Which ``(user_id, record_id)`` pairs were stored before or seen earlier in the same
    transaction, and what the store must remember about the new ones.

    ``load_ranges`` and ``known_ids`` are the store's lookups. Range sets of recently used sources are
    cached (LRU, ``cache_size`` of them); changed ones stay in memory until :meth:`take_changes`.
    Each message's records are tested through the :class:`SeenIds` that :meth:`for_message` hands out.
    """

    def __init__(self, load_ranges: Loader, known_ids: KnownIds, cache_size: int = 100000) -> None:
        self._load_ranges = load_ranges
        self._known_ids = known_ids
        self._cache_size = cache_size
        self._ranges: OrderedDict[Tuple[str, str], RangeSet] = OrderedDict()
        self._dirty: Dict[Tuple[str, str], RangeSet] = {}
        self._pending_ids: Set[Tuple[str, str]] = set()
        # What take_changes handed out for transactions not committed yet, oldest first.
        self._in_flight: Deque[Tuple[Dict[Tuple[str, str], RangeSet], Set[Tuple[str, str]]]] = deque()

    def for_message(self, entries: Sequence[Any], record_index: int = 1) -> SeenIds:
        """The duplicate test for the records of one message: ``entries`` are its entries, each
        holding its record at ``record_index`` (``[time, record]`` entries: 1)."""
        return SeenIds(self, entries, record_index)

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

    def _admit_sequence(self, user: str, source: str, number: int) -> Optional[RangeSet]:
        """Remember sequence ``number`` of ``(user, source)``; its range set, or None when it was
        there already."""
        key = (user, source)
        ranges = self._range_set(key)
        if not ranges.add(number):
            return None
        self._dirty[key] = ranges
        return ranges

    def _admit_other(self, key: Tuple[str, str], known: Set[Tuple[str, str]]) -> bool:
        """Remember an id of another form; False when it was stored (``known``) or seen already."""
        if key in known or key in self._pending_ids or any(key in ids for _, ids in self._in_flight):
            return False
        self._pending_ids.add(key)
        return True

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


class SeenIds:
    """The duplicate test of one message's records, handed out by :meth:`RecordIdFilter.for_message`.

    :meth:`is_new` is called once per record with an id, in order. Its fast path is the next id of
    the sequence stream seen last (``"<source>:<n+1>"`` after ``"<source>:<n>"`` of the same user):
    one string comparison, no parsing, no lookup.
    """

    __slots__ = (
        "_ends",
        "_entries",
        "_filter",
        "_known",
        "_next_id",
        "_next_user",
        "_prefix",
        "_record_index",
        "_sequence",
    )

    def __init__(self, owner: RecordIdFilter, entries: Sequence[Any], record_index: int) -> None:
        self._filter = owner
        self._entries = entries
        self._record_index = record_index
        self._known: Optional[Set[Tuple[str, str]]] = None  # stored ids of other forms, looked up once
        # The sequence stream seen last: the id that would come next, its user, "<source>:", the
        # sequence seen last and the ends of its range set (the last one is that sequence).
        self._next_id: Optional[str] = None
        self._next_user = ""
        self._prefix = ""
        self._sequence = 0
        self._ends: List[int] = []

    def is_new(self, user: str, record_id: str, index: int) -> bool:
        """Whether the record at ``index`` of the message, of ``user`` with ``record_id``, is new (it
        is then remembered) rather than a duplicate."""
        if record_id == self._next_id and user == self._next_user:
            sequence = self._sequence = self._sequence + 1
            self._ends[-1] = sequence  # what RangeSet.add does for the next number of its last range
            self._next_id = self._prefix + str(sequence + 1) if sequence < LAST_SEQUENCE else None
            return True
        return self._admit(user, record_id, index)

    def _admit(self, user: str, record_id: str, index: int) -> bool:
        split = split_record_id(record_id)
        if split is None:
            if self._known is None:  # the first id of another form in this message: look up all
                self._known = self._filter._known_ids(self._other_ids(index))
            return self._filter._admit_other((user, record_id), self._known)
        source, number = split
        ranges = self._filter._admit_sequence(user, source, number)
        if ranges is None:
            return False
        if number == ranges.ends[-1] and number < LAST_SEQUENCE:  # the highest of its stream: follow it
            self._next_user, self._prefix, self._sequence, self._ends = user, source + ":", number, ranges.ends
            self._next_id = self._prefix + str(number + 1)
        return True

    def _other_ids(self, start: int) -> List[Tuple[str, str]]:
        """The ``(user, record_id)`` pairs of the message from ``start`` on whose id is not of the
        sequence form."""
        keys = []
        at = self._record_index
        for entry in itertools.islice(self._entries, start, None):
            record = entry[at]
            record_id = record.get(RECORD_ID) if type(record) is dict else None
            if type(record_id) is str and split_record_id(record_id) is None:
                user = record.get(USER_ID)
                keys.append((user if type(user) is str else ("" if user is None else str(user)), record_id))
        return keys
