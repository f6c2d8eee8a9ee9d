"""``python -m mona_collector.demo``: a collector, an instrumented sample algorithm, and its ARCs.

It starts an embedded collector on a free port with a fresh database, runs a small fraud-scoring
service instrumented with mona_client (ARCs with sub-contexts, a MonaThread, gevent greenlets when
gevent is installed, asyncio tasks, and ground truth that arrives after the run), flushes, and shows
the result with the same ``mona`` commands you would type.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from mona_client import client
from mona_client.threads import MonaThread, in_new_mona_context, spawn_greenlet

from .service import Collector

TRANSACTIONS = 8
#: Runs of the fraud scorer from the past 8 days, so that ``mona report`` has a baseline to compare with.
HISTORY_RUNS = 2000
DAY = 86400.0


def score_transaction(index: int, rng: random.Random) -> str:
    """One run of the fraud scorer: an ARC with a feature step, a model step and a side thread."""
    with client.new_mona_context(arc_class="FRAUD_SCORER", context_id=f"txn-{index}") as arc_id:
        client.export({"customer_tier": rng.choice(["gold", "silver"]), "country": rng.choice(["DE", "FR", "US"])})
        with client.new_mona_sub_context(arc_class="FEATURES", sub_context_id="features"):
            client.export({"n_features": 42, "missing_features": rng.randint(0, 3), "latency_ms": rng.uniform(1, 9)})
        with client.new_mona_sub_context(arc_class="MODEL", sub_context_id="model"):
            score = rng.random()
            client.export({"fraud_score": round(score, 3), "decision": "block" if score > 0.8 else "allow"})
        # An enrichment call on a thread of its own: MonaThread keeps it in this ARC.
        enrich = MonaThread(target=lambda: client.export({"geo_lookup_ms": 3.2}))
        enrich.start()
        enrich.join()
        return arc_id


def backfill_history(rng: random.Random, now: float) -> None:
    """A week and a day of fraud-scorer runs, exported with their own (past) timestamps.

    In the last 24 hours the model scores Brazilian transactions higher than before and the feature
    step got slower everywhere: what ``mona report`` should find, and nothing else.
    """
    for index in range(HISTORY_RUNS):
        at = now - rng.uniform(60.0, 8 * DAY)
        recent = at > now - DAY
        country = rng.choice(["DE", "FR", "US", "BR"])
        score = rng.betavariate(2, 5)
        if recent and country == "BR":
            score = min(1.0, score + 0.3)
        latency = rng.gauss(8.0 if recent else 5.0, 1.0)
        with client.new_mona_context(arc_class="FRAUD_SCORER", context_id=f"hist-{index}", export_timestamp=at):
            client.export({"country": country, "customer_tier": rng.choice(["gold", "silver"])}, export_timestamp=at)
            client.export(
                {"features_latency_ms": round(latency, 2), "fraud_score": round(score, 3)}, export_timestamp=at
            )


def recommend_with_greenlets(rng: random.Random) -> Optional[List[str]]:
    """Recommendation runs in gevent greenlets, each its own ARC (without monkey patching here)."""
    try:
        import gevent
    except ImportError:
        return None

    def recommend(user: str) -> None:
        with client.new_mona_context(arc_class="RECOMMENDER", context_id=f"reco-{user}"):
            gevent.sleep(0)  # other greenlets run here; each keeps its own context
            client.export({"user_segment": rng.choice(["new", "returning"]), "n_items": rng.randint(5, 20)})
            # spawn_greenlet carries this ARC into a helper greenlet (a plain spawn starts empty).
            spawn_greenlet(client.export, {"ranking_ms": 7.5}).join()

    users = ["ada", "bob", "cy"]
    gevent.joinall([gevent.spawn(recommend, user) for user in users])
    return [f"reco-{user}" for user in users]


@in_new_mona_context(arc_class="SEARCH_RANKER")
async def rank(query: str) -> None:
    """Each call is a new ARC; concurrent tasks never see each other's context."""
    client.export({"query_length": len(query)})
    await asyncio.sleep(0.01)
    with client.new_mona_sub_context(arc_class="RERANK"):
        client.export({"top_score": 0.91, "candidates": 120})


async def search(queries: List[str]) -> None:
    await asyncio.gather(*(rank(q) for q in queries))


def mona(*args: str) -> None:
    """Run a ``mona`` CLI command as a user would, printing what it prints."""
    command = [sys.executable, "-m", "mona_collector.cli", *args]
    print(f"\n$ mona {' '.join(args)}", flush=True)
    subprocess.run(command, check=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database file (default: a fresh one in a temporary folder)")
    args = parser.parse_args(argv)
    db_path = args.db or os.path.join(tempfile.mkdtemp(prefix="mona-demo-"), "arcs.db")

    with Collector(port=0, db_path=db_path) as collector:
        print(f"collector listening on 127.0.0.1:{collector.port}, storing in {db_path}", flush=True)
        client.init_client(port=collector.port, user_id="demo", print_logs=False)
        client.set_global_init_message({"service": "payments", "model_version": "2.3.1"})
        rng = random.Random(7)

        backfill_history(rng, time.time())
        for index in range(TRANSACTIONS):
            score_transaction(index, rng)
        greenlet_arcs = recommend_with_greenlets(rng)
        asyncio.run(search(["red shoes", "laptop bag", "tent"]))

        # Ground truth arrives later and lands in the ARC it belongs to.
        with client.new_mona_context(context_id="txn-3", export_timestamp=time.time() + 3600):
            client.export({"is_fraud": True, "chargeback_amount": 129.5}, export_timestamp=time.time() + 3600)

        delivered = client.flush(timeout=15)
        exported = client.stats()["acked"]
        client.close()
        collector.wait_for_records(exported, timeout=15)
        print(f"{exported} records exported, delivered: {delivered}", flush=True)
        if greenlet_arcs is None:
            print("(gevent is not installed: the greenlet part was skipped)")

    mona("arcs", "list", "--db", db_path)
    mona("arcs", "show", "txn-3", "--db", db_path)
    # Statistics, drift and segment insights: the last 24 hours against the 7 days before.
    mona("report", "--db", db_path)
    mona("report", "--arc-class", "FRAUD_SCORER", "--db", db_path)
    print(f"\nQuery it yourself: mona arcs list --db {db_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
