"""The shape of one exported record on the wire, shared by the client and the collector.

Every export travels as a Forward event with tag :data:`TAG` and a record map::

    {"user_id": str, "context": "<root id>[.<sub id>...]", "message": {...},
     "export_timestamp": int seconds, "record_id": "<source>:<sequence>"}

The first four keys are the original mona client's record, so existing Fluentd pipelines keep working.
``record_id`` is unique per record (a random per-process source and a counter): the collector drops a
record it already stored when a chunk is resent, which makes at-least-once delivery exactly-once in ARCs.
"""

from __future__ import annotations

TAG = "mona.client.message"

USER_ID = "user_id"
CONTEXT = "context"
MESSAGE = "message"
EXPORT_TIMESTAMP = "export_timestamp"
RECORD_ID = "record_id"

#: Keys inside ``message`` that the client writes itself; user keys with this prefix are dropped.
RESERVED_PREFIX = "MONA_"
ARC_CLASS_KEY = "MONA_ARC_CLASS"
GLOBALS_KEY = "MONA_GLOBALS"
INVALID_EXPORT_TIMESTAMP_KEY = "MONA_INVALID_EXPORT_TIMESTAMP"
#: Run facts the client exports by itself when a context exits: see docs/arc-document.md.
EXCEPTION_TYPE_KEY = "MONA_EXCEPTION_TYPE"
EXCEPTION_MESSAGE_KEY = "MONA_EXCEPTION_MESSAGE"
DURATION_MS_KEY = "MONA_DURATION_MS"

#: Separator of the ids in a full context id: "root.sub.subsub".
CONTEXT_SEPARATOR = "."
