"""Benchmarks of mona-client: ``python3 -m bench`` (see docs/performance.md)."""
