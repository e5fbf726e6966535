"""int_outcomes (dbt) against a pandas brute force, maturity as later partitions land, and
incremental builds against one-shot builds.

Random bars (three symbols, 1d bars on most days, 1m bars at random minutes on some days, a hole
of 46 days in one symbol) over January and February 2024 are written as raw Parquet partitions.
dbt re-parses the project whenever its vars change (seconds per build), so the builds run as two
plans in two parallel subprocesses, each invoking dbtRunner in one process and exporting
int_outcomes to Parquet after chosen steps:

- months (default vars: horizons 1, 5, 20; look-ahead 45 days): ``jan``, a warehouse whose raw
  folder holds January only, built for January; then February's partitions land and February
  is built as a range and a single day (``feb``); then January is rebuilt as a range and a
  single day (``jan_again``).
- one-shot: ``full``, one ``dbt build`` of both months with default vars (all data tests, the
  singular one too); ``short``, the same with horizons 1, 3, 5 and a 7-day look-ahead (the
  per-bar look-ahead limit bites often), whose first 20 days are then rebuilt alone
  (``short_split``).

Checks: (a) every build equals the brute force on the bars it could see; (b) January alone
leaves the last max-horizon bars of each series immature, February's build does not touch
January, and the rebuild matures them, a horizon exactly when its bar exists; (c) the builds by
month, range and single day equal the one-shot builds bit for bit.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import dbt
from helpers.bars import landed_hash, write_raw_bars
from helpers.frames import assert_columns_match, read_export, sorted_by

KEY = ["symbol", "bar_interval", "ts"]
EXACT_COLUMNS = [*KEY, "bar_date", "close", "matured_at", "is_mature", "outcome_source_hashes"]

START, N_DAYS = date(2024, 1, 1), 60  # January and February 2024
HOLE = (12, 58)  # days without C.X bars: Jan 13 to Feb 27
JAN_END, FEB_START = date(2024, 1, 31), date(2024, 2, 1)
DEFAULT = {"horizons": [1, 5, 20], "lookahead_days": 45}
SHORT = {"horizons": [1, 3, 5], "lookahead_days": 7}
BAR_LENGTH = {"1d": pd.Timedelta(days=1), "1m": pd.Timedelta(minutes=1)}

# ---------------------------------------------------------------- random bars and raw files


def random_bars(seed: int) -> pd.DataFrame:
    """Raw bars (symbol, ts, interval, close, ...): a 1d bar on ~85% of days and 1-minute bars at
    1-30 random minutes on ~35% of days, per symbol; C.X has no bars on days [HOLE), longer
    than the default look-ahead."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, symbol in enumerate(("AAA", "BBB", "C.X")):
        price, minute_price = 50.0 * (s + 1), 20.0 * (s + 1)
        for d in range(N_DAYS):
            day = pd.Timestamp(START + timedelta(days=d), tz="UTC")
            if symbol == "C.X" and HOLE[0] <= d < HOLE[1]:
                continue
            if rng.random() < 0.85:
                price *= float(np.exp(rng.normal(0.0005, 0.02)))
                rows.append((symbol, day, "1d", price))
            if rng.random() < 0.35:
                n = int(rng.integers(1, 31))
                for minute in np.sort(rng.choice(1440, size=n, replace=False)):
                    minute_price *= float(np.exp(rng.normal(0, 0.002)))
                    ts = day + pd.Timedelta(minutes=int(minute))
                    rows.append((symbol, ts, "1m", minute_price))
    frame = pd.DataFrame(rows, columns=["symbol", "ts", "interval", "close"])
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return frame.sort_values(["ts", "symbol", "interval"]).reset_index(drop=True)


# ---------------------------------------------------------------- the brute force


def brute_force(bars: pd.DataFrame, horizons: list[int], lookahead_days: int) -> pd.DataFrame:
    """int_outcomes by definition, with loops: for bar i of a series and horizon h, bar i + h of
    the series counts if its UTC day is at most lookahead_days after bar i's. Adds ``n_after``:
    the bars of the series after bar i within that limit, capped at the largest horizon."""
    max_h = max(horizons)
    rows = []
    for (symbol, interval), series in bars.groupby(["symbol", "interval"], sort=False):
        series = series.sort_values("ts")
        ts, close = list(series["ts"]), series["close"].to_numpy()
        days = [t.date() for t in ts]
        for i in range(len(ts)):
            limit = days[i] + timedelta(days=lookahead_days)
            ahead = [j for j in range(i + 1, min(i + max_h, len(ts) - 1) + 1) if days[j] <= limit]
            row = {
                "symbol": symbol,
                "bar_interval": interval,
                "ts": ts[i],
                "bar_date": pd.Timestamp(days[i]),
                "close": close[i],
                "n_after": len(ahead),
            }
            for h in horizons:
                known = len(ahead) >= h
                path = [np.log(close[i + k] / close[i]) for k in range(1, h + 1)] if known else []
                row[f"fwd_ret_{h}"] = path[-1] if known else np.nan
                row[f"fwd_path_min_{h}"] = min(path) if known else np.nan
                row[f"fwd_path_max_{h}"] = max(path) if known else np.nan
            mature = len(ahead) >= max_h
            row["is_mature"] = mature
            row["matured_at"] = ts[i + max_h] + BAR_LENGTH[interval] if mature else pd.NaT
            used = [i, *ahead]
            row["outcome_source_hashes"] = tuple(sorted({landed_hash(str(days[j])) for j in used}))
            rows.append(row)
    out = pd.DataFrame(rows)
    out["matured_at"] = pd.to_datetime(out["matured_at"], utc=True)
    return comparable(out)


# ---------------------------------------------------------------- running dbt


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return sorted_by(frame, KEY)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("outcomes")
    bars = random_bars(7)
    files = write_raw_bars(work / "all", bars)
    january = bars[bars["ts"].dt.date <= JAN_END]
    write_raw_bars(work / "jan_root", january)
    feb_files = [
        (path, work / "jan_root" / path.relative_to(work / "all"))
        for day, path in files.items()
        if day >= str(FEB_START)
    ]
    last = START + timedelta(days=N_DAYS - 1)

    def window(root: str, lo: date, hi: date, extra: dict) -> dict:
        return {"storage_root": str(work / root), "min_date": str(lo), "max_date": str(hi), **extra}

    def export(name: str) -> dict:
        return {"int_outcomes": str(work / f"{name}.parquet")}

    def step(warehouse: str, command: str, select: str, variables: dict, **more: Any) -> dict:
        flags = ["--no-partial-parse", "--no-write-json", "--select", select]
        return dbt.step(work / f"{warehouse}.duckdb", command, *flags, vars=variables, **more)

    one = timedelta(days=1)
    # The month-by-month warehouse: January from January's partitions alone; February lands and
    # is built as a range and a single day (out of order, as a backfill may run); then January
    # is rebuilt as a range and a single day.
    plan_months = [
        step("inc", "run", "+int_outcomes", window("jan_root", START, JAN_END, DEFAULT), export=export("jan")),
        step("inc", "run", "+int_outcomes", window("jan_root", FEB_START + one, last, DEFAULT), copy=feb_files),
        step("inc", "run", "+int_outcomes", window("jan_root", FEB_START, FEB_START, DEFAULT), export=export("feb")),
        step("inc", "run", "int_outcomes", window("jan_root", START, JAN_END - one, DEFAULT)),
        step("inc", "run", "int_outcomes", window("jan_root", JAN_END, JAN_END, DEFAULT), export=export("jan_again")),
    ]  # fmt: skip
    # One-shot builds (default vars; horizons 1, 3, 5 and a 7-day look-ahead), then the first
    # twenty days of the latter rebuilt alone: its read window ends on Jan 27, not on Mar 7.
    plan_oneshot = [
        step("full", "build", "+int_outcomes", window("all", START, last, DEFAULT), export=export("full")),
        step("short", "build", "+int_outcomes", window("all", START, last, SHORT), export=export("short")),
        step("short", "run", "int_outcomes", window("all", START, date(2024, 1, 20), SHORT), export=export("short_split")),
    ]  # fmt: skip
    plans = {"months": plan_months, "oneshot": plan_oneshot}
    procs = {name: dbt.start_plan(work, name, steps, dbt.CAUTIOUS) for name, steps in plans.items()}
    for name, proc in procs.items():
        (work / f"plan_{name}.log").write_text(dbt.wait(proc, timeout=600))
    names = ("full", "jan", "feb", "jan_again", "short", "short_split")
    exports = {
        name: read_export(
            work / f"{name}.parquet",
            KEY,
            timestamps=("ts", "matured_at"),
            lists=("outcome_source_hashes",),
            unit="us",
        )
        for name in names
    }
    return exports | {"bars": bars}


# ---------------------------------------------------------------- helpers


def assert_matches(actual: pd.DataFrame, expected: pd.DataFrame, horizons: list[int]) -> None:
    """Same rows; exact keys, maturity and lineage; log returns equal to about 1e-12."""
    returns = [f"fwd_{name}_{h}" for h in horizons for name in ("ret", "path_min", "path_max")]
    assert_columns_match(actual, expected, KEY, EXACT_COLUMNS, returns, atol=1e-12)


def assert_frame_same(left: pd.DataFrame, right: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        left.reset_index(drop=True), right.reset_index(drop=True), check_exact=True
    )


def outcome_columns(horizons: list[int]) -> list[str]:
    return [f"{kind}_{h}" for h in horizons for kind in ("fwd_ret", "fwd_path_min", "fwd_path_max")]


def in_january(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["bar_date"] <= pd.Timestamp(JAN_END)].reset_index(drop=True)


# ---------------------------------------------------------------- (a) dbt equals the brute force


def test_columns_in_contract_order(built: dict) -> None:
    expected = ["symbol", "bar_interval", "ts", "bar_date", "close"]
    expected += [*outcome_columns(DEFAULT["horizons"]), "matured_at", "is_mature"]
    assert list(built["full"].columns) == [*expected, "outcome_source_hashes"]
    assert [c for c in built["short"].columns if c.startswith("fwd_ret_")] == [
        "fwd_ret_1",
        "fwd_ret_3",
        "fwd_ret_5",
    ]


@pytest.mark.parametrize(("name", "params"), [("full", DEFAULT), ("short", SHORT)])
def test_dbt_matches_brute_force(built: dict, name: str, params: dict) -> None:
    actual, bars = built[name], built["bars"]
    expected = brute_force(bars, **params)
    assert_matches(actual, expected, params["horizons"])
    # A horizon is known exactly when its bar exists within the look-ahead, and not before.
    for h in params["horizons"]:
        assert (actual[f"fwd_ret_{h}"].notna() == (expected["n_after"] >= h)).all()
        assert (expected["n_after"] == h).any() and (expected["n_after"] == h - 1).any()
    # The data means something: both intervals mature, gaps in time, the look-ahead limit bites.
    mature = actual[actual["is_mature"]]
    assert set(mature["bar_interval"]) == {"1d", "1m"}
    minute = mature[mature["bar_interval"] == "1m"]
    assert (minute["matured_at"] - minute["ts"] > pd.Timedelta(days=1)).any()  # across days
    assert (mature["fwd_path_min_5"] < mature[["fwd_ret_5", "fwd_ret_1"]].min(axis=1)).any()
    # Bars whose next bar exists but lies beyond the look-ahead: C.X before its hole, and with
    # the short look-ahead many more.
    unlimited = brute_force(bars, params["horizons"], lookahead_days=10_000)
    cut_off = unlimited["fwd_ret_1"].notna() & actual["fwd_ret_1"].isna()
    assert "C.X" in set(actual.loc[cut_off, "symbol"])
    if name == "short":
        assert (unlimited["is_mature"] & ~actual["is_mature"]).sum() >= 5


def test_lineage_is_the_sorted_union_of_the_window(built: dict) -> None:
    full = built["full"]
    hashes = full["outcome_source_hashes"]
    assert (hashes.map(len) >= 1).all() and (hashes.map(len) > 1).any()
    assert all(list(h) == sorted(set(h)) and all(len(x) == 64 for x in h) for h in hashes)
    own = full["bar_date"].dt.strftime("%Y-%m-%d").map(landed_hash)
    assert all(o in h for o, h in zip(own, hashes, strict=True))


# ---------------------------------------------------------------- (b) maturity


def test_january_alone_leaves_its_last_bars_immature(built: dict) -> None:
    """Built with January's raw partitions only: per series, exactly the last max-horizon bars
    are immature, and each horizon is known exactly when h bars follow within January."""
    jan, max_h = built["jan"], max(DEFAULT["horizons"])
    assert (jan["bar_date"] <= pd.Timestamp(JAN_END)).all()
    january_bars = built["bars"][built["bars"]["ts"].dt.date <= JAN_END]
    expected = brute_force(january_bars, **DEFAULT)
    assert_matches(jan, expected, DEFAULT["horizons"])
    for _, series in jan.groupby(["symbol", "bar_interval"]):
        flags = series["is_mature"].to_numpy()
        n_immature = min(max_h, len(flags))
        assert not flags[-n_immature:].any() and flags[:-n_immature].all()
    for h in DEFAULT["horizons"]:
        # Boundary: a bar with exactly h bars after it has fwd_ret_h; with h - 1 it has not.
        assert jan.loc[expected["n_after"] == h, f"fwd_ret_{h}"].notna().all()
        assert jan.loc[expected["n_after"] == h - 1, f"fwd_ret_{h}"].isna().all()
        assert (expected["n_after"] == h).any() and (expected["n_after"] == h - 1).any()


def test_february_matures_january_only_when_january_is_rebuilt(built: dict) -> None:
    jan, feb, again, full = built["jan"], built["feb"], built["jan_again"], built["full"]
    # February's build adds February's rows; January's outcome rows do not change by themselves.
    assert_frame_same(in_january(feb), jan)
    after = feb[feb["bar_date"] > pd.Timestamp(JAN_END)].reset_index(drop=True)
    assert_frame_same(after, full[full["bar_date"] > pd.Timestamp(JAN_END)].reset_index(drop=True))
    # The rebuild of January reads February's bars: its last rows mature, as in a one-shot build.
    rebuilt = in_january(again)
    assert_frame_same(rebuilt, in_january(full))
    assert_matches(rebuilt, in_january(brute_force(built["bars"], **DEFAULT)), DEFAULT["horizons"])
    newly = rebuilt["is_mature"] & ~jan["is_mature"]
    assert set(rebuilt.loc[newly, "bar_interval"]) == {"1d", "1m"}
    assert (rebuilt.loc[newly, "matured_at"] > pd.Timestamp(FEB_START, tz="UTC")).all()
    # Matured exactly when the horizon's bar exists: rows still immature lack their 20th bar.
    expected = in_january(brute_force(built["bars"], **DEFAULT))
    for h in DEFAULT["horizons"]:
        gained = rebuilt[f"fwd_ret_{h}"].notna() & jan[f"fwd_ret_{h}"].isna()
        assert gained.any()
        assert (expected.loc[gained, "n_after"] >= h).all()
        assert (rebuilt[f"fwd_ret_{h}"].isna() == (expected["n_after"] < h)).all()
    # Values known in January's build never change once February lands.
    for column in outcome_columns(DEFAULT["horizons"]):
        known = jan[column].notna()
        assert (rebuilt.loc[known, column] == jan.loc[known, column]).all()


# ---------------------------------------------------------------- (c) incremental = one-shot


def test_incremental_builds_equal_one_shot_builds(built: dict) -> None:
    """Built month by month, as ranges and single days out of order (January twice), the
    warehouse holds what one build of both months holds, bit for bit; rebuilding a range whose
    read window ends earlier changes nothing either (the look-ahead limit is per bar)."""
    assert not built["jan_again"].duplicated(KEY).any()
    assert_frame_same(built["jan_again"], built["full"])
    assert_frame_same(built["short_split"], built["short"])
