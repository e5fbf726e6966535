"""The point-in-time features of ``int_features`` (dbt), recomputed by brute force in pandas: the
reference of the episodes' leakage check and of the tests.

Plain pandas and numpy, no Dagster and no warehouse: the dataset exports' leakage check
(assets/episodes/datasets.py) recomputes single rows from data truncated at decision time with
:func:`recompute_features_at` / :func:`point_in_time_mismatches`, and the tests compare dbt's
table with :func:`compute_features`.

Definitions (t = the decision bar; windows are counted in bars of one series, i.e. one symbol and
bar_interval, ordered by ts; ``ln`` is the natural log):

- history of t: the bars of its series with ``ts <= ts_t`` and
  ``bar_date >= bar_date_t - lookback_days``; ``bars_seen`` = their number (t included).
  A feature is NULL unless its whole window lies in the history, so its value does not depend on
  which days a build covered (see ``MIN_BARS``).
- ``ret_k``: ``ln(close_t / close_{t-k})`` for k = 1, 5, 20.
- ``vol_20``: sample standard deviation (n - 1) of the one-bar log returns of t-19..t.
- ``volume_z_20``: ``(volume_t - mean) / std`` of the volumes of t-20..t-1 (sample std);
  NULL when those 20 volumes are all equal.
- ``range_pct``: ``(high_t - low_t) / close_t``.
- ``gap``: ``ln(open_t / close_{t-1})``.
- ``trend_gap_50``: ``close_t / mean(close_{t-49..t}) - 1``.
- ``vol_20_mean_100``: mean of the (rounded) vol_20 of t-100..t-1.
- ``regime``: ``'up'`` when trend_gap_50 >= 0 else ``'down'``, then ``'_volatile'`` when
  vol_20 > vol_20_mean_100 else ``'_calm'`` (ties go to up / calm); NULL while an input is NULL.
- ``warm``: ``bars_seen >= 121`` (= WARM_BARS): every window above is complete; the longest is
  vol_20_mean_100 (100 earlier vol_20 values, the first of which needs 20 returns, i.e. 21 bars).
  A warm row can still have a NULL volume_z_20 (constant volume).
- ``decision_ts``: ``ts + bar length`` (the bar's close), e.g. ``'1d'`` -> 1 day, ``'5m'`` -> 5 min.

Every double feature is rounded to 10 decimals, half away from zero like DuckDB's ``round``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

LOOKBACK_DAYS = 400
WARM_BARS = 121
DECIMALS = 10
FEATURE_COLUMNS = (
    "ret_1",
    "ret_5",
    "ret_20",
    "vol_20",
    "volume_z_20",
    "range_pct",
    "gap",
    "trend_gap_50",
    "vol_20_mean_100",
)
REGIMES = ("up_calm", "up_volatile", "down_calm", "down_volatile")
# Bars of history (t included) each feature needs; below that it is NULL.
MIN_BARS = {
    "ret_1": 2,
    "ret_5": 6,
    "ret_20": 21,
    "vol_20": 21,
    "volume_z_20": 21,
    "range_pct": 1,
    "gap": 2,
    "trend_gap_50": 50,
    "vol_20_mean_100": WARM_BARS,
    "regime": WARM_BARS,
}
KEY = ("symbol", "bar_interval", "ts")
OUTPUT_COLUMNS = (
    "symbol",
    "bar_interval",
    "ts",
    "decision_ts",
    "bar_date",
    "close",
    "bars_seen",
    *FEATURE_COLUMNS,
    "regime",
    "warm",
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INTERVAL = re.compile(r"^([0-9]+)([smhdw])$")

FeatureFunction = Callable[..., pd.DataFrame]


def bar_length(interval: str) -> pd.Timedelta:
    """The length of a bar label ('1d', '5m', '1h', '30s', '1w'); ValueError for others."""
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValueError(f"unknown bar interval {interval!r}")
    return pd.Timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def decision_point_id(symbol: str, interval: str, ts: pd.Timestamp) -> str:
    """md5 of 'symbol|interval|ts', ts as UTC ISO-8601 with microseconds (as int_decision_points)."""
    stamp = pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return hashlib.md5(f"{symbol}|{interval}|{stamp}".encode()).hexdigest()


def round_half_away(values: pd.Series, decimals: int = DECIMALS) -> pd.Series:
    """DuckDB's round(x, d) on doubles: round(x * 10^d) / 10^d with halves away from zero."""
    scale = 10.0**decimals
    scaled = values.to_numpy(dtype=float) * scale
    rounded = np.copysign(np.floor(np.abs(scaled) + 0.5), scaled) / scale
    return pd.Series(rounded, index=values.index)


def adjust_prices(bars: pd.DataFrame) -> pd.DataFrame:
    """Split/dividend-adjusted bars where ``adj_close`` is positive, as stg_bars adjusts them.

    adj_factor = adj_close / close scales open/high/low, close becomes adj_close, volume is
    divided by the factor; bars without an adjusted close stay as delivered. Idempotent.
    """
    if "adj_close" not in bars:
        return bars
    out = bars.copy()
    adj_close = pd.to_numeric(out["adj_close"], errors="coerce").astype(float)
    close = out["close"].astype(float)
    usable = (adj_close > 0) & (close > 0)
    factor = (adj_close / close).where(usable, 1.0)
    for column in ("open", "high", "low"):
        out[column] = out[column].astype(float) * factor
    out["close"] = adj_close.where(factor != 1.0, close)
    out["volume"] = out["volume"].astype(float) / factor
    return out


def normalize_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars with tz-aware UTC ts, bar_date as datetime64[D] and bar_interval (raw files call it
    interval), prices adjusted (``adjust_prices``), sorted by series and ts."""
    # rename returns a new frame (adjust_prices another), so the assignments below never
    # touch the caller's bars.
    out = adjust_prices(bars.rename(columns={"interval": "bar_interval"}))
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    if "bar_date" not in out:
        out["bar_date"] = out["ts"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    out["bar_date"] = pd.to_datetime(out["bar_date"]).astype("datetime64[ns]")
    return out.sort_values(list(KEY), kind="stable").reset_index(drop=True)


def _bars_seen(bar_date: pd.Series, lookback_days: int) -> np.ndarray:
    days = bar_date.to_numpy(dtype="datetime64[D]")
    if len(days) > 1 and (np.diff(days).astype(int) < 0).any():
        raise ValueError("bar_date must not decrease with ts within a series")
    first = np.searchsorted(days, days - np.timedelta64(lookback_days, "D"), side="left")
    return np.arange(1, len(days) + 1) - first


def _series_features(bars: pd.DataFrame, lookback_days: int) -> pd.DataFrame:
    close, volume = bars["close"], bars["volume"]
    bars_seen = _bars_seen(bars["bar_date"], lookback_days)
    log_ret = np.log(close / close.shift(1))
    previous_volume = volume.shift(1).rolling(20)
    volume_std = previous_volume.std()
    constant = previous_volume.max() == previous_volume.min()
    raw = {
        "ret_1": log_ret,
        "ret_5": np.log(close / close.shift(5)),
        "ret_20": np.log(close / close.shift(20)),
        "vol_20": log_ret.rolling(20).std(),
        "volume_z_20": ((volume - previous_volume.mean()) / volume_std).where(~constant),
        "range_pct": (bars["high"] - bars["low"]) / close,
        "gap": np.log(bars["open"] / close.shift(1)),
        "trend_gap_50": close / close.rolling(50).mean() - 1,
    }
    out = bars[["symbol", "bar_interval", "ts", "bar_date", "close"]].copy()
    out["bars_seen"] = bars_seen
    for name, values in raw.items():
        out[name] = round_half_away(values).where(bars_seen >= MIN_BARS[name])
    vol_mean = out["vol_20"].shift(1).rolling(100).mean()
    out["vol_20_mean_100"] = round_half_away(vol_mean).where(bars_seen >= WARM_BARS)
    known = out["trend_gap_50"].notna() & out["vol_20"].notna() & out["vol_20_mean_100"].notna()
    trend = np.where(out["trend_gap_50"] >= 0, "up", "down")
    spread = np.where(out["vol_20"] > out["vol_20_mean_100"], "_volatile", "_calm")
    out["regime"] = pd.Series(np.char.add(trend, spread), index=out.index).where(known)
    out["warm"] = bars_seen >= WARM_BARS
    return out


def compute_features(bars: pd.DataFrame, lookback_days: int = LOOKBACK_DAYS) -> pd.DataFrame:
    """Features of every bar in ``bars`` (columns symbol, bar_interval or interval, ts, open,
    high, low, close, volume, optionally bar_date), as ``int_features`` defines them, from the
    bars of the frame only. Sorted by symbol, bar_interval, ts; columns ``OUTPUT_COLUMNS``."""
    bars = normalize_bars(bars)
    parts = [
        _series_features(series.reset_index(drop=True), lookback_days)
        for _, series in bars.groupby(["symbol", "bar_interval"], sort=True)
    ]
    if not parts:
        return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    out = pd.concat(parts, ignore_index=True)
    lengths = out["bar_interval"].map(bar_length)
    out["decision_ts"] = out["ts"] + pd.to_timedelta(lengths)
    return out[list(OUTPUT_COLUMNS)]


def recompute_features_at(
    bars: pd.DataFrame,
    symbol: str,
    interval: str,
    ts: pd.Timestamp | str,
    lookback_days: int = LOOKBACK_DAYS,
    features: FeatureFunction = compute_features,
    max_bars: int | None = WARM_BARS,
) -> pd.Series:
    """The features of one bar recomputed from its information set only: the bars of its series
    with ts at or before ``ts`` (and within the look-back). Anything a feature took from a later
    bar shows up as a difference from the value built on the full data.

    ``features`` is the feature function (default the real one); ``max_bars`` keeps only the
    last bars of the information set (enough for every window of the real features: WARM_BARS)
    to keep the recompute cheap, with ``bars_seen`` and ``warm`` still counting the whole
    information set; None uses all of it."""
    bars = normalize_bars(bars)
    series = bars[(bars["symbol"] == symbol) & (bars["bar_interval"] == interval)]
    return _recompute(series, ts, lookback_days, features, max_bars)


def _recompute(
    series: pd.DataFrame,
    ts: pd.Timestamp | str,
    lookback_days: int,
    features: FeatureFunction,
    max_bars: int | None,
) -> pd.Series:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    at = series[series["ts"] == ts]
    if at.empty:
        raise KeyError(f"no bar at {ts}")
    since = at["bar_date"].iloc[0] - pd.Timedelta(days=lookback_days)
    known = series[(series["ts"] <= ts) & (series["bar_date"] >= since)]
    window = known if max_bars is None else known.tail(max_bars)
    row = features(window, lookback_days=lookback_days).iloc[-1].copy()
    if "bars_seen" in row.index:
        row["bars_seen"] = len(known)
    if "warm" in row.index:
        row["warm"] = len(known) >= WARM_BARS
    return row


def _same(built: object, recomputed: object, rtol: float, atol: float) -> bool:
    if pd.isna(built) or pd.isna(recomputed):
        return bool(pd.isna(built) and pd.isna(recomputed))
    if isinstance(built, str | bool | np.bool_) or isinstance(recomputed, str | bool | np.bool_):
        return bool(built == recomputed)
    return bool(np.isclose(float(built), float(recomputed), rtol=rtol, atol=atol))


def point_in_time_mismatches(
    built: pd.DataFrame,
    bars: pd.DataFrame,
    columns: Iterable[str] = (*FEATURE_COLUMNS, "regime", "warm", "bars_seen"),
    lookback_days: int = LOOKBACK_DAYS,
    features: FeatureFunction = compute_features,
    rtol: float = 1e-9,
    atol: float = 1e-9,
) -> pd.DataFrame:
    """Leakage check: each row of ``built`` (features as built, with symbol, bar_interval, ts)
    against :func:`recompute_features_at` on ``bars``. Returns one row per differing value
    (symbol, bar_interval, ts, column, built, recomputed); empty when nothing leaked. Pass a
    sample of rows: each costs one recompute."""
    columns = list(columns)
    series = dict(iter(normalize_bars(bars).groupby(["symbol", "bar_interval"], sort=False)))
    found = []
    for row in built.to_dict("records"):
        key = (row["symbol"], row["bar_interval"])
        again = _recompute(series[key], row["ts"], lookback_days, features, WARM_BARS)
        for column in columns:
            if not _same(row[column], again[column], rtol, atol):
                found.append(
                    {
                        "symbol": row["symbol"],
                        "bar_interval": row["bar_interval"],
                        "ts": row["ts"],
                        "column": column,
                        "built": row[column],
                        "recomputed": again[column],
                    }
                )
    return pd.DataFrame(
        found, columns=["symbol", "bar_interval", "ts", "column", "built", "recomputed"]
    )
