"""Which ARCs are kept when the config file samples: a deterministic function of the root context id.

The decision for an ARC is ``keep(root_id, rate)``::

    zlib.crc32(root_id.encode("utf-8")) / 2**32 < rate

where ``root_id`` is the full context id up to its first ``.``, and ``rate`` the ``sample_rates`` entry
of the ARC's class, else ``sample_rate``. It depends on nothing but the id and the rate, so every
process that sees the same ARC (a service continuing it from a header, a worker process, a late
ground truth) and any other tool (the collector, a notebook) makes the same decision. Rate 1 keeps
every ARC, rate 0 none; between, the kept ARCs of a lower rate are a subset of those of a higher one.
CRC-32 (zlib's, gzip's, every language's) rather than a cryptographic hash: nobody gains by steering
which of their own ARCs are kept, it is spread evenly over the client's ids (measured within 1-4 % of
the rate down to 0.001), and it costs ~0.1 µs on the path of every context instead of ~0.6 µs.

A sampled-out context still runs its block and nests its sub-contexts, but exports nothing: its stack
is a :class:`SampledOutStack`, which reads as "no context" to ``export()`` so that the exports pay no
more than the disabled path, and which still holds the ids so that they propagate.
"""

from __future__ import annotations

from typing import Mapping, Tuple
from zlib import crc32

from .context import Frame
from .record import CONTEXT_SEPARATOR

__all__ = ["SampledOutStack", "keep", "root_of", "sampling_rate"]

_SCALE = float(2**32)


def root_of(context_id: str) -> str:
    """The root id of a full context id: the part before the first ``.``."""
    return context_id.split(CONTEXT_SEPARATOR, 1)[0]


def keep(root_id: str, rate: float) -> bool:
    """Whether the ARC of ``root_id`` is kept at ``rate`` (see the module's docstring for the function)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return crc32(root_id.encode("utf-8", "surrogatepass")) / _SCALE < rate


def sampling_rate(arc_class: object, default: float, per_class: Mapping[str, float]) -> float:
    """The rate of an ARC of ``arc_class``: its ``sample_rates`` entry, else the default."""
    if per_class and isinstance(arc_class, str):
        return per_class.get(arc_class, default)
    return default


class SampledOutStack(Tuple[Frame, ...]):
    """The stack of a sampled-out context: the frames of a normal stack, but false in a boolean test.

    ``export()`` and ``new_mona_sub_context`` test ``if not stack`` already (outside any context);
    a sampled-out stack takes that branch, so exports in it cost no more than on the disabled path,
    and an ordinary stack pays nothing for sampling. Its ids stay readable for propagation.
    """

    __slots__ = ()

    def __bool__(self) -> bool:
        return False
