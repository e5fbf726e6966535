"""int_features / int_decision_points (dbt) against the pandas oracle, and point-in-time checks.

Random bars (three symbols, 1d and 1m series, random missing days, a hole longer than the
look-back, constant stretches) are written as raw Parquet partitions and built with dbt with a
look-back of 150 days, so that histories are cut short both by the hole and, in incremental
builds, by what a build reads. dbt costs seconds per invocation (mostly parsing: new vars force
a full parse), so one subprocess runs every build of the module (dbtRunner in one process) and
exports the tables to Parquet: a full-range ``dbt build`` (all data tests of the models), and an
incremental warehouse built first from the raw days up to B only, then day by day, with an
overlapping rebuild, over the later days, whose raw files it then sees.

Checks: (a) dbt equals the oracle; (b) later days, in the raw data and built incrementally, do
not change any feature of the days built before them, and a build that can see the future gives
the same values as one that cannot; (c) day-by-day builds equal one full-range build bit for bit;
(d) the recompute from data truncated at decision time flags a deliberately leaky column
(lead(close)) and passes every real one. The oracle's own properties run under hypothesis.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from helpers import dbt
from helpers.bars import landed_hash, write_raw_bars
from helpers.frames import assert_columns_match, read_export, sorted_by
from hypothesis import given, settings
from hypothesis import strategies as st

from assets.episodes.point_in_time_features import (
    FEATURE_COLUMNS,
    MIN_BARS,
    REGIMES,
    WARM_BARS,
    bar_length,
    compute_features,
    decision_point_id,
    point_in_time_mismatches,
    recompute_features_at,
    round_half_away,
)

KEY = ["symbol", "bar_interval", "ts"]
EXACT_COLUMNS = ["symbol", "bar_interval", "ts", "decision_ts", "bar_date", "close"]
EXACT_COLUMNS += ["bars_seen", "regime", "warm"]

START, N_DAYS, LOOKBACK_DAYS = date(2022, 1, 3), 330, 150
TAIL_DAYS = 3  # built one by one after the cut

# ---------------------------------------------------------------- random bars and raw files


def random_bars(
    seed: int,
    start: date,
    n_days: int,
    symbols: tuple[str, ...] = ("AAA", "BBB", "C.X"),
    minute_day_share: float = 0.35,
    max_minute_bars: int = 40,
    hole: tuple[int, int] = (120, 280),
    full_tail_days: int = 0,
) -> pd.DataFrame:
    """Raw bars (symbol, ts, interval, open, high, low, close, volume): a daily bar on ~85% of
    days and 1-minute bars at random minutes on some days, per symbol, with regime-switching
    volatility. The last symbol has no data on days [hole); the second has a constant volume
    stretch (1d) and the first a flat stretch (1m: constant price and volume). The last
    ``full_tail_days`` days have both kinds of bars for every symbol."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, symbol in enumerate(symbols):
        price, minute_price, vol = 50.0 * (s + 1), 20.0 * (s + 1), 0.02
        minute_count = 0
        for d in range(n_days):
            day = pd.Timestamp(start + timedelta(days=d), tz="UTC")
            tail = d >= n_days - full_tail_days
            if s == len(symbols) - 1 and hole[0] <= d < hole[1]:
                continue
            if rng.random() < 0.05:
                vol = float(rng.choice([0.005, 0.02, 0.05]))
            if tail or rng.random() > 0.15:
                open_ = price * np.exp(rng.normal(0, vol / 4))
                close = open_ * np.exp(rng.normal(0.0005, vol))
                high = max(open_, close) * np.exp(abs(rng.normal(0, vol / 2)))
                low = min(open_, close) * np.exp(-abs(rng.normal(0, vol / 2)))
                volume = 1000.0 if s == 1 and 60 <= d < 100 else float(rng.integers(0, 6) * 500)
                rows.append((symbol, day, "1d", open_, high, low, close, volume))
                price = close
            if tail or rng.random() < minute_day_share:
                n = int(rng.integers(5 if tail else 1, max_minute_bars + 1))
                for minute in np.sort(rng.choice(1440, size=n, replace=False)):
                    flat = s == 0 and 200 <= minute_count < 360
                    open_ = minute_price * np.exp(0 if flat else rng.normal(0, vol / 20))
                    close = open_ * np.exp(0 if flat else rng.normal(0, vol / 10))
                    spread = 1.0 if flat else np.exp(abs(rng.normal(0, vol / 20)))
                    volume = 7.0 if flat else float(rng.integers(1, 20))
                    ts = day + pd.Timedelta(minutes=int(minute))
                    high, low = max(open_, close) * spread, min(open_, close) / spread
                    rows.append((symbol, ts, "1m", open_, high, low, close, volume))
                    minute_price, minute_count = close, minute_count + 1
    columns = ["symbol", "ts", "interval", "open", "high", "low", "close", "volume"]
    return pd.DataFrame(rows, columns=columns).sort_values(["ts", "symbol", "interval"])


# ---------------------------------------------------------------- the builds (once per module)


SPLIT_SYMBOL, SPLIT_DAY = "BBB", START + timedelta(days=150)


def with_split(bars: pd.DataFrame) -> pd.DataFrame:
    """The daily bars of SPLIT_SYMBOL as a vendor delivers them around a 2:1 split on SPLIT_DAY:
    prices before it doubled, volumes halved, the adjusted close the original (continuous) close.
    Adjusted, the series is exactly the original again (factor 0.5: exact in binary)."""
    out = bars.assign(adj_close=np.nan)
    daily = (out["symbol"] == SPLIT_SYMBOL) & (out["interval"] == "1d")
    out.loc[daily, "adj_close"] = out.loc[daily, "close"]
    before = daily & (out["ts"].dt.date < SPLIT_DAY)
    out.loc[before, ["open", "high", "low", "close"]] *= 2
    out.loc[before, "volume"] /= 2
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("features")
    unsplit = random_bars(11, START, N_DAYS, full_tail_days=TAIL_DAYS + 1)
    bars = with_split(unsplit)
    days = sorted(bars["ts"].dt.date.unique())
    first, last = days[0], days[-1]
    cut = last - timedelta(days=TAIL_DAYS)  # B: the incremental warehouse starts at [first, B]
    write_raw_bars(work / "all_days", bars)
    write_raw_bars(work / "upto_cut", bars[bars["ts"].dt.date <= cut])

    def window(root: str, lo: date, hi: date) -> dict:
        bounds = {"min_date": str(lo), "max_date": str(hi), "lookback_days": LOOKBACK_DAYS}
        return {"storage_root": str(work / root), **bounds}

    tables = ("int_features", "int_decision_points")

    def export(name: str) -> dict:
        return {table: str(work / f"{name}_{table}.parquet") for table in tables}

    full, inc = work / "full.duckdb", work / "inc.duckdb"
    day = timedelta(days=1)

    def step(warehouse: Path, command: str, variables: dict, **export: dict) -> dict:
        # +int_decision_points and nothing downstream: other models are not ours.
        select = ["--select", "+int_decision_points", "--indirect-selection", "cautious"]
        return dbt.step(warehouse, command, *select, vars=variables, **export)

    steps = [
        step(full, "build", window("all_days", first, last), export=export("full")),
        step(inc, "run", window("upto_cut", first, cut), export=export("before")),
        # Later days arrive: one day, the next, then that one again with the rest.
        step(inc, "run", window("all_days", cut + day, cut + day)),
        step(inc, "run", window("all_days", cut + 2 * day, cut + 2 * day)),
        step(inc, "run", window("all_days", cut + 2 * day, last), export=export("inc")),
    ]
    dbt.run_plan(work, "features", steps, timeout=600)
    out = {
        f"{name}_{table}": read_export(
            work / f"{name}_{table}.parquet",
            KEY,
            timestamps=("ts", "decision_ts"),
            lists=("source_hashes",),
        )
        for name in ("full", "before", "inc")
        for table in tables
    }
    return out | {"bars": bars, "unsplit": unsplit, "cut": cut}


# ---------------------------------------------------------------- helpers


def assert_matches_oracle(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same rows; exact keys, NULLs, regimes and warm; features equal to about 1e-9."""
    assert_columns_match(
        actual, expected, KEY, EXACT_COLUMNS, FEATURE_COLUMNS, rtol=1e-9, atol=1e-9
    )


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return sorted_by(frame, KEY)


def leaky_features(bars: pd.DataFrame, lookback_days: int) -> pd.DataFrame:
    """The real features plus ret_next_1 = ln(close_{t+1} / close_t): one bar of the future."""
    out = compute_features(bars, lookback_days)
    nxt = out.groupby(["symbol", "bar_interval"])["close"].shift(-1)
    out["ret_next_1"] = round_half_away(np.log(nxt / out["close"]))
    return out


def sample_rows(frame: pd.DataFrame, per_series: int, seed: int) -> pd.DataFrame:
    """A few rows of each series, always including its first warm row and its last row."""
    picks = []
    for _, series in frame.groupby(["symbol", "bar_interval"]):
        chosen = series.sample(min(per_series, len(series)), random_state=seed)
        picks += [chosen, series[series["warm"]].head(1), series.tail(1)]
    return pd.concat(picks).drop_duplicates(KEY)


# ---------------------------------------------------------------- (a) dbt equals the oracle


def test_dbt_matches_oracle(built: dict) -> None:
    features = built["full_int_features"]
    assert_matches_oracle(features, compute_features(built["bars"], LOOKBACK_DAYS))
    # The data is rich enough to mean something: both intervals warm, every regime, NULL z-scores.
    warm = features[features["warm"]]
    assert set(warm["bar_interval"]) == {"1d", "1m"}
    assert set(warm["regime"]) == set(REGIMES)
    assert warm["volume_z_20"].isna().any() and warm["volume_z_20"].notna().any()
    assert (warm["vol_20"] == 0).any()  # the flat 1m stretch
    daily = features[features["bar_interval"] == "1d"]
    assert daily["bars_seen"].max() <= LOOKBACK_DAYS + 1
    # After the hole (longer than the look-back) the history restarts although older bars exist.
    first = ~features.duplicated(["symbol", "bar_interval"])
    restarts = features[(features["bars_seen"] == 1) & ~first]
    assert set(restarts["symbol"]) == {"C.X"}
    # Lineage: the decision bar's landed file.
    day_hash = features["bar_date"].dt.strftime("%Y-%m-%d").map(landed_hash)
    assert (features["source_hashes"] == day_hash.map(lambda h: (h,))).all()


def test_a_delivered_split_is_adjusted_away(built: dict) -> None:
    """dbt's features of the split series equal those of the series that never split."""
    features = built["full_int_features"]
    unsplit = compute_features(built["unsplit"], LOOKBACK_DAYS)
    mine = features[features["symbol"] == SPLIT_SYMBOL].reset_index(drop=True)
    reference = unsplit[unsplit["symbol"] == SPLIT_SYMBOL].reset_index(drop=True)
    assert len(mine) == len(reference) > 200
    for column in ("close", "ret_1", "ret_5", "vol_20", "volume_z_20", "trend_gap_50"):
        assert np.allclose(mine[column], reference[column], rtol=0, atol=1e-9, equal_nan=True)


def test_decision_points_are_the_warm_rows(built: dict) -> None:
    features, points = built["full_int_features"], built["full_int_decision_points"]
    warm = comparable(features[features["warm"]])
    assert_frame_same(comparable(points.drop(columns="decision_point_id")), warm)
    ids = [decision_point_id(*key) for key in points[KEY].itertuples(index=False)]
    assert list(points["decision_point_id"]) == ids
    assert points["decision_point_id"].is_unique


def test_decision_ts_is_the_bar_close(built: dict) -> None:
    features = built["full_int_features"]
    lengths = features["bar_interval"].map(bar_length)
    assert (features["decision_ts"] == features["ts"] + pd.to_timedelta(lengths)).all()
    assert bar_length("5m") == pd.Timedelta(minutes=5)
    assert bar_length("1h") == pd.Timedelta(hours=1)
    with pytest.raises(ValueError):
        bar_length("1mo")


# ---------------------------------------------------------------- (b) and (c) incremental


def assert_frame_same(left: pd.DataFrame, right: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        left.reset_index(drop=True), right.reset_index(drop=True), check_exact=True
    )


def test_future_days_change_no_built_feature(built: dict) -> None:
    """(b) Rows built before later days existed equal the same rows after those days were landed
    and built incrementally, and the rows of a build that could see every later day."""
    cut = pd.Timestamp(built["cut"])
    before = comparable(built["before_int_features"])
    assert (before["bar_date"] <= cut).all()
    inc, full = built["inc_int_features"], built["full_int_features"]
    assert_frame_same(comparable(inc[inc["bar_date"] <= cut]), before)
    assert_frame_same(comparable(full[full["bar_date"] <= cut]), before)
    assert (full["bar_date"] > cut).sum() > 0


def test_day_by_day_builds_equal_one_full_build(built: dict) -> None:
    """(c) Bit for bit, rounded doubles included; the overlapping rebuild left no duplicates."""
    for table in ("int_features", "int_decision_points"):
        inc, full = comparable(built[f"inc_{table}"]), comparable(built[f"full_{table}"])
        assert not inc.duplicated(KEY).any()
        assert_frame_same(inc, full)
    new_days = built["full_int_features"]["bar_date"] > pd.Timestamp(built["cut"])
    assert built["full_int_features"].loc[new_days, "warm"].any()


# ---------------------------------------------------------------- (d) seeded leak


def test_recompute_flags_a_leaky_column_and_passes_the_real_ones(built: dict) -> None:
    """dbt's real features equal their recompute from data truncated at decision time; a column
    computed with lead(close) (one future bar) does not."""
    con = duckdb.connect()
    con.register("features", built["full_int_features"].drop(columns="source_hashes"))
    leaky = con.sql(
        "select *, round(ln(lead(close) over (partition by symbol, bar_interval order by ts)"
        " / close), 10) as ret_next_1 from features"
    ).df()
    leaky["ts"] = leaky["ts"].dt.tz_convert("UTC")
    sample = sample_rows(leaky, per_series=6, seed=5)
    columns = [*FEATURE_COLUMNS, "regime", "warm", "bars_seen", "ret_next_1"]
    found = point_in_time_mismatches(
        sample, built["bars"], columns, LOOKBACK_DAYS, features=leaky_features
    )
    assert set(found["column"]) == {"ret_next_1"}
    has_next = sample["ret_next_1"].notna()
    assert len(found) == has_next.sum()  # every row with a next bar is flagged
    assert found["recomputed"].isna().all()  # the truncated data has no next bar


def test_recompute_features_at_one_row(built: dict) -> None:
    features, bars = built["full_int_features"], built["bars"]
    row = features[features["warm"] & (features["bar_interval"] == "1d")].iloc[-1]
    symbol, ts = row["symbol"], row["ts"]
    again = recompute_features_at(bars, symbol, "1d", ts, LOOKBACK_DAYS)
    assert again["bars_seen"] == row["bars_seen"] and again["regime"] == row["regime"]
    for column in FEATURE_COLUMNS:
        assert np.isclose(again[column], row[column], rtol=1e-9, atol=1e-9), column
    whole = recompute_features_at(bars, symbol, "1d", ts, LOOKBACK_DAYS, max_bars=None)
    assert np.isclose(whole["vol_20_mean_100"], row["vol_20_mean_100"], rtol=1e-9, atol=1e-9)
    with pytest.raises(KeyError):
        recompute_features_at(bars, symbol, "1d", ts + pd.Timedelta("1s"), LOOKBACK_DAYS)


# ---------------------------------------------------------------- the oracle's own properties


@st.composite
def bar_series(draw: st.DrawFn) -> tuple[pd.DataFrame, int]:
    """One daily-or-minute series with random missing days, and a look-back in days."""
    seed = draw(st.integers(0, 2**32 - 1))
    interval = draw(st.sampled_from(["1d", "1m"]))
    lookback = draw(st.integers(3, 200))
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 260))
    if interval == "1d":
        steps = rng.choice([1, 1, 1, 2, 3, 9], size=n)
        ts = pd.Timestamp("2021-01-01", tz="UTC") + pd.to_timedelta(np.cumsum(steps), "D")
    else:
        steps = rng.choice([1, 1, 30, 600, 3000], size=n)
        ts = pd.Timestamp("2021-01-01", tz="UTC") + pd.to_timedelta(np.cumsum(steps), "min")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = close * np.exp(rng.normal(0, 0.005, n))
    bars = pd.DataFrame(
        {
            "symbol": "S",
            "interval": interval,
            "ts": ts,
            "open": open_,
            "high": np.maximum(open_, close) * 1.01,
            "low": np.minimum(open_, close) * 0.99,
            "close": close,
            "volume": rng.choice([3.0, 3.0, 3.0, 5.0], size=n) * rng.integers(1, 3),
        }
    )
    return bars, lookback


@settings(max_examples=12, deadline=None)
@given(bar_series(), st.data())
def test_oracle_is_point_in_time(series: tuple[pd.DataFrame, int], data: st.DataObject) -> None:
    """Every oracle value equals its recompute from the bars at or before it."""
    bars, lookback = series
    full = compute_features(bars, lookback)
    picks = data.draw(st.lists(st.integers(0, len(full) - 1), min_size=1, max_size=6))
    found = point_in_time_mismatches(full.iloc[sorted(set(picks))], bars, lookback_days=lookback)
    assert found.empty, found


@settings(max_examples=12, deadline=None)
@given(bar_series(), st.integers(1, 120))
def test_oracle_ignores_history_beyond_the_lookback(
    series: tuple[pd.DataFrame, int], cut_days: int
) -> None:
    """A build reads lookback_days before its window: dropping older bars changes nothing there,
    and each feature is NULL exactly below its window."""
    bars, lookback = series
    full = compute_features(bars, lookback)
    start = full["bar_date"].min() + pd.Timedelta(days=cut_days)
    since = (start - pd.Timedelta(days=lookback)).tz_localize("UTC")
    recent = compute_features(bars[bars["ts"] >= since], lookback)
    keep_full, keep_recent = full["bar_date"] >= start, recent["bar_date"] >= start
    assert_matches_oracle(recent[keep_recent], full[keep_full])
    for column, needed in MIN_BARS.items():
        if column in FEATURE_COLUMNS and column != "volume_z_20":
            assert (full[column].isna() == (full["bars_seen"] < needed)).all(), column
    assert (full["warm"] == (full["bars_seen"] >= WARM_BARS)).all()
