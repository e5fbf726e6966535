"""Ingest benchmark: one day of one symbol's trades, landed CSV → validated raw Parquet.

Run ``python -m benchmarks.ingest_bench [--rows 5000000] [--out DIR]`` (see benchmarks/README.md).

Three variants read the same simulated ``binance-trades`` file (``sim-trades`` feed of feeds.yaml):

- ``ours``: :func:`assets.ingestion.ingest.scan_landing` + :func:`assets.ingestion.ingest.ingest_partitions` into a
  fresh storage root (so the landing index is rebuilt and the file hashed every time);
- ``pandas``: ``pd.read_csv`` with names and dtypes, the same checks vectorized in NumPy/pandas,
  split into accepted and quarantined rows, ``to_parquet`` both;
- ``floor``: one DuckDB ``COPY (SELECT * FROM read_csv(…)) TO '….parquet'``, no checks at all.

Wall times are best and median of ``--repeat`` runs in this process, variants interleaved. Peak
memory is the max RSS of a fresh child process per variant (``os.wait4``), at N and N/5 rows.
``pandas (pyarrow engine)`` is reported for information only; the goals use the plain baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FEEDS_FILE = REPO / "feeds.yaml"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "ingest.json"
FEED = "sim-trades"
SYMBOL = "BTCUSDT"
DAY = date(2024, 1, 2)
DEFAULT_ROWS = 5_000_000
# One simulated symbol-day must stay under the simulator's TRADE_ID_STRIDE (10 million trades).
MAX_ROWS = 9_000_000
ROW_GROUP_ROWS = (
    1_000_000  # as assets.ingestion.ingest.ROW_GROUP_ROWS, so the Parquet layouts compare
)

GOAL_OURS_OVER_FLOOR = 1.5  # ours may cost at most 1.5x a bare CSV→Parquet copy
GOAL_PANDAS_OVER_OURS = 2.0  # and must be at least 2x faster than the pandas baseline

PANDAS_DTYPES = {
    "id": "int64",
    "price": "float64",
    "qty": "float64",
    "quote_qty": "float64",
    "time": "int64",
    "is_buyer_maker": "bool",
    "is_best_match": "bool",
}

# Quarantine reasons, in rule order (the first that holds wins), as assets.ingestion.ingest words them.
REASON_OUTSIDE = "timestamp outside partition"
REASON_PRICE_NAN = "price missing or NaN"
REASON_PRICE = "price not positive and finite"
REASON_SIZE = "size negative or missing"
REASON_DUPLICATE = "duplicate trade_id"

VARIANTS = ("ours", "pandas", "pandas_pyarrow", "floor")
LABELS = {
    "ours": "ours (scan_landing + ingest_partitions)",
    "pandas": "pandas baseline (read_csv, C engine)",
    "pandas_pyarrow": "pandas, pyarrow CSV engine (info only)",
    "floor": "floor: DuckDB COPY csv→parquet, no checks",
}
# What each variant imports: a child that only imports these gives the memory floor of Python.
IMPORTS = {
    "ours": (
        "assets.core.feeds",
        "assets.ingestion.ingest",
        "assets.core.storage",
        "duckdb",
        "pyarrow",
    ),
    "pandas": ("numpy", "pandas", "pyarrow", "pyarrow.parquet"),
    "pandas_pyarrow": ("numpy", "pandas", "pyarrow", "pyarrow.parquet", "pyarrow.csv"),
    "floor": ("duckdb",),
}


# --------------------------------------------------------------------------------------------
# Input data
# --------------------------------------------------------------------------------------------
def make_trades(rows: int, bad_every: int, seed: int = 7) -> tuple[Any, dict[str, int]]:
    """``rows`` simulated trades of SYMBOL on DAY (the day's first ``rows`` trades), with every
    ``bad_every``-th row made bad: alternately a zero price and a repeat of the previous trade
    id. Returns the table and the expected quarantine count per reason."""
    import numpy as np
    import pyarrow as pa

    from assets.live.simulator import MarketSimulator, SimulatorConfig

    if not 0 < rows <= MAX_ROWS:
        raise SystemExit(f"--rows must be in 1..{MAX_ROWS:,} (one simulated symbol-day)")
    per_day = int(rows * 1.05) + 1000
    for _ in range(5):
        config = SimulatorConfig(symbols=(SYMBOL,), seed=seed, trades_per_day=per_day)
        table = MarketSimulator(config).trades_for_day(DAY)
        if table.num_rows >= rows:
            break
        # Regimes make a day busier or quieter than trades_per_day: scale up and try again.
        per_day = int(per_day * rows / max(table.num_rows, 1) * 1.05) + 1000
    else:
        raise RuntimeError(f"could not simulate {rows} trades in one day")
    table = table.slice(0, rows)
    expected = {REASON_PRICE: 0, REASON_DUPLICATE: 0}
    if bad_every:
        price = table["price"].to_numpy().copy()
        trade_id = table["trade_id"].to_numpy().copy()
        bad = np.arange(bad_every // 2 or 1, rows, bad_every)
        zero_price, repeat_id = bad[0::2], bad[1::2]
        price[zero_price] = 0.0
        trade_id[repeat_id] = trade_id[repeat_id - 1]
        table = table.set_column(
            table.schema.get_field_index("price"), "price", pa.array(price, pa.float64())
        )
        table = table.set_column(
            table.schema.get_field_index("trade_id"), "trade_id", pa.array(trade_id, pa.int64())
        )
        expected = {REASON_PRICE: len(zero_price), REASON_DUPLICATE: len(repeat_id)}
    return table, {k: v for k, v in expected.items() if v}


def write_landing_file(table: Any, folder: Path) -> Path:
    from assets.live.simulator import write_binance_trades

    (path,) = write_binance_trades(table, folder, time_unit="ms")
    return path


@contextlib.contextmanager
def fresh_root(base: Path, csv: Path, name: str) -> Iterator[Path]:
    """A new storage root holding only the landed file (a hard link: no copy, same mtime)."""
    root = base / name
    if root.exists():
        shutil.rmtree(root)
    landing = root / "landing" / FEED
    landing.mkdir(parents=True)
    try:
        os.link(csv, landing / csv.name)
    except OSError:
        shutil.copy2(csv, landing / csv.name)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def landed_file(root: Path) -> Path:
    (path,) = (root / "landing" / FEED).glob("*.csv")
    return path


# --------------------------------------------------------------------------------------------
# Variants: each takes a fresh root with the landed file and returns what it wrote
# --------------------------------------------------------------------------------------------
def run_ours(root: Path, con: Any = None) -> dict[str, Any]:
    from assets.core.feeds import load_feeds
    from assets.core.storage import Storage
    from assets.ingestion.ingest import ingest_partitions, new_connection, scan_landing

    feeds = load_feeds(FEEDS_FILE)
    storage = Storage(str(root))
    con = con or new_connection()
    landed = scan_landing(storage, feeds, con)
    report = ingest_partitions(storage, feeds, "trades", [DAY.isoformat()], landed=landed, con=con)
    return {
        "rows_read": report.rows_read,
        "accepted": report.rows_accepted,
        "quarantined": report.rows_quarantined,
        "reasons": report.reasons,
    }


def _run_pandas(root: Path, engine: str) -> dict[str, Any]:
    """What a careful pandas user would write for the same job: vectorized checks, categorical
    constant columns, the same output columns as raw_trades and a quarantine with reasons."""
    import numpy as np
    import pandas as pd

    from assets.core.storage import file_sha256

    csv = landed_file(root)
    source_file = f"landing/{FEED}/{csv.name}"
    source_hash = file_sha256(csv)  # ours hashes the file for lineage; so does the baseline
    df = pd.read_csv(
        csv, header=None, names=list(PANDAS_DTYPES), dtype=PANDAS_DTYPES, engine=engine
    )
    n = len(df)
    ids = df["id"].to_numpy()
    price = df["price"].to_numpy()
    size = df["qty"].to_numpy()
    raw_time = df["time"].to_numpy()
    # Epoch unit by magnitude (s / ms / us / ns), as the feed's ``unit: auto``.
    mag = np.abs(raw_time)
    micros = np.where(
        mag >= 10**17,
        raw_time // 1000,
        np.where(
            mag >= 10**14, raw_time, np.where(mag >= 10**11, raw_time * 1000, raw_time * 10**6)
        ),
    )
    day_start = (DAY - date(1970, 1, 1)).days * 86_400_000_000
    reasons = [REASON_OUTSIDE, REASON_PRICE_NAN, REASON_PRICE, REASON_SIZE, REASON_DUPLICATE]
    with np.errstate(invalid="ignore"):
        code = np.select(
            [
                (micros < day_start) | (micros >= day_start + 86_400_000_000),
                np.isnan(price),
                ~(np.isfinite(price) & (price > 0)),
                ~(np.isfinite(size) & (size >= 0)),
            ],
            [1, 2, 3, 4],
            default=0,
        ).astype(np.int8)
    ok = code == 0
    # All but the first row of a repeated trade id, among rows that passed the other checks.
    dup = np.zeros(n, dtype=bool)
    dup[ok] = pd.Series(ids[ok]).duplicated(keep="first").to_numpy()
    code[dup] = 5
    ok &= ~dup

    def constant(value: str, length: int) -> pd.Categorical:
        return pd.Categorical.from_codes(np.zeros(length, dtype=np.int8), [value])

    n_ok = int(ok.sum())
    ts = pd.Series(micros[ok].astype("datetime64[us]")).dt.tz_localize("UTC")
    side = pd.Categorical.from_codes(
        df["is_buyer_maker"].to_numpy()[ok].astype(np.int8), ["buy", "sell"]
    )
    accepted = pd.DataFrame(
        {
            "symbol": constant(SYMBOL, n_ok),
            "ts": ts,
            "trade_id": ids[ok],
            "price": price[ok],
            "size": size[ok],
            "side": side,
            "feed": constant(FEED, n_ok),
            "source_file": constant(source_file, n_ok),
            "source_hash": constant(source_hash, n_ok),
        }
    )
    out = root / "raw" / "trades" / f"date={DAY}"
    out.mkdir(parents=True)
    accepted.to_parquet(out / "data.parquet", index=False, row_group_size=ROW_GROUP_ROWS)

    bad = np.flatnonzero(~ok)
    bad_rows = pd.DataFrame(
        {
            "symbol": SYMBOL,
            "ts": pd.Series(micros[bad].astype("datetime64[us]")).dt.tz_localize("UTC"),
            "trade_id": ids[bad],
            "price": price[bad],
            "size": size[bad],
            "side": np.where(df["is_buyer_maker"].to_numpy()[bad], "sell", "buy"),
        }
    )
    quarantine = pd.DataFrame(
        {
            "feed": FEED,
            "source_file": source_file,
            "source_hash": source_hash,
            "line": bad + 1,
            "reason": np.asarray(reasons, dtype=object)[code[bad] - 1],
            "record": bad_rows.to_json(orient="records", lines=True, date_unit="us").splitlines()
            if len(bad)
            else [],
        }
    )
    qout = root / "quarantine" / "trades" / f"date={DAY}"
    qout.mkdir(parents=True)
    quarantine.to_parquet(qout / "data.parquet", index=False)
    counts = quarantine["reason"].value_counts()
    return {
        "rows_read": n,
        "accepted": n_ok,
        "quarantined": len(bad),
        "reasons": {str(k): int(v) for k, v in sorted(counts.items())},
    }


def run_pandas(root: Path) -> dict[str, Any]:
    return _run_pandas(root, "c")


def run_pandas_pyarrow(root: Path) -> dict[str, Any]:
    return _run_pandas(root, "pyarrow")


def run_floor(root: Path) -> dict[str, Any]:
    import duckdb

    from assets.core.feeds import BINANCE_TRADE_COLUMNS

    csv = landed_file(root)
    columns = ", ".join(f"'{name}': '{typ}'" for name, typ in BINANCE_TRADE_COLUMNS.items())
    columns = "{" + columns + "}"
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    (rows,) = con.execute(
        f"COPY (SELECT * FROM read_csv('{csv}', header=false, columns={columns})) "
        f"TO '{root / 'floor.parquet'}' (FORMAT parquet)"
    ).fetchone()
    return {"rows_read": rows, "accepted": rows, "quarantined": 0, "reasons": {}}


RUNNERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "ours": run_ours,
    "pandas": run_pandas,
    "pandas_pyarrow": run_pandas_pyarrow,
    "floor": run_floor,
}


# --------------------------------------------------------------------------------------------
# Where ours spends its time
# --------------------------------------------------------------------------------------------
# (substring of the statement, label); the first match names it.
STATEMENT_LABELS = (
    ("INSERT INTO staged SELECT", "read CSV + parse + checks → staging table (INSERT)"),
    ("FROM dd_rejects", "rejected CSV lines → staging table"),
    ("FROM repeated", "duplicate trade ids (find + mark)"),
    ("TEMP TABLE repeated", "duplicate trade ids (find + mark)"),
    ("UPDATE staged", "duplicate trade ids (find + mark)"),
    (" OVER ", "duplicate trade ids (find + mark)"),
    ("reason IS NOT NULL) TO", "write quarantine Parquet (COPY)"),
    ("reason IS NULL AND", "write raw Parquet (COPY)"),
    ("count(*) FILTER (reason IS NULL), count(*) FILTER", "rows per day (GROUP BY)"),
    ("CAST(source_file AS VARCHAR), count(*)", "report: rows per file"),
    ("split_part(reason", "report: reasons and sample"),
    ("LIMIT", "report: reasons and sample"),
)


class TimedConnection:
    """Wraps a DuckDB connection and adds each ``execute``'s wall time to a label's total."""

    def __init__(self, con: Any, totals: dict[str, float]) -> None:
        self._con, self._totals = con, totals

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._con.execute(sql, *args, **kwargs)
        finally:
            flat = " ".join(sql.split())
            label = next((lab for key, lab in STATEMENT_LABELS if key in flat), "other statements")
            self._totals[label] = self._totals.get(label, 0.0) + time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def ours_breakdown(root: Path) -> dict[str, float]:
    """One run of ours with its time split by step: landing scan (hashing), each DuckDB statement
    by label, hashing of the written Parquet files, and the rest (Python, commits)."""
    import assets.ingestion.ingest as ingest
    from assets.core.feeds import load_feeds
    from assets.core.storage import Storage

    totals: dict[str, float] = {}
    original_sha = ingest.file_sha256

    def timed_sha(path: Path) -> str:
        start = time.perf_counter()
        try:
            return original_sha(path)
        finally:
            key = "sha256 of written Parquet files"
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    ingest.file_sha256 = timed_sha
    try:
        start = time.perf_counter()
        feeds = load_feeds(FEEDS_FILE)
        storage = Storage(str(root))
        con = ingest.new_connection()
        landed = ingest.scan_landing(storage, feeds, con)
        totals["scan_landing (sha256 of the landed CSV)"] = time.perf_counter() - start
        ingest.ingest_partitions(
            storage,
            feeds,
            "trades",
            [DAY.isoformat()],
            landed=landed,
            con=TimedConnection(con, totals),
        )
        total = time.perf_counter() - start
    finally:
        ingest.file_sha256 = original_sha
    totals["other (Python, file commits)"] = total - sum(totals.values())
    ordered = dict(sorted(totals.items(), key=lambda kv: -kv[1]))
    return {"total": total, **ordered}


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
def time_variants(
    base: Path, csv: Path, variants: tuple[str, ...], repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, dict[str, Any]]]:
    """Wall and CPU seconds of each variant, ``repeat`` times, interleaved so that noise from
    other processes spreads over all variants. CPU time counts every thread of this process:
    on a shared machine it moves less than wall time when other processes take cores."""
    for variant in variants:  # imports out of the timings
        for module in IMPORTS[variant]:
            importlib.import_module(module)
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    results: dict[str, dict[str, Any]] = {}
    for i in range(repeat):
        for variant in variants:
            with fresh_root(base, csv, f"{variant}-{i}") as root:
                gc.collect()
                start, start_cpu = time.perf_counter(), time.process_time()
                results[variant] = RUNNERS[variant](root)
                wall[variant].append(time.perf_counter() - start)
                cpu[variant].append(time.process_time() - start_cpu)
            print(
                f"  run {i + 1}/{repeat} {variant:<15} {wall[variant][-1]:7.2f} s wall "
                f"{cpu[variant][-1]:7.2f} s CPU",
                flush=True,
            )
    return wall, cpu, results


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall, CPU seconds used by the whole machine, CPU seconds used by this process and its
    children) from /proc/stat; None where there is no /proc (then no noise report)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
    if len(ticks) > 9:
        busy -= ticks[8] + ticks[9]  # guest time is already counted in user time
    own = os.times()
    mine = own.user + own.system + own.children_user + own.children_system
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), mine


def others_share(start: tuple | None, end: tuple | None) -> float | None:
    """Share of all CPUs that other processes kept busy between two snapshots."""
    if start is None or end is None:
        return None
    wall, busy, mine = (e - s for s, e in zip(start, end, strict=True))
    return max(0.0, (busy - mine) / (wall * (os.cpu_count() or 1)))


def peak_rss_mb(base: Path, csv: Path | None, variant: str) -> float:
    """Peak RSS (MB) of a fresh child running one variant (``csv`` None: imports only).

    The child reports its own high-water mark (``VmHWM``). Not ``ru_maxrss`` from ``wait4`` or
    RUSAGE_CHILDREN: Linux carries a process's max RSS across fork and exec, so every child
    would report at least this (large) parent's RSS at the time it was started."""
    cmd = [sys.executable, "-m", "benchmarks.ingest_bench", "--worker", variant]
    with contextlib.ExitStack() as stack:
        if csv is not None:
            root = stack.enter_context(fresh_root(base, csv, f"mem-{variant}"))
            cmd += ["--worker-root", str(root)]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {variant} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def own_peak_mb() -> float:
    """This process's peak RSS in MB: VmHWM where /proc exists, else ru_maxrss."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, else KiB


def worker(variant: str, root: str | None) -> int:
    for module in IMPORTS[variant]:
        importlib.import_module(module)
    if root is not None:
        RUNNERS[variant](Path(root))
    print(json.dumps({"variant": variant, "peak_mb": own_peak_mb()}))
    return 0


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def render(summary: dict[str, Any]) -> str:
    n, small = summary["rows"], summary["rows_small"]
    res = summary["variants"]
    lines = [
        f"Ingest benchmark: {n:,} trades of {SYMBOL} on {DAY} "
        f"({summary['csv_mb']:.0f} MB CSV, {summary['bad_rows']} bad rows), "
        f"{summary['repeat']} runs each, {summary['machine']['cpus']} CPUs",
        "",
        f"{'variant':<44}{'best s':>8}{'median s':>10}{'CPU s':>8}{'rows/s':>12}"
        f"{'peak MB':>9}{'at N/5':>8}",
    ]
    for variant, r in res.items():
        lines.append(
            f"{LABELS[variant]:<44}{r['best_s']:>8.2f}{r['median_s']:>10.2f}"
            f"{r['best_cpu_s']:>8.2f}{r['rows_per_s']:>12,.0f}{r['peak_mb']:>9.0f}"
            f"{r['peak_mb_small']:>8.0f}"
        )
    lines.append("")
    for goal in summary["goals"]:
        lines.append(
            f"{goal['name']:<16}= {goal['value']:5.2f}   goal {goal['op']} {goal['target']}   "
            f"{verdict(goal['met'])}   (best wall times; the same ratio in CPU time: "
            f"{summary['cpu_ratios'][goal['name']]:.2f})"
        )
    others = summary["machine"]["others_cpu_share_during_timing"]
    if others is not None:
        noisy = others > 0.1
        lines.append(
            f"{'NOTE' if noisy else 'note'}: other processes kept {100 * others:.0f}% of the "
            f"{summary['machine']['cpus']} CPUs busy during the timed runs"
            + ("; wall times are noisy, CPU times less so" if noisy else "")
        )
    mem = summary["memory_ours"]
    lines += [
        "",
        f"peak memory, ours: {mem['peak_mb']:.0f} MB at {n:,} rows, {mem['peak_mb_small']:.0f} MB "
        f"at {small:,} rows (Python + imports alone: {mem['imports_mb']:.0f} MB); working set "
        f"{mem['working_mb']:.0f} vs {mem['working_mb_small']:.0f} MB: "
        f"x{mem['working_ratio']:.2f} for x{n / small:.0f} the rows → {mem['grows']}",
        "",
        "where ours spends its time (one more run, DuckDB statements timed one by one):",
    ]
    breakdown = summary["ours_breakdown"]
    for label, seconds in breakdown.items():
        if label != "total":
            share = 100 * seconds / breakdown["total"]
            lines.append(f"  {seconds:7.2f} s {share:5.1f}%  {label}")
    lines.append(f"  {breakdown['total']:7.2f} s  total")
    if not summary["outputs_agree"]:
        lines += ["", "WARNING: the variants disagree on accepted/quarantined rows:"]
        lines += [f"  {v}: {r['result']}" for v, r in res.items()]
    return "\n".join(lines)


def summarize_memory(peaks: dict, peaks_small: dict, imports: dict) -> dict[str, Any]:
    working = peaks["ours"] - imports["ours"]
    working_small = peaks_small["ours"] - imports["ours"]
    ratio = working / max(working_small, 1.0)
    if ratio < 1.5:
        grows = "roughly flat: peak memory does not grow with the file"
    elif ratio < 3.5:
        grows = "grows, but less than the file"
    else:
        grows = "grows about in proportion to the file"
    return {
        "peak_mb": peaks["ours"],
        "peak_mb_small": peaks_small["ours"],
        "imports_mb": imports["ours"],
        "working_mb": working,
        "working_mb_small": working_small,
        "working_ratio": ratio,
        "grows": grows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest_bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="trades in the file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant")
    parser.add_argument(
        "--bad-every", type=int, default=10_000, help="make every k-th row bad (0: none)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default tmp)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.worker_root)

    import duckdb
    import pandas as pd
    import pyarrow as pa

    started = datetime.now(UTC)
    small_rows = max(args.rows // 5, 1)
    args.workdir and args.workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="dd-bench-", dir=args.workdir))
    try:
        print(f"simulating {args.rows:,} trades of {SYMBOL} on {DAY} …", flush=True)
        table, expected = make_trades(args.rows, args.bad_every)
        csv = write_landing_file(table, base / "input-N")
        small_table = table.slice(0, small_rows)
        csv_small = write_landing_file(small_table, base / "input-small")
        bad_rows = sum(expected.values())
        del table, small_table
        gc.collect()

        print(f"timing {', '.join(VARIANTS)} ({args.repeat} runs each) …", flush=True)
        snap_start = cpu_snapshot()
        times, cpu_times, results = time_variants(base, csv, VARIANTS, args.repeat)
        others = others_share(snap_start, cpu_snapshot())
        print("timing ours step by step …", flush=True)
        with fresh_root(base, csv, "breakdown") as root:
            breakdown = ours_breakdown(root)
        print("peak memory in fresh processes …", flush=True)
        peaks = {v: peak_rss_mb(base, csv, v) for v in VARIANTS}
        peaks_small = {v: peak_rss_mb(base, csv_small, v) for v in VARIANTS}
        imports = {v: peak_rss_mb(base, None, v) for v in VARIANTS}
        csv_mb = csv.stat().st_size / 1e6
    finally:
        shutil.rmtree(base, ignore_errors=True)

    variants = {}
    for v in VARIANTS:
        best = min(times[v])
        variants[v] = {
            "label": LABELS[v],
            "times_s": times[v],
            "cpu_s": cpu_times[v],
            "best_cpu_s": min(cpu_times[v]),
            "best_s": best,
            "median_s": statistics.median(times[v]),
            "rows_per_s": args.rows / best,
            "peak_mb": peaks[v],
            "peak_mb_small": peaks_small[v],
            "imports_mb": imports[v],
            "result": results[v],
        }
    cpu_ratios = {
        "ours / floor": variants["ours"]["best_cpu_s"] / variants["floor"]["best_cpu_s"],
        "pandas / ours": variants["pandas"]["best_cpu_s"] / variants["ours"]["best_cpu_s"],
    }
    ours_over_floor = variants["ours"]["best_s"] / variants["floor"]["best_s"]
    pandas_over_ours = variants["pandas"]["best_s"] / variants["ours"]["best_s"]
    goals = [
        {
            "name": "ours / floor",
            "value": ours_over_floor,
            "op": "<=",
            "target": GOAL_OURS_OVER_FLOOR,
            "met": ours_over_floor <= GOAL_OURS_OVER_FLOOR,
        },
        {
            "name": "pandas / ours",
            "value": pandas_over_ours,
            "op": ">=",
            "target": GOAL_PANDAS_OVER_OURS,
            "met": pandas_over_ours >= GOAL_PANDAS_OVER_OURS,
        },
    ]
    expected_accepted = args.rows - bad_rows
    checked = ("ours", "pandas", "pandas_pyarrow")
    outputs_agree = all(
        results[v]["accepted"] == expected_accepted
        and results[v]["quarantined"] == bad_rows
        and results[v]["reasons"] == expected
        for v in checked
    )
    summary = {
        "benchmark": "ingest",
        "started_utc": started.isoformat(timespec="seconds"),
        "rows": args.rows,
        "rows_small": small_rows,
        "repeat": args.repeat,
        "bad_rows": bad_rows,
        "expected_reasons": expected,
        "csv_mb": csv_mb,
        "machine": {
            "cpus": os.cpu_count(),
            "others_cpu_share_during_timing": others,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "duckdb": duckdb.__version__,
            "pandas": pd.__version__,
            "pyarrow": pa.__version__,
        },
        "variants": variants,
        "goals": goals,
        "cpu_ratios": cpu_ratios,
        "memory_ours": summarize_memory(peaks, peaks_small, imports),
        "ours_breakdown": breakdown,
        "outputs_agree": outputs_agree,
        "seconds_total": (datetime.now(UTC) - started) / timedelta(seconds=1),
    }
    print()
    print(render(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
