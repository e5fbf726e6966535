"""Episodes benchmark: simulated trades → 1-minute bars → features → decisions → outcomes →
counterfactuals, dbt (DuckDB) against the straightforward pandas implementation, and the
default-history backfill in one run against one run per monthly partition.

Run ``python -m benchmarks.episodes_bench [--quick] [--json FILE]`` (see benchmarks/README.md).

1. **Episodes.** ``assets.live.simulator`` simulates ``--symbols`` x ``--days`` of trades (and as many
   days again for the doubling), lands them as Binance dumps in the ``sim-trades`` feed and
   ingests them (``scan_landing`` + ``ingest_partitions``, a few days per call): untimed set-up.
   Timed: one ``dbt build --select +int_counterfactuals --exclude-resource-type test`` over the
   whole range on a fresh lakehouse (the seed, the staging views, int_bars …
   int_counterfactuals), and the same work in pandas from the same raw Parquet: bars by
   ``groupby(symbol, minute)``, ``point_in_time_features.compute_features``, decision point ids,
   ``policies.decide`` for every (point, policy), int_outcomes with ``groupby().shift``, and
   ``counterfactuals_oracle.compute_counterfactuals``. The row-by-row stages (ids, decisions,
   counterfactuals: their cost is per decision point, and per series for the analog search) run
   on ``--pandas-symbols`` symbols and are scaled by the share of decision points; every scaled
   figure is labelled. Then dbt again on twice the days, on a fresh warehouse.
2. **Backfill.** The default feed (bokeh-stocks, daily bars 2000-2013) is landed and ingested;
   one Dagster-style run over 2000-01 … 2013-12 (168 monthly partitions) is timed against
   ``--partitions`` single monthly partitions in date order, one run each, with the vars
   ``assets.core.dbt.build_vars`` gives a partition. A run is what ``episode_models`` invokes,
   data tests left out: the refresh of staging views and seeds, then the build.

Wall times are single runs (dbt subprocesses included); CPU time is this process's and its
children's. Nothing is asserted: the goals are printed with whether they were met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.ingest_bench import cpu_snapshot, others_share

REPO = Path(__file__).resolve().parents[1]
FEEDS_FILE = REPO / "feeds.yaml"
DBT = Path(sys.executable).parent / "dbt"
SIM_FEED = "sim-trades"
START = date(2024, 1, 1)  # the simulator's anchor day
HISTORY_START, HISTORY_END = "2000-01-01", "2013-12-31"
DEFAULT_SELECT = "+int_counterfactuals"
INGEST_DAYS_PER_CALL = 5  # ~1M trades per ingest_partitions call at the default sizes

GOAL_SPEEDUP = 5.0  # dbt at least 5x faster than pandas
GOAL_DOUBLING = 2.1  # twice the data at most 2.1x the time

QUICK = {"symbols": 3, "days": 6, "pandas_symbols": 0, "partitions": 3}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
@contextmanager
def timed(into: dict[str, Any], key: str) -> Iterator[None]:
    """Wall and CPU seconds (this process and its finished children) of the block."""
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    try:
        yield
    finally:
        into[key] = {
            "wall_s": time.perf_counter() - start,
            "cpu_s": _cpu_seconds() - start_cpu,
        }


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def say(text: str) -> None:
    print(text, flush=True)


def git_state() -> dict[str, Any]:
    """HEAD and the files that differ from it (read-only git commands)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"head": git("rev-parse", "HEAD"), "changed": git("status", "--short").splitlines()}


# --------------------------------------------------------------------------------------------
# Input data: simulate, land, ingest
# --------------------------------------------------------------------------------------------
def land_and_ingest(
    root: Path, n_symbols: int, days: int, trades_per_day: int, seed: int
) -> dict[str, Any]:
    """Simulated trades of ``days`` days from START landed as Binance dumps under
    ``root/landing/sim-trades`` and ingested into ``root/raw/trades``."""
    import numpy as np

    from assets.core.feeds import load_feeds
    from assets.core.storage import Storage
    from assets.ingestion.ingest import ingest_partitions, new_connection, scan_landing
    from assets.live.simulator import (
        MarketSimulator,
        SimulatorConfig,
        default_symbols,
        write_binance_trades,
    )

    config = SimulatorConfig(
        symbols=default_symbols(n_symbols), seed=seed, trades_per_day=trades_per_day
    )
    simulator = MarketSimulator(config)
    landing = root / "landing" / SIM_FEED
    landing.mkdir(parents=True, exist_ok=True)
    trades, filled = 0, 0
    stats: dict[str, Any] = {}
    with timed(stats, "simulate_and_land"):
        for day, table in simulator.trades(START, days):
            trades += table.num_rows
            minute = (table["ts"].cast("int64").to_numpy() // 60_000_000) % 1440
            symbol = table["symbol"].combine_chunks().dictionary_encode().indices.to_numpy()
            filled += len(np.unique(symbol.astype(np.int64) * 1440 + minute))
            write_binance_trades(table, landing, time_unit="ms")
            say(f"  landed {day} ({table.num_rows:,} trades)")
    feeds = {SIM_FEED: load_feeds(FEEDS_FILE)[SIM_FEED]}
    storage = Storage(str(root))
    con = new_connection()
    accepted = quarantined = 0
    with timed(stats, "ingest"):
        landed = scan_landing(storage, feeds, con)
        all_days = [(START + timedelta(days=d)).isoformat() for d in range(days)]
        for i in range(0, days, INGEST_DAYS_PER_CALL):
            chunk = all_days[i : i + INGEST_DAYS_PER_CALL]
            report = ingest_partitions(storage, feeds, "trades", chunk, landed, con)
            accepted += report.rows_accepted
            quarantined += report.rows_quarantined
            say(f"  ingested {chunk[0]} … {chunk[-1]} ({report.rows_accepted:,} rows)")
    con.close()
    shutil.rmtree(landing)  # the raw Parquet is all the benchmark reads from here on
    return {
        "trades": trades,
        "accepted": accepted,
        "quarantined": quarantined,
        "minute_coverage": filled / (n_symbols * 1440 * days),
        **stats,
    }


def first_days_root(source: Path, target: Path, days: int) -> Path:
    """A storage root holding the raw trades of the first ``days`` days of ``source`` (hard
    links), so the smaller build sees exactly its own files."""
    for d in range(days):
        name = f"date={(START + timedelta(days=d)).isoformat()}"
        src = source / "raw" / "trades" / name
        dst = target / "raw" / "trades" / name
        dst.mkdir(parents=True, exist_ok=True)
        for path in src.iterdir():
            try:
                os.link(path, dst / path.name)
            except OSError:
                shutil.copy2(path, dst / path.name)
    return target


# --------------------------------------------------------------------------------------------
# dbt
# --------------------------------------------------------------------------------------------
class Dbt:
    """Runs dbt as a subprocess (as Dagster's DbtCliResource does) on one lakehouse (a SQLite
    catalog, its Parquet files beside it)."""

    def __init__(self, project_dir: Path, work: Path, name: str) -> None:
        self.project_dir, self.work, self.name = project_dir, work, name
        self.warehouse = work / f"{name}.sqlite"
        self.target = work / f"target-{name}"

    def invoke(self, args: list[str], variables: dict[str, Any]) -> dict[str, Any]:
        env = {
            **os.environ,
            "DD_LAKEHOUSE_CATALOG": str(self.warehouse),
            "DD_LAKEHOUSE_DATA_PATH": f"{self.warehouse}.files",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        }
        command = [
            str(DBT),
            *args,
            "--vars",
            json.dumps(variables),
            "--project-dir",
            str(self.project_dir),
            "--profiles-dir",
            str(self.project_dir),
            "--target-path",
            str(self.target),
            "--log-path",
            str(self.work / f"logs-{self.name}"),
            "--no-use-colors",
        ]
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        proc = subprocess.run(
            command, cwd=self.project_dir, env=env, capture_output=True, text=True
        )
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - start_cpu
        if proc.returncode != 0:
            raise SystemExit(
                f"dbt failed ({' '.join(args)}, vars {variables}):\n"
                + (proc.stdout + proc.stderr)[-6000:]
            )
        return {"wall_s": wall, "cpu_s": cpu, **self._node_times(wall)}

    def build(self, select: str, variables: dict[str, Any]) -> dict[str, Any]:
        """The episode models, data tests and unit tests left out."""
        args = ["build", "--select", select, "--exclude-resource-type", "test"]
        return self.invoke([*args, "--exclude-resource-type", "unit_test"], variables)

    def refresh(self, variables: dict[str, Any]) -> dict[str, Any]:
        """What episode_models runs before its build: staging views and seeds for the window."""
        args = ["build", "--select", "staging resource_type:seed"]
        return self.invoke(
            [*args, "--resource-type", "model", "--resource-type", "seed"], variables
        )

    def _node_times(self, wall: float) -> dict[str, Any]:
        """Execution time per node from run_results.json, and the wall time outside nodes
        (process start, parse, compile of the graph, teardown)."""
        try:
            results = json.loads((self.target / "run_results.json").read_text())["results"]
        except (OSError, KeyError, ValueError):
            return {"nodes": {}, "outside_nodes_s": None}
        nodes, starts, ends = {}, [], []
        for r in results:
            nodes[r["unique_id"].split(".")[-1]] = r.get("execution_time") or 0.0
            for step in r.get("timing") or []:
                if step.get("started_at") and step.get("completed_at"):
                    starts.append(datetime.fromisoformat(step["started_at"].replace("Z", "+00:00")))
                    ends.append(datetime.fromisoformat(step["completed_at"].replace("Z", "+00:00")))
        span = (max(ends) - min(starts)).total_seconds() if starts else 0.0
        return {"nodes": nodes, "outside_nodes_s": max(wall - span, 0.0)}

    def query(self, sql: str) -> list[tuple]:
        from assets.core.lakehouse import lakehouse_connection

        with lakehouse_connection(self.warehouse) as con:
            return con.execute(sql).fetchall()

    def count(self, table: str, where: str = "true") -> int | None:
        try:
            return int(self.query(f"select count(*) from {table} where {where}")[0][0])
        except Exception:  # a table outside the selection
            return None


def episode_run(
    project_dir: Path, work: Path, name: str, root: Path, days: int, select: str
) -> dict[str, Any]:
    dbt = Dbt(project_dir, work, name)
    last = START + timedelta(days=days - 1)
    variables = {"min_date": START.isoformat(), "max_date": last.isoformat()}
    variables["storage_root"] = str(root)
    say(f"dbt build of {days} days ({select}) …")
    result = dbt.build(select, variables)
    counts = {
        table: dbt.count(table)
        for table in ("int_bars", "int_decision_points", "int_decisions", "int_counterfactuals")
    }
    episodes = counts["int_counterfactuals"] or counts["int_decisions"] or 0
    result.update(
        days=days,
        counts=counts,
        episodes=episodes,
        episodes_per_s=episodes / result["wall_s"],
        warehouse_mb=sum(
            f.stat().st_size for f in Path(f"{dbt.warehouse}.files").rglob("*") if f.is_file()
        )
        / 1e6,
    )
    say(
        f"  {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, {episodes:,} episodes, "
        f"{result['episodes_per_s']:,.0f} episodes/s"
    )
    return result | {"_dbt": dbt}


# --------------------------------------------------------------------------------------------
# The straightforward pandas implementation
# --------------------------------------------------------------------------------------------
def pandas_bars(root: Path) -> Any:
    """1-minute OHLCV bars of the raw trades, as int_bars builds them from trades."""
    import pandas as pd

    trades = pd.read_parquet(
        root / "raw" / "trades",
        columns=["symbol", "ts", "trade_id", "price", "size", "source_hash"],
    )
    trades = trades.sort_values(["symbol", "ts", "trade_id"], kind="stable")
    trades["minute"] = trades["ts"].dt.floor("min")
    bars = (
        trades.groupby(["symbol", "minute"], sort=True, observed=True)
        .agg(
            open=("price", "first"),
            high=("price", "max"),
            low=("price", "min"),
            close=("price", "last"),
            volume=("size", "sum"),
            n_trades=("price", "size"),
            source_hash=("source_hash", "first"),
        )
        .reset_index()
        .rename(columns={"minute": "ts"})
    )
    bars["symbol"] = bars["symbol"].astype(str)
    bars["bar_interval"] = "1m"
    bars["bar_date"] = bars["ts"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    return bars


def pandas_outcomes(bars: Any, horizons: list[int], lookahead_days: int) -> Any:
    """int_outcomes: fwd_ret / fwd_path_min / fwd_path_max per horizon, matured_at, is_mature
    and the lineage, with groupby().shift per series (vectorized but the lineage)."""
    import numpy as np
    import pandas as pd

    from assets.episodes.point_in_time_features import bar_length, normalize_bars

    bars = normalize_bars(bars)
    series = bars.groupby(["symbol", "bar_interval"], sort=False)
    max_h = max(horizons)
    limit = bars["bar_date"] + pd.Timedelta(days=lookahead_days)
    close = bars["close"].to_numpy()
    out = bars[["symbol", "bar_interval", "ts", "bar_date", "close"]].copy()
    steps, hashes = [], [bars["source_hash"].to_numpy(dtype=object)]
    for k in range(1, max_h + 1):
        ok = (series["bar_date"].shift(-k) <= limit).to_numpy()
        steps.append(np.where(ok, np.log(series["close"].shift(-k).to_numpy() / close), np.nan))
        hashes.append(np.where(ok, series["source_hash"].shift(-k).to_numpy(dtype=object), None))
    for h in horizons:
        path = np.column_stack(steps[:h])
        known = ~np.isnan(path[:, -1])
        out[f"fwd_ret_{h}"] = path[:, -1]
        out[f"fwd_path_min_{h}"] = np.where(known, path.min(axis=1, initial=np.inf), np.nan)
        out[f"fwd_path_max_{h}"] = np.where(known, path.max(axis=1, initial=-np.inf), np.nan)
    horizon_ts = series["ts"].shift(-max_h).where(series["bar_date"].shift(-max_h) <= limit)
    out["matured_at"] = horizon_ts + pd.to_timedelta(bars["bar_interval"].map(bar_length))
    out["is_mature"] = horizon_ts.notna()
    out["outcome_source_hashes"] = [
        sorted({h for h in row if h is not None}) for row in zip(*hashes, strict=True)
    ]
    return out


def pandas_decision_points(features: Any) -> Any:
    from assets.episodes.point_in_time_features import decision_point_id

    points = features[features["warm"]].reset_index(drop=True)
    points.insert(
        0,
        "decision_point_id",
        [
            decision_point_id(s, i, t)
            for s, i, t in zip(points["symbol"], points["bar_interval"], points["ts"], strict=True)
        ],
    )
    return points


def pandas_decisions(points: Any, seed_path: Path) -> Any:
    """int_decisions with the Python oracle: decide() for every (decision point, policy)."""
    import pandas as pd

    from assets.episodes.reference_policies import decide, episode_id, load_policies

    policies = load_policies(seed_path)
    rows = []
    for point in points.to_dict("records"):
        features = {
            k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in point.items()
        }
        for policy in policies:
            decision = decide(features, policy)
            rows.append(
                {
                    "episode_id": episode_id(
                        point["symbol"],
                        point["bar_interval"],
                        point["decision_ts"],
                        policy.policy_id,
                        policy.policy_version,
                    ),
                    "decision_point_id": point["decision_point_id"],
                    "symbol": point["symbol"],
                    "bar_interval": point["bar_interval"],
                    "ts": point["ts"],
                    "decision_ts": point["decision_ts"],
                    "bar_date": point["bar_date"],
                    "policy_id": policy.policy_id,
                    "policy_version": policy.policy_version,
                    "action": decision.action,
                    "size": decision.size,
                    "reasoning_steps": [step.as_dict() for step in decision.steps],
                }
            )
    return pd.DataFrame(rows)


def pandas_run(
    root: Path, subset: list[str] | None, project_dir: Path, dbt_vars: dict[str, Any]
) -> dict[str, Any]:
    """Every stage timed; the row-by-row stages on ``subset`` (None: all symbols)."""
    import gc

    from assets.episodes.counterfactuals_oracle import compute_counterfactuals
    from assets.episodes.point_in_time_features import compute_features

    horizons = [int(h) for h in dbt_vars.get("horizons", [1, 5, 20])]
    lookback = int(dbt_vars.get("lookback_days", 400))
    lookahead = int(dbt_vars.get("lookahead_days", 45))
    cost_bps = float(dbt_vars.get("cost_bps", 5))
    seed_path = project_dir / "seeds" / "reference_policies.csv"
    stages: dict[str, Any] = {}
    gc.collect()
    say("pandas: trades → 1-minute bars …")
    with timed(stages, "bars"):
        bars = pandas_bars(root)
    say("pandas: features (point_in_time_features.compute_features) …")
    with timed(stages, "features"):
        features = compute_features(bars, lookback_days=lookback)
    say("pandas: outcomes (groupby().shift) …")
    with timed(stages, "outcomes"):
        outcomes = pandas_outcomes(bars, horizons, lookahead)
    all_points = int(features["warm"].sum())
    symbols = sorted(features["symbol"].unique())
    del outcomes
    if subset is not None:
        features = features[features["symbol"].isin(subset)]
        bars = bars[bars["symbol"].isin(subset)]
    gc.collect()
    sub_label = f"{len(subset)} of {len(symbols)} symbols" if subset else "all symbols"
    say(f"pandas: decision point ids ({sub_label}) …")
    with timed(stages, "decision_points"):
        points = pandas_decision_points(features)
    say(f"pandas: decisions, policies.decide per (point, policy) ({sub_label}) …")
    with timed(stages, "decisions"):
        decisions = pandas_decisions(points, seed_path)
    say(f"pandas: counterfactuals (compute_counterfactuals) ({sub_label}) …")
    with timed(stages, "counterfactuals"):
        counterfactuals = compute_counterfactuals(
            points, decisions, bars, horizons, cost_bps, lookback, lookahead
        )
    scale = all_points / max(len(points), 1)
    for name, stage in stages.items():
        scaled = subset is not None and name in ("decision_points", "decisions", "counterfactuals")
        stage["scale"] = scale if scaled else 1.0
        stage["measured_on"] = sub_label if scaled else "all symbols"
        stage["est_wall_s"] = stage["wall_s"] * stage["scale"]
        stage["est_cpu_s"] = stage["cpu_s"] * stage["scale"]
        say(
            f"  {name:<16} {stage['wall_s']:8.1f} s"
            + (f" x {scale:.2f} = {stage['est_wall_s']:.1f} s (scaled)" if scaled else "")
        )
    return {
        "stages": stages,
        "symbols": symbols,
        "subset": subset,
        "all_points": all_points,
        "subset_points": len(points),
        "scale": scale,
        "est_wall_s": sum(s["est_wall_s"] for s in stages.values()),
        "est_cpu_s": sum(s["est_cpu_s"] for s in stages.values()),
        "check": pandas_summary(points, decisions, counterfactuals),
    }


def pandas_summary(points: Any, decisions: Any, counterfactuals: Any) -> dict[str, Any]:
    return {
        "points": len(points),
        "actions": {
            f"{p}/{a}": int(n)
            for (p, a), n in decisions.groupby(["policy_id", "action"]).size().items()
        },
        "episodes": len(counterfactuals),
        "with_environment": int(counterfactuals["ev_buy"].notna().sum()),
        "mature": int(counterfactuals["is_mature"].sum()),
        "quality": {
            str(k): int(v) for k, v in counterfactuals["decision_quality"].value_counts().items()
        },
    }


def dbt_summary(dbt: Dbt, symbols: list[str]) -> dict[str, Any]:
    where = "symbol in (" + ", ".join(f"'{s}'" for s in symbols) + ")"
    cf = dbt.query(
        "select count(*), count(ev_buy), count(*) filter (is_mature) "
        f"from int_counterfactuals where {where} and policy_id in (select policy_id from "
        "reference_policies)"
    )[0]
    return {
        "points": dbt.count("int_decision_points", where),
        "actions": {
            f"{p}/{a}": int(n)
            for p, a, n in dbt.query(
                f"select policy_id, action, count(*) from int_decisions where {where} group by all"
            )
        },
        "episodes": int(cf[0]),
        "with_environment": int(cf[1]),
        "mature": int(cf[2]),
        "quality": {
            str(q): int(n)
            for q, n in dbt.query(
                "select decision_quality, count(*) from int_counterfactuals "
                f"where {where} and decision_quality is not null group by all"
            )
        },
    }


# --------------------------------------------------------------------------------------------
# Default-history backfill
# --------------------------------------------------------------------------------------------
def month_keys(first: str, last: str) -> list[str]:
    year, month = int(first[:4]), int(first[5:7])
    keys = []
    while f"{year:04d}-{month:02d}" <= last[:7]:
        keys.append(f"{year:04d}-{month:02d}-01")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return keys


def partition_vars() -> Callable[[list[str], str], dict[str, str]]:
    """Vars of a run over partitions ``keys`` (consecutive months), as episode_models passes
    them: assets.core.dbt.build_vars of the window from the first key's start to the last key's end."""
    from assets.core.dbt import build_vars
    from assets.core.partitions import monthly_partitions

    def make(keys: list[str], storage_root: str) -> dict[str, str]:
        first = monthly_partitions.time_window_for_partition_key(keys[0])
        last = monthly_partitions.time_window_for_partition_key(keys[-1])
        return build_vars(first.start, last.end, storage_root)

    return make


def backfill(
    project_dir: Path, work: Path, select: str, n_partitions: int, first_partition: str
) -> dict[str, Any]:
    from assets.core.feeds import load_feeds
    from assets.core.storage import Storage
    from assets.ingestion.ingest import day_range, ingest_partitions, new_connection, scan_landing
    from assets.ingestion.landing import DEFAULT_FEED, land_default

    root = work / "history"
    storage = Storage(str(root))
    feeds = {DEFAULT_FEED: load_feeds(FEEDS_FILE)[DEFAULT_FEED]}
    say("landing and ingesting the default feed (bokeh-stocks, daily bars 2000-2013) …")
    land_default(storage, feeds)
    con = new_connection()
    landed = scan_landing(storage, feeds, con)
    report = ingest_partitions(
        storage, feeds, "bars", day_range(HISTORY_START, HISTORY_END), landed, con
    )
    con.close()
    make_vars = partition_vars()
    keys = month_keys(HISTORY_START, HISTORY_END)
    if first_partition not in keys:
        raise SystemExit(f"--first-partition must be a month in {keys[0]} … {keys[-1]}")
    start = keys.index(first_partition)
    timed_keys = keys[start : start + n_partitions]

    say(f"backfill in one run: {len(keys)} monthly partitions {keys[0]} … {keys[-1]} …")
    full = Dbt(project_dir, work, "history-full")
    variables = make_vars(keys, str(root))
    refresh = full.refresh(variables)
    build = full.build(select, variables)
    full_result = {
        "partitions": len(keys),
        "vars": variables,
        "refresh": refresh,
        "build": build,
        "episodes": full.count("int_counterfactuals"),
        "run_s": refresh["wall_s"] + build["wall_s"],
    }
    say(f"  refresh {refresh['wall_s']:.1f} s + build {build['wall_s']:.1f} s")

    single = Dbt(project_dir, work, "history-partitions")
    prefix = None
    if start > 0:
        say(f"single partitions: history before {timed_keys[0]} in one untimed run …")
        pre_vars = make_vars(keys[:start], str(root))
        pre = single.refresh(pre_vars)["wall_s"] + single.build(select, pre_vars)["wall_s"]
        prefix = {"vars": pre_vars, "run_s": pre}
    runs = []
    for key in timed_keys:
        variables = make_vars([key], str(root))
        refresh = single.refresh(variables)
        build = single.build(select, variables)
        episodes = single.count(
            "int_counterfactuals",
            f"bar_date between date '{variables['min_date']}' and date '{variables['max_date']}'",
        )
        runs.append(
            {
                "partition": key[:7],
                "vars": variables,
                "refresh": refresh,
                "build": build,
                "run_s": refresh["wall_s"] + build["wall_s"],
                "episodes": episodes,
            }
        )
        say(
            f"  {key[:7]}: refresh {refresh['wall_s']:.1f} s + build {build['wall_s']:.1f} s, "
            f"{episodes or 0:,} episodes"
        )
    n = len(runs)
    mean_run = sum(r["run_s"] for r in runs) / n
    mean_build = sum(r["build"]["wall_s"] for r in runs) / n
    return {
        "raw_bars": report.rows_accepted,
        "full": full_result,
        "prefix": prefix,
        "single": runs,
        "per_partition": {
            "one_run_s": full_result["run_s"] / len(keys),
            "one_run_build_s": build["wall_s"] / len(keys),
            "single_runs_s": mean_run,
            "single_runs_build_s": mean_build,
            "single_over_one_run": mean_run / (full_result["run_s"] / len(keys)),
            "single_runs_all_history_est_s": mean_run * len(keys),
        },
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def render(s: dict[str, Any]) -> str:
    cfg, lines = s["config"], []
    ep, pd_ = s["dbt"], s.get("pandas")
    data = s["data"]
    lines += [
        f"episodes benchmark: {cfg['symbols']} symbols x {cfg['days']} days of simulated trades "
        f"({cfg['trades_per_day']:,} per symbol-day), 1-minute bars, {s['machine']['cpus']} CPUs",
        f"  trades {data['trades']:,} (ingested {data['accepted']:,}, quarantined "
        f"{data['quarantined']:,}); minutes with at least one trade: "
        f"{100 * data['minute_coverage']:.2f}%",
        f"  dbt selection: {cfg['select']} (data tests excluded), one invocation, fresh warehouse",
        "",
        f"{'':<44} {'wall s':>9} {'CPU s':>9} {'episodes':>12} {'episodes/s':>12}",
    ]
    base = ep["base"]
    lines.append(
        f"{'dbt, ' + str(base['days']) + ' days':<44} {base['wall_s']:9.1f} {base['cpu_s']:9.1f} "
        f"{base['episodes']:12,} {base['episodes_per_s']:12,.0f}"
    )
    if pd_:
        label = (
            "pandas, " + str(base["days"]) + " days" + (" (partly scaled)" if pd_["subset"] else "")
        )
        rate = base["episodes"] / pd_["est_wall_s"]
        lines.append(
            f"{label:<44} {pd_['est_wall_s']:9.1f} {pd_['est_cpu_s']:9.1f} "
            f"{base['episodes']:12,} {rate:12,.0f}"
        )
    if "double" in ep:
        d = ep["double"]
        lines.append(
            f"{'dbt, ' + str(d['days']) + ' days':<44} {d['wall_s']:9.1f} {d['cpu_s']:9.1f} "
            f"{d['episodes']:12,} {d['episodes_per_s']:12,.0f}"
        )
    if pd_:
        lines += ["", "pandas stages:"]
        for name, st in pd_["stages"].items():
            scaled = st["scale"] != 1.0
            lines.append(
                f"  {name:<16} {st['wall_s']:8.1f} s on {st['measured_on']:<22}"
                + (f" x {st['scale']:.2f} → {st['est_wall_s']:8.1f} s (scaled)" if scaled else "")
            )
        if pd_["subset"]:
            lines.append(
                f"  scaled stages ran on {', '.join(pd_['subset'])}: {pd_['subset_points']:,} of "
                f"{pd_['all_points']:,} decision points; cost is per decision point (analogs "
                "never cross symbols), so they are scaled by the share of decision points"
            )
        if s.get("agreement") is not None:
            a = s["agreement"]
            lines.append(
                "  pandas vs dbt on those symbols: "
                + ("same counts" if a["same"] else f"DIFFERENT: {a['differences']}")
                + " (decision points, actions per policy, episodes, environments, maturity, "
                "decision quality)"
            )
    lines += ["", "dbt nodes (execution s):"]
    for run_name in ("base", "double"):
        if run_name in ep:
            r = ep[run_name]
            top = sorted(r["nodes"].items(), key=lambda kv: -kv[1])
            nodes = ", ".join(f"{k} {v:.1f}" for k, v in top if v >= 0.05)
            lines.append(f"  {r['days']} days: {nodes}; outside nodes {r['outside_nodes_s']:.1f}")
    lines += ["", "goals:"]
    for g in s["goals"]:
        lines.append(
            f"  {g['name']:<34} {g['value']:7.2f} (goal {g['op']} {g['target']}) "
            f"{'met' if g['met'] else 'NOT MET'}; in CPU time {g['cpu_value']:.2f}"
            + (f"  [{g['note']}]" if g.get("note") else "")
        )
    b = s.get("backfill")
    if b:
        f, pp = b["full"], b["per_partition"]
        lines += [
            "",
            f"default-history backfill ({b['raw_bars']:,} daily bars, {f['partitions']} monthly "
            "partitions); a run = refresh (staging views, seeds) + build:",
            f"  {'':<38} {'refresh s':>10} {'build s':>10} {'run s':>10} {'episodes':>10}",
            f"  {'one run, ' + f['vars']['min_date'] + ' … ' + f['vars']['max_date']:<38} "
            f"{f['refresh']['wall_s']:10.1f} {f['build']['wall_s']:10.1f} {f['run_s']:10.1f} "
            f"{f['episodes'] or 0:10,}",
        ]
        for r in b["single"]:
            lines.append(
                f"  {'single partition ' + r['partition']:<38} {r['refresh']['wall_s']:10.1f} "
                f"{r['build']['wall_s']:10.1f} {r['run_s']:10.1f} {r['episodes'] or 0:10,}"
            )
        if b["prefix"]:
            lines.append(
                f"  (the months before {b['single'][0]['partition']} were built first in one "
                f"untimed run of {b['prefix']['run_s']:.1f} s, so each timed run is incremental)"
            )
        lines += [
            f"  per partition: one run {pp['one_run_s']:.2f} s ({pp['one_run_build_s']:.2f} s "
            f"build); single runs {pp['single_runs_s']:.2f} s ({pp['single_runs_build_s']:.2f} s "
            f"build): x{pp['single_over_one_run']:.0f}",
            f"  all {f['partitions']} partitions one run each: ≈{pp['single_runs_all_history_est_s']:.0f} s "
            f"(estimated) against {f['run_s']:.1f} s in one run",
        ]
    others = s["machine"]["others_cpu_share"]
    if others is not None:
        lines += [
            "",
            f"{'NOTE' if others > 0.1 else 'note'}: other processes kept {100 * others:.0f}% of "
            f"the CPUs busy during the benchmark"
            + ("; wall times are noisy, CPU times less so" if others > 0.1 else ""),
        ]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.episodes_bench", description=__doc__
    )
    parser.add_argument("--symbols", type=int, default=20, help="simulated symbols (20)")
    parser.add_argument("--days", type=int, default=60, help="days of trades (60)")
    parser.add_argument("--trades-per-day", type=int, default=10_000, help="per symbol (10,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--pandas-symbols",
        type=int,
        default=2,
        help="symbols the row-by-row pandas stages run on, scaled to all (0: all; default 2)",
    )
    parser.add_argument("--no-pandas", action="store_true", help="skip the pandas baseline")
    parser.add_argument("--no-double", action="store_true", help="skip the doubled-data build")
    parser.add_argument("--no-backfill", action="store_true", help="skip the backfill part")
    parser.add_argument("--partitions", type=int, default=10, help="single partitions timed (10)")
    parser.add_argument(
        "--first-partition", default="2012-01", help="first single partition timed (YYYY-MM)"
    )
    parser.add_argument("--select", default=DEFAULT_SELECT, help="dbt selection of the build")
    parser.add_argument("--project-dir", type=Path, default=REPO / "dbt_project")
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    first_partition = f"{args.first_partition[:7]}-01"
    project_dir = args.project_dir.resolve()

    import duckdb
    import pandas as pd

    started = datetime.now(UTC)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dd-episodes-bench-", dir=args.workdir))
    snap = cpu_snapshot()
    summary: dict[str, Any] = {
        "benchmark": "episodes",
        "started_utc": started.isoformat(timespec="seconds"),
        "config": {
            "symbols": args.symbols,
            "days": args.days,
            "trades_per_day": args.trades_per_day,
            "seed": args.seed,
            "pandas_symbols": args.pandas_symbols,
            "select": args.select,
            "project_dir": str(project_dir),
            "partitions": args.partitions,
            "first_partition": first_partition[:7],
        },
        "git": git_state(),
    }
    try:
        total_days = args.days * (1 if args.no_double else 2)
        say(
            f"simulating, landing and ingesting {args.symbols} symbols x {total_days} days "
            f"({args.trades_per_day:,} trades per symbol-day) …"
        )
        source = work / "root-all"
        data = land_and_ingest(source, args.symbols, total_days, args.trades_per_day, args.seed)
        root = source if args.no_double else first_days_root(source, work / "root", args.days)
        summary["data"] = data

        base = episode_run(project_dir, work, "base", root, args.days, args.select)
        runs = {"base": base}
        if not args.no_pandas:
            from assets.core.dbt import project_vars
            from assets.live.simulator import default_symbols

            names = list(default_symbols(args.symbols))
            subset = (
                names[: args.pandas_symbols] if 0 < args.pandas_symbols < args.symbols else None
            )
            pandas = pandas_run(root, subset, project_dir, project_vars(project_dir))
            summary["pandas"] = pandas
            try:
                theirs = dbt_summary(base["_dbt"], subset or names)
                ours = pandas["check"]
                diffs = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs.get(k)}
                summary["agreement"] = {"same": not diffs, "differences": diffs, "dbt": theirs}
            except Exception as exc:  # a changed model: report it, do not stop
                summary["agreement"] = {"same": False, "differences": f"not compared: {exc!r}"}
        if not args.no_double:
            double = episode_run(project_dir, work, "double", source, 2 * args.days, args.select)
            runs["double"] = double
        summary["dbt"] = {k: {x: y for x, y in v.items() if x != "_dbt"} for k, v in runs.items()}

        goals = []
        if "pandas" in summary:
            speedup = summary["pandas"]["est_wall_s"] / base["wall_s"]
            goals.append(
                {
                    "name": "pandas time / dbt time",
                    "value": speedup,
                    "op": ">=",
                    "target": GOAL_SPEEDUP,
                    "met": speedup >= GOAL_SPEEDUP,
                    "cpu_value": summary["pandas"]["est_cpu_s"] / base["cpu_s"],
                    "note": "pandas partly scaled from a subsample"
                    if summary["pandas"]["subset"]
                    else "",
                }
            )
        if "double" in runs:
            ratio = runs["double"]["wall_s"] / base["wall_s"]
            goals.append(
                {
                    "name": f"dbt time, {2 * args.days} / {args.days} days",
                    "value": ratio,
                    "op": "<=",
                    "target": GOAL_DOUBLING,
                    "met": ratio <= GOAL_DOUBLING,
                    "cpu_value": runs["double"]["cpu_s"] / base["cpu_s"],
                    "note": f"episodes x{runs['double']['episodes'] / max(base['episodes'], 1):.2f}",
                }
            )
        summary["goals"] = goals

        if not args.no_backfill:
            summary["backfill"] = backfill(
                project_dir, work, args.select, args.partitions, first_partition
            )
    finally:
        if args.keep:
            say(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    summary["machine"] = {
        "cpus": os.cpu_count(),
        "others_cpu_share": others_share(snap, cpu_snapshot()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "pandas": pd.__version__,
    }
    summary["seconds_total"] = (datetime.now(UTC) - started) / timedelta(seconds=1)
    print()
    print(render(summary))
    print(f"\nbenchmark took {summary['seconds_total'] / 60:.1f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
