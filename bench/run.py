"""The mona-client benchmark: one command, one process run, every figure next to its peers.

    python3 -m bench            # the full run (a few minutes)
    python3 -m bench --quick    # a smoke run (seconds): same tables, tiny counts, figures meaningless

Within each repetition the contenders run one after the other (A, B, C, A, B, C, ...; the order
rotates every repetition); each figure is the median over repetitions, and each ratio is computed
within a repetition, then the median taken. Absolute times on a shared machine drift; ratios between
contenders measured side by side hold much better. See docs/performance.md for what each row means.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

if __package__ in (None, ""):  # python3 bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import breakdown, e2e
from bench.micro import Figures, Micro
from bench.sinks import Sink, start_sink
from bench.timing import median

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for package in ("msgpack", "fluent-logger", "opentelemetry-sdk", "structlog"):
        try:
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
        except Exception:
            pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; {', '.join(versions)}"
    )


def _fmt_ns(value: Optional[float]) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.0f}"


def _fmt_ratio(value: Optional[float]) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, width, how in zip(cells, widths, align):
            out.append(str(cell).ljust(width) if how == "l" else str(cell).rjust(width))
        return "| " + " | ".join(out) + " |"

    rule = "| " + " | ".join(("-" * w if a == "l" else "-" * (w - 1) + ":") for w, a in zip(widths, align)) + " |"
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def _rotated(items: List[T], shift: int) -> List[T]:
    shift %= len(items)
    return items[shift:] + items[:shift]


def run_micro(micro: Micro, repetitions: int) -> List[Dict[str, Figures]]:
    rounds = []
    for repetition in range(repetitions):
        rounds.append(micro.repetition(_rotated(micro.contenders, repetition)))
        print(f"  micro: repetition {repetition + 1}/{repetitions} done", file=sys.stderr, flush=True)
    return rounds


def _per_rep_median(rounds: List[Dict[str, Figures]], fn: Callable[[Dict[str, Figures]], float]) -> float:
    return median([fn(figures) for figures in rounds])


def report_micro(micro: Micro, rounds: List[Dict[str, Figures]]) -> Dict[str, float]:
    """Prints the per-call table; returns the headline figures for the goals."""

    def med(key: str, attr: str) -> float:
        return _per_rep_median(rounds, lambda f: getattr(f[key], attr))

    def ratio(numerator: str, denominator: str) -> float:
        return _per_rep_median(rounds, lambda f: f[numerator].per_op / f[denominator].per_op)

    empty = rounds[0]["empty"]
    loop_cost, timer_cost = med("empty", "per_op"), med("empty", "p50")
    print()
    print(
        f"### Per call, on the caller's thread (ns; {len(rounds)} repetitions; the loop's "
        f"{loop_cost:.0f} ns per iteration and the timer pair's {timer_cost:.0f} ns are subtracted)"
    )
    print()
    rows = []
    for contender in micro.contenders:
        if contender.key == "empty":
            continue
        key = contender.key
        rows.append(
            [
                contender.label,
                _fmt_ns(med(key, "per_op")),
                _fmt_ns(med(key, "p50")),
                _fmt_ns(med(key, "p99")),
                _fmt_ratio(ratio(key, "packb_rec")),
                _fmt_ratio(ratio(key, "export")),
            ]
        )
    print(
        _table(
            ["contender", "median", "p50 (1 call)", "p99 (1 call)", "÷ packb(record)", "÷ export()"],
            rows,
            "lrrrrr",
        )
    )
    del empty
    figures = {
        "export": med("export", "per_op"),
        "export_p99": med("export", "p99"),
        "export_over_packb": ratio("export", "packb_rec"),
        "fluent_async_over_export": ratio("fluent_async", "export"),
        "context": med("context", "per_op"),
        "sub": med("sub", "per_op"),
        "context_over_cvar": ratio("context", "cvar"),
        "context_over_packb": ratio("context", "packb_rec"),
        "disabled": med("disabled", "per_op"),
        "disabled_over_packb": ratio("disabled", "packb_rec"),
    }
    print()
    print(
        f"message: 4 fields, {micro.message_bytes} B as msgpack; the record export() encodes: "
        f"{micro.record_bytes} B. Samples per contender and repetition for p50/p99: "
        f"{min(c.sample_n for c in micro.contenders):,} to {max(c.sample_n for c in micro.contenders):,}."
    )
    return figures


PACED_ARCS = 500  # the paced runs flush every 500 ARCs (5,000 records)


def run_e2e(arcs: int, repetitions: int, workdir: str, config_path: str, sink: Sink) -> Dict[str, List[Any]]:
    runs: Dict[str, List[Any]] = {"mona": [], "paced": [], "fluent": [], "collector": [], "split": []}
    frames = e2e.client_frames(arcs)
    halves = [e2e.client_frames(arcs // 2), e2e.client_frames(arcs // 2)]
    for repetition in range(repetitions):
        contenders: List[Tuple[str, Callable[[], object]]] = [
            ("collector", lambda: e2e.collector_alone_run(frames, arcs * e2e.RECORDS_PER_ARC, workdir)),
            ("split", lambda: e2e.split_ceiling_run(halves, arcs // 2 * 2 * e2e.RECORDS_PER_ARC, workdir)),
            ("mona", lambda: e2e.mona_run(arcs, workdir, config_path)),
            ("paced", lambda: e2e.mona_run(arcs, workdir, config_path, flush_every=PACED_ARCS)),
            ("fluent", lambda: e2e.fluent_run(arcs, sink)),
        ]
        for name, fn in _rotated(contenders, repetition):
            runs[name].append(fn())
        print(f"  end to end: repetition {repetition + 1}/{repetitions} done", file=sys.stderr, flush=True)
    return runs


def report_e2e(runs: Dict[str, List[Any]]) -> Dict[str, float]:
    mona_runs, paced_runs, fluent_runs = runs["mona"], runs["paced"], runs["fluent"]

    def over_fluent(mona: List[Any]) -> float:
        return median([m.exports_per_s / f.exports_per_s for m, f in zip(mona, fluent_runs)])

    first = mona_runs[0]
    print()
    print(
        f"### End to end, one thread, {first.exports:,} exports in {first.records // e2e.RECORDS_PER_ARC:,} ARCs "
        f"({first.records:,} records with the arc_class ones) per run, {len(mona_runs)} repetitions"
    )
    print()
    rows = []
    for label, group in (
        ("mona client → mona collect, merged in ARCs, queryable", mona_runs),
        (f"the same, caller flushes every {PACED_ARCS} ARCs", paced_runs),
    ):
        rows.append(
            [
                label,
                f"{median([m.exports_per_s for m in group]):,.0f}",
                f"{median([m.records_per_s for m in group]):,.0f}",
                f"{median([m.exports / m.export_seconds for m in group]):,.0f}",
                f"{max(m.spooled for m in group):,}",
                f"{max(m.dropped for m in group):,}",
                _fmt_ratio(over_fluent(group)),
            ]
        )
    rows.append(
        [
            "fluent-logger async emit → decode-and-discard sink",
            f"{median([f.exports_per_s for f in fluent_runs]):,.0f}",
            "",
            f"{median([f.exports / f.seconds for f in fluent_runs]):,.0f}",
            "",
            "",
            "1.00×",
        ]
    )
    collector_rates = [run.records_per_s for run in runs["collector"]]
    split_rates = [run.records_per_s for run in runs["split"]]
    for label, rates in (
        ("collector alone: the same records pre-encoded, 8 chunks in flight, merged, queryable", collector_rates),
        ("two collectors, own databases, half the ARCs each, at once (the ceiling of a 2-way split)", split_rates),
    ):
        exports_per_s = [rate * e2e.EXPORTS_PER_ARC / e2e.RECORDS_PER_ARC for rate in rates]
        rows.append(
            [
                label,
                f"{median(exports_per_s):,.0f}",
                f"{median(rates):,.0f}",
                "",
                "",
                "",
                _fmt_ratio(median([rate / f.exports_per_s for rate, f in zip(exports_per_s, fluent_runs)])),
            ]
        )
    print(
        _table(
            ["path", "exports/s", "records/s", "caller's loop, exports/s", "spooled", "dropped", "÷ fluent-logger"],
            rows,
            "lrrrrrr",
        )
    )
    checks = all(m.stored_exports == m.records - m.dropped for m in mona_runs + paced_runs)
    print()
    print(
        "every run: "
        + ("all delivered records found merged in the database's ARCs" if checks else "MISMATCH in the database")
        + "; spooled and dropped are the most of any run."
    )
    print(
        "mona's end to end is "
        f"{median([m.records_per_s / c for m, c in zip(mona_runs, collector_rates)]):.2f}× what the collector "
        "alone stores from pre-encoded chunks in the same repetition (records/s)."
    )
    print(
        "the collector alone acks (stores in its raw log) "
        f"{median([run.acked_per_s for run in runs['collector']]):,.0f} records/s of them; merged is when its "
        "database counts the last record (tag_stats, what `mona stats` shows)."
    )
    print(
        "two collectors, each merging half the ARCs into its own database at the same time, merge "
        f"{median([s / c for s, c in zip(split_rates, collector_rates)]):.2f}× what one collector merges in the "
        "same repetition: the most a merger split across two processes by ARC key could give on this machine."
    )
    dropped = max(m.dropped for m in mona_runs)
    return {
        "e2e": median([m.exports_per_s for m in mona_runs]),
        "e2e_over_fluent": over_fluent(mona_runs),
        "e2e_dropped": float(dropped),
        "collector_alone": median(collector_rates),
        "split_ceiling": median(split_rates),
    }


def run_memory(count: int) -> Dict[str, float]:
    import json

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--count", str(count)],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures: Dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


#: The shapes of the collector's memory runs: sub-contexts per ARC (5 records each, plus 5 in the root).
RSS_SHAPES = (1, 19)  # 10 and 100 records per ARC


def run_collector_alone(records: int, workdir: str) -> List[e2e.CollectorRun]:
    """The collector alone fed ``records`` records of the client's form, once per shape of
    :data:`RSS_SHAPES` (the same records in 10 and in 100 times fewer ARCs): rate and memory."""
    runs = []
    for subs in RSS_SHAPES:
        per_arc = 5 + 5 * subs
        frames = e2e.client_frames(records // per_arc, subs)
        runs.append(e2e.collector_alone_run(frames, records // per_arc * per_arc, workdir))
        del frames
    return runs


def run_merge_breakdown(records: int) -> List[Dict[str, float]]:
    """The merger's stages (µs per record) for the client's records (with and without the report's
    side table) and for bench_collector's."""
    from bench import merge_breakdown
    from bench.bench_collector import make_entries

    client = e2e.client_entries(records // e2e.RECORDS_PER_ARC)
    return [
        merge_breakdown.measure(client),
        merge_breakdown.measure(client, side_table=False),
        merge_breakdown.measure(make_entries(records, 1000, 8)),
    ]


def report_merge_breakdown(figures: List[Dict[str, float]]) -> None:
    from bench.merge_breakdown import DOCUMENTS, STAGES

    print()
    print(
        f"### Where the merger's time goes (µs per record, {int(figures[0]['records']):,} records merged "
        "in-process, stages timed apart, the write inline)"
    )
    print()
    rows = [[stage, *(f"{one[stage]:.2f}" for one in figures)] for stage in (*STAGES, "total")]
    rows.insert(len(STAGES) - 1, [f"  {DOCUMENTS} (packed apart)", *(f"{one[DOCUMENTS]:.2f}" for one in figures)])
    rows.append(["records/s, one core", *(f"{1e6 / one['total']:,.0f}" for one in figures)])
    print(
        _table(
            [
                "stage",
                "the client's records (10 per ARC)",
                "the same, no side table",
                "bench_collector's records (8 per ARC, named steps)",
            ],
            rows,
            "lrrr",
        )
    )


def run_burst(exports: int, workdir: str, config_path: str) -> e2e.MonaRun:
    """One burst of ``exports`` exports from one thread through the client into a running collector."""
    return e2e.mona_run(-(-exports // e2e.EXPORTS_PER_ARC), workdir, config_path, timeout=1800)


def report_collector(runs: List[e2e.CollectorRun], burst: e2e.MonaRun) -> Dict[str, Any]:
    """Prints the collector's own table (rate, memory at two ARC counts, the client's burst)."""
    print()
    print(f"### The collector alone, {runs[0].records:,} records of the client's form, pre-encoded")
    print()
    rows = []
    for run in runs:
        cpu = [run.cpu.get(name, 0.0) / run.records * 1e6 for name in ("network side", "merger", "writer")]
        rows.append(
            [
                f"{run.arcs:,} ARCs ({run.records // run.arcs} records each)",
                f"{run.records_per_s:,.0f}",
                f"{run.acked_per_s:,.0f}",
                f"{run.rss / 2**20:,.1f} MiB ({run.peak_rss / 2**20:,.1f})",
                f"{run.merger_rss / 2**20:,.1f} MiB ({run.merger_peak_rss / 2**20:,.1f})",
                f"{run.writer_rss / 2**20:,.1f} MiB ({run.writer_peak_rss / 2**20:,.1f})",
                " / ".join(f"{value:.2f}" for value in cpu),
                f"{sum(run.cpu.values()) / run.merged_seconds:.2f}",
            ]
        )
    print(
        _table(
            [
                "run",
                "merged + queryable, records/s",
                "acked, records/s",
                "RSS network side (peak)",
                "RSS merger (peak)",
                "RSS writer (peak)",
                "CPU µs/record: network side / merger / writer",
                "cores busy",
            ],
            rows,
            "lrrrrrrr",
        )
    )
    print()
    print(
        f"burst: {burst.exports:,} exports ({burst.records:,} records) from one thread through the client into "
        f"a running `mona collect`: {burst.exports_per_s:,.0f} exports/s merged and queryable "
        f"(the caller's loop: {burst.exports / burst.export_seconds:,.0f} exports/s); "
        f"dropped {burst.dropped:,}, spooled {burst.spooled:,} (the client's stats()); "
        f"collector RSS afterwards {burst.rss / 2**20:,.1f} MiB."
    )
    return {
        "collector_rss": float(max(max(run.rss, run.merger_rss, run.writer_rss) for run in runs)),
        "rss_figures": " / ".join(
            f"{run.rss / 2**20:,.0f}+{run.merger_rss / 2**20:,.0f}+{run.writer_rss / 2**20:,.0f}" for run in runs
        ),
        "burst_lost": float(burst.dropped + burst.spooled),
        "burst_dropped": float(burst.dropped),
        "burst_spooled": float(burst.spooled),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (figures meaningless)")
    parser.add_argument("--repetitions", type=int, help="repetitions of the per-call and end-to-end rounds")
    parser.add_argument("--arcs", type=int, help="ARCs per end-to-end run (9 exports, 10 records each)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the step-by-step breakdown")
    args = parser.parse_args(argv)
    quick = args.quick
    micro_reps = args.repetitions or (2 if quick else 7)
    e2e_reps = args.repetitions or (1 if quick else 5)
    arcs = args.arcs or (300 if quick else 20_000)
    collector_records = 3_000 if quick else 1_000_000
    burst_exports = 3_000 if quick else 1_000_000
    memory_count = 5_000 if quick else 100_000

    started = time.monotonic()
    print(f"## mona-client bench ({'quick smoke run: figures meaningless' if quick else 'full run'})")
    print()
    print(f"machine: {_machine()}")
    workdir = tempfile.mkdtemp(prefix="mona-bench-")
    sink = start_sink()
    micro: Optional[Micro] = None
    goals: Dict[str, Any] = {}
    try:
        print("  setting up and calibrating", file=sys.stderr, flush=True)
        micro = Micro(sink.port, workdir, quick)
        goals.update(report_micro(micro, run_micro(micro, micro_reps)))

        if not args.no_breakdown:
            print("  breakdown", file=sys.stderr, flush=True)
            steps = breakdown.measure(2 if quick else 7, quick)
            print()
            print("### Where the time of export() and of a context goes (ns per call, interleaved rounds)")
            print()
            print(
                _table(
                    ["step", "median", "lowest round"],
                    [[label, *(map(_fmt_ns, value) if value else ("n/a", "n/a"))] for label, value in steps],
                    "lrr",
                )
            )
        micro.close()
        micro = None

        goals.update(report_e2e(run_e2e(arcs, e2e_reps, workdir, micro_config(workdir), sink)))

        print("  memory", file=sys.stderr, flush=True)
        memory = run_memory(memory_count)
        print()
        print("### Memory")
        print()
        rows = [
            [
                f"per queued export ({memory['queued']:,} exports held in the sender's queue)",
                f"{memory['tracemalloc_per_export']:,.0f} B (tracemalloc)",
                f"{memory['rss_per_export']:,.0f} B (RSS growth)",
            ],
        ]
        print(_table(["what", "measured", "also"], rows, "lrr"))
        print()
        print(
            f"one queued entry is a bytes object of {memory['entry_bytes']} B of msgpack "
            f"({memory['object_bytes']} B with its object header) plus its slot in the deque."
        )
        goals["memory"] = memory["tracemalloc_per_export"]

        print("  the collector alone", file=sys.stderr, flush=True)
        alone = run_collector_alone(collector_records, workdir)
        print("  merge breakdown", file=sys.stderr, flush=True)
        stages = run_merge_breakdown(3_000 if quick else 200_000)
        print("  burst", file=sys.stderr, flush=True)
        burst = run_burst(burst_exports, workdir, micro_config(workdir))
        goals.update(report_collector(alone, burst))
        report_merge_breakdown(stages)

        print()
        print("### Goals")
        print()
        checks = [
            (
                "export() ≤ 1.5× packb(record)",
                goals["export_over_packb"] <= 1.5,
                f"{_fmt_ratio(goals['export_over_packb'])} ({goals['export']:,.0f} ns)",
            ),
            (
                "context enter+exit (arc_class) ≤ 2.5× packb(record)",
                goals["context_over_packb"] <= 2.5,
                f"{_fmt_ratio(goals['context_over_packb'])} ({goals['context']:,.0f} ns)",
            ),
            (
                "disabled path (context + export) ≤ 0.5× packb(record)",
                goals["disabled_over_packb"] <= 0.5,
                f"{_fmt_ratio(goals['disabled_over_packb'])} ({goals['disabled']:,.0f} ns)",
            ),
            (
                "export() ≥ 20× cheaper than fluent-logger async emit",
                goals["fluent_async_over_export"] >= 20,
                _fmt_ratio(goals["fluent_async_over_export"]),
            ),
            ("export() p99 ≤ 20 µs", goals["export_p99"] <= 20_000, f"{goals['export_p99']:,.0f} ns"),
            ("sub-context enter+exit ≤ 2 µs", goals["sub"] <= 2000, f"{goals['sub']:,.0f} ns"),
            (
                "end to end ≥ 250,000 exports/s in ARCs",
                goals["e2e"] >= 250_000 and not goals["e2e_dropped"],
                f"{goals['e2e']:,.0f} /s" + (f", {goals['e2e_dropped']:,.0f} dropped" if goals["e2e_dropped"] else ""),
            ),
            ("end to end ≥ 5× fluent-logger", goals["e2e_over_fluent"] >= 5, _fmt_ratio(goals["e2e_over_fluent"])),
            ("≤ 300 B per queued export", goals["memory"] <= 300, f"{goals['memory']:,.0f} B"),
            (
                "collector alone ≥ 400,000 records/s merged and queryable",
                goals["collector_alone"] >= 400_000,
                f"{goals['collector_alone']:,.0f} /s",
            ),
            (
                "collector RSS ≤ 64 MiB after 1,000,000 records (each process, both ARC counts)",
                goals["collector_rss"] <= 64 * 2**20,
                f"{goals['rss_figures']} MiB",
            ),
            (
                "1,000,000-export burst: 0 dropped, 0 spooled",
                not goals["burst_lost"],
                f"{goals['burst_dropped']:,.0f} dropped, {goals['burst_spooled']:,.0f} spooled",
            ),
        ]
        print(_table(["goal", "measured", "met"], [[g, m, "yes" if ok else "NO"] for g, ok, m in checks], "lrl"))
        print()
        print(f"total bench time: {time.monotonic() - started:.0f} s")
    finally:
        if micro is not None:
            micro.close()
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def micro_config(workdir: str) -> str:
    """The config file the client watches (written by :class:`Micro`; enabled)."""
    return os.path.join(workdir, "mona_client_config.json")


if __name__ == "__main__":
    sys.exit(main())
