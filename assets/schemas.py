"""Pandera contracts of the raw tables: what every accepted row must satisfy.

The ingestion rules (assets/ingest.py) decide, in SQL, which rows are quarantined; these schemas
then check, independently and after the write, that what landed in ``raw/`` honours the contract.
They back the blocking asset checks, so a bug in the rules cannot leak bad rows downstream.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import pandera.pandas as pa

from assets.feeds import FeedSpec

UTC_TS = pd.DatetimeTZDtype("us", "UTC")
# Arrow-backed strings: pandera checks an object column's type row by row (seconds per million
# rows); an Arrow string column is checked once. Read partitions with ``read_partition``.
TEXT = pd.StringDtype("pyarrow")
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")


def _lineage_columns() -> dict[str, pa.Column]:
    return {
        "feed": pa.Column(TEXT, description="Declared feed the row came from"),
        "source_file": pa.Column(TEXT, description="Landed file, relative to the storage root"),
        "source_hash": pa.Column(
            TEXT,
            # Checked on the distinct values: a partition holds few files but millions of rows.
            pa.Check(
                lambda s: s.isin([h for h in s.unique() if HASH_PATTERN.fullmatch(h)]),
                name="sha256_hex",
                error="source_hash is not a SHA-256 hex digest",
            ),
            description="SHA-256 of the landed file's bytes",
        ),
    }


def _partition_checks(day: str | None, feeds: dict[str, FeedSpec]) -> list[pa.Check]:
    checks = []
    if day is not None:
        start = datetime.combine(date.fromisoformat(day), time(), tzinfo=UTC)
        end = start + timedelta(days=1)
        checks.append(
            pa.Check(
                lambda df: (df["ts"] >= start) & (df["ts"] < end),
                name="timestamp_inside_partition",
                error=f"timestamp outside partition {day}",
            )
        )
    known = {name: set(f.symbols) for name, f in feeds.items() if f.symbols}
    if known:
        checks.append(
            pa.Check(
                # Decided per distinct (feed, symbol) pair, then broadcast to the rows.
                lambda df: (
                    df.groupby(["feed", "symbol"], observed=True)["symbol"]
                    .transform(lambda g: g.name[0] not in known or g.name[1] in known[g.name[0]])
                    .astype(bool)
                ),
                name="known_symbol",
                error="symbol not declared for its feed",
            )
        )
    return checks


def raw_trades_schema(
    day: str | None = None, feeds: dict[str, FeedSpec] | None = None
) -> pa.DataFrameSchema:
    """Contract of ``raw_trades`` (one day's partition when ``day`` is given)."""
    return pa.DataFrameSchema(
        {
            "symbol": pa.Column(TEXT, pa.Check.str_length(1, 32), description="Instrument"),
            "ts": pa.Column(UTC_TS, description="Trade time, UTC, microseconds"),
            "trade_id": pa.Column("int64", description="Venue trade id, unique within a feed"),
            "price": pa.Column(
                float,
                [pa.Check.gt(0), pa.Check(lambda s: s.abs() < float("inf"))],
                description="Trade price, > 0",
            ),
            "size": pa.Column(float, pa.Check.ge(0), description="Traded quantity, >= 0"),
            "side": pa.Column(
                TEXT, pa.Check.isin(["buy", "sell", "unknown"]), description="Aggressor side"
            ),
            **_lineage_columns(),
        },
        checks=_partition_checks(day, feeds or {}),
        unique=["feed", "symbol", "trade_id"],
        strict=True,
        ordered=True,
        name="raw_trades",
        description="Validated trades, one Parquet file per UTC day",
    )


def raw_bars_schema(
    day: str | None = None, feeds: dict[str, FeedSpec] | None = None
) -> pa.DataFrameSchema:
    """Contract of ``raw_bars`` (one day's partition when ``day`` is given)."""
    positive = [pa.Check.gt(0), pa.Check(lambda s: s.abs() < float("inf"))]
    return pa.DataFrameSchema(
        {
            "symbol": pa.Column(TEXT, pa.Check.str_length(1, 32), description="Instrument"),
            "ts": pa.Column(UTC_TS, description="Bar open time, UTC"),
            "interval": pa.Column(TEXT, description="Bar length, e.g. 1d or 1m"),
            "open": pa.Column(float, positive, description="Open price"),
            "high": pa.Column(float, positive, description="High price"),
            "low": pa.Column(float, positive, description="Low price"),
            "close": pa.Column(float, positive, description="Close price"),
            "volume": pa.Column(float, pa.Check.ge(0), description="Traded volume, >= 0"),
            "adj_close": pa.Column(
                float, nullable=True, description="Split/dividend-adjusted close"
            ),
            **_lineage_columns(),
        },
        checks=[
            pa.Check(
                lambda df: (
                    (df["high"] >= df[["open", "close"]].max(axis=1))
                    & (df[["open", "close"]].min(axis=1) >= df["low"])
                ),
                name="high_low_envelope",
                error="high >= max(open, close) >= min(open, close) >= low",
            ),
            *_partition_checks(day, feeds or {}),
        ],
        unique=["feed", "symbol", "ts"],
        strict=True,
        ordered=True,
        name="raw_bars",
        description="Validated OHLCV bars, one Parquet file per UTC day",
    )


RAW_SCHEMA_BUILDERS = {"trades": raw_trades_schema, "bars": raw_bars_schema}


def read_partition(path) -> pd.DataFrame:
    """A raw Parquet file as the DataFrame the schemas expect (Arrow-backed strings)."""
    import pyarrow as pyarrow_
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas(types_mapper={pyarrow_.string(): TEXT}.get)
