"""Random raw bars and the raw partitions the dbt models read (raw/<table>/date=D/data.parquet,
the schemas of assets.ingestion.ingest.RAW_SCHEMAS), written as the ingestion would."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from assets.ingestion.ingest import RAW_SCHEMAS

START, END = date(2023, 1, 1), date(2024, 12, 31)


def landed_hash(day: str) -> str:
    """The ``source_hash`` of day ``day``'s bars: the SHA-256 of their landed file's path."""
    return hashlib.sha256(f"landing/test/{day}.csv".encode()).hexdigest()


def regime_series(
    seed: int,
    s: int,
    symbol: str,
    perturb_from: pd.Timestamp | None = None,
    start: date = START,
    end: date = END,
) -> list[tuple]:
    """Daily bars (symbol, ts, interval, close, volume) on ~90% of days; a regime (vol
    0.8%-3%, drift +-0.3%) redrawn every 10-60 days. Bars at or after ``perturb_from`` follow a
    second random stream."""
    rng, other = np.random.default_rng([seed, s]), np.random.default_rng([seed, s, 1])
    price, left, vol, drift = 40.0 * (s + 1), 0, 0.01, 0.0
    rows = []
    for d in range((end - start).days + 1):
        day = pd.Timestamp(start + timedelta(days=d), tz="UTC")
        source = other if perturb_from is not None and day >= perturb_from else rng
        if left == 0:
            left = int(source.integers(10, 61))
            vol, drift = float(source.uniform(0.008, 0.03)), float(source.uniform(-3, 3)) / 1e3
        left -= 1
        if source.random() < 0.9:
            price *= float(np.exp(source.normal(drift, vol)))
            rows.append((symbol, day, "1d", price, float(source.uniform(1e3, 2e3))))
    return rows


def bars_frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["symbol", "ts", "interval", "close", "volume"])
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return frame.sort_values(["ts", "symbol"]).reset_index(drop=True)


def regime_bars(seed: int, symbols: tuple[str, ...] = ("AAA", "BBB", "CCC")) -> pd.DataFrame:
    """Daily bars over 2023 and 2024, one regime series per symbol."""
    return bars_frame(
        [row for s, name in enumerate(symbols) for row in regime_series(seed, s, name)]
    )


def write_days(root: Path, table_name: str, table: pa.Table, days: np.ndarray) -> dict[str, Path]:
    """One partition per distinct day of ``days`` (a day per row); returns the file of each day."""
    files = {}
    for value in np.unique(days):
        folder = root / "raw" / table_name / f"date={value}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(np.flatnonzero(days == value)), folder / "data.parquet")
        files[str(value)] = folder / "data.parquet"
    return files


def write_raw_bars(root: Path, bars: pd.DataFrame) -> dict[str, Path]:
    """One raw bars partition per UTC day; returns the file of each day. Bars with only a close
    get open/high/low around it (0.999x, 1.01x, 0.99x); without a volume, volume 1; without an
    adj_close column, no adjusted close."""
    day = bars["ts"].dt.strftime("%Y-%m-%d")
    derived = {}
    if "open" not in bars:
        close = bars["close"]
        derived.update(open=close * 0.999, high=close * 1.01, low=close * 0.99)
    if "volume" not in bars:
        derived["volume"] = 1.0
    frame = bars.assign(
        **derived,
        adj_close=bars.get("adj_close"),
        feed="test",
        source_file="landing/test/" + day + ".csv",
        source_hash=day.map(landed_hash),
    )
    schema = RAW_SCHEMAS["bars"]
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    return write_days(root, "bars", table, day.to_numpy())


def write_raw_table(root: Path, kind: str, frame: pd.DataFrame, days: pd.Series) -> None:
    """Rows of a raw table (``RAW_SCHEMAS[kind]``; ``days``: each row's partition day)."""
    schema = RAW_SCHEMAS[kind]
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    write_days(root, kind, table, days.to_numpy())


# AAA.P is AAA with its future changed: from CUTOFF on its bars follow another random path.
PERTURBED, CUTOFF = "AAA.P", pd.Timestamp("2024-09-01", tz="UTC")


def perturbed_bars(seed: int) -> pd.DataFrame:
    """Daily bars over 2023 and 2024 of AAA, BBB, C.X and AAA.P (see CUTOFF)."""
    rows = regime_series(seed, 0, "AAA") + regime_series(seed, 0, PERTURBED, CUTOFF)
    rows += regime_series(seed, 1, "BBB") + regime_series(seed, 2, "C.X")
    return bars_frame(rows)


def recorded_decisions(bars: pd.DataFrame) -> pd.DataFrame:
    """Three decisions on 2024-03 bars: alice buys an hour after an AAA bar closes (with a
    rationale), bob sells BBB the next morning without one, carol trades a symbol with no bars."""
    aaa = bars[(bars["symbol"] == "AAA") & (bars["ts"] >= "2024-03-04")].iloc[0]["ts"]
    bbb = bars[(bars["symbol"] == "BBB") & (bars["ts"] >= "2024-03-11")].iloc[0]["ts"]
    day = pd.Timedelta(days=1)
    rows = [
        ("d-1", "alice", "AAA", aaa + day + pd.Timedelta(hours=1), "buy", 0.5, "Strong trend."),
        ("d-2", "bob", "BBB", bbb + day + pd.Timedelta(hours=14), "sell", 0.2, None),
        ("d-3", "carol", "NOPE", aaa + day, "hold", 0.0, "Nothing to see."),
    ]
    frame = pd.DataFrame(rows, columns=RAW_SCHEMAS["decisions"].names[:7])
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    frame["feed"] = "desk"
    frame["source_file"] = "landing/desk/decisions.csv"
    frame["source_hash"] = hashlib.sha256(b"decisions.csv").hexdigest()
    frame["bar_ts"] = [aaa, bbb, aaa]
    return frame


def write_raw_decisions(root: Path, frame: pd.DataFrame) -> None:
    write_raw_table(root, "decisions", frame, frame["ts"].dt.strftime("%Y-%m-%d"))


def write_episode_inputs(root: Path, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw inputs of the episode models under ``root``: :func:`perturbed_bars` and their
    :func:`recorded_decisions`; returns both."""
    bars = perturbed_bars(seed)
    decisions = recorded_decisions(bars)
    write_raw_bars(root, bars)
    write_raw_decisions(root, decisions)
    return bars, decisions
