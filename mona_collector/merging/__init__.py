"""Merging: how exported records fold into ARC documents, and the process that does it.

* :mod:`.documents`: the ARC document and the one merge rule (the later export wins), in memory;
* :mod:`.record_ids`: which record ids were merged already (duplicates are dropped);
* :mod:`.process`: the merger, a child process that tails the raw log and writes ARCs;
* ``python -m mona_collector.merging``: that process's entry point.
"""
