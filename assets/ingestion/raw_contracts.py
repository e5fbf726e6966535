"""Pandera contracts of the raw tables: what every accepted row must satisfy.

The ingestion rules (assets/ingestion/ingest.py) decide, in SQL, which rows are quarantined; these schemas
then check, independently and after the write, what landed in ``raw/``. They back the blocking
asset checks, so a bug in the rules cannot leak bad rows downstream.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow_
import pyarrow.parquet as pq

from assets.core.contracts import ContractResult
from assets.core.feeds import FeedSpec
from assets.core.storage import Storage
from assets.ingestion.ingest import new_connection

UTC_TS = pd.DatetimeTZDtype("us", "UTC")
# Arrow-backed strings: pandera checks an object column's type row by row (seconds per million
# rows); an Arrow string column is checked once.
TEXT = pd.StringDtype("pyarrow")
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
POSITIVE = [pa.Check.gt(0), pa.Check(lambda s: s.abs() < float("inf"), name="finite")]
# Required text: not empty nor only blanks (the rules quarantine those as missing).
NOT_BLANK = pa.Check(lambda s: s.str.strip().str.len() > 0, name="not_blank")

COLUMNS: dict[str, dict[str, pa.Column]] = {
    "trades": {
        "symbol": pa.Column(TEXT, pa.Check.str_length(1, 32), description="Instrument"),
        "ts": pa.Column(UTC_TS, description="Trade time, UTC, microseconds"),
        "trade_id": pa.Column("int64", description="Venue trade id, unique per feed and day"),
        "price": pa.Column(float, POSITIVE, description="Trade price, > 0"),
        "size": pa.Column(float, pa.Check.ge(0), description="Traded quantity, >= 0"),
        "side": pa.Column(
            TEXT, pa.Check.isin(["buy", "sell", "unknown"]), description="Aggressor side"
        ),
    },
    "bars": {
        "symbol": pa.Column(TEXT, pa.Check.str_length(1, 32), description="Instrument"),
        "ts": pa.Column(UTC_TS, description="Bar open time, UTC"),
        "interval": pa.Column(TEXT, description="Bar length from the feed, e.g. 1d or 1m"),
        "open": pa.Column(float, POSITIVE, description="Open price"),
        "high": pa.Column(float, POSITIVE, description="High price"),
        "low": pa.Column(float, POSITIVE, description="Low price"),
        "close": pa.Column(float, POSITIVE, description="Close price"),
        "volume": pa.Column(float, pa.Check.ge(0), description="Traded volume, >= 0"),
        "adj_close": pa.Column(float, nullable=True, description="Split/dividend-adjusted close"),
    },
    "decisions": {
        "decision_id": pa.Column(
            TEXT, NOT_BLANK, description="Decision id, unique per feed and day"
        ),
        "agent_id": pa.Column(TEXT, NOT_BLANK, description="Trader or agent that decided"),
        "symbol": pa.Column(TEXT, pa.Check.str_length(1, 32), description="Instrument"),
        "ts": pa.Column(UTC_TS, description="When the decision was taken, UTC, microseconds"),
        "action": pa.Column(
            TEXT, pa.Check.isin(["buy", "sell", "hold"]), description="buy, sell or hold"
        ),
        "size": pa.Column(
            float,
            pa.Check.in_range(0, 1),
            description="Fraction of the position or budget, in [0, 1]; 0 for hold",
        ),
        "rationale": pa.Column(TEXT, nullable=True, description="Free-text rationale, optional"),
    },
    "feedback": {
        "episode_id": pa.Column(TEXT, NOT_BLANK, description="Episode whose step is rated"),
        "step_index": pa.Column(
            "int64", pa.Check.ge(1), description="Rated reasoning step, from 1"
        ),
        "rating": pa.Column(
            "int64",
            pa.Check.isin([-1, 0, 1]),
            description="Expert rating of the step: -1 bad, 0 neutral, +1 good",
        ),
        "rater_id": pa.Column(TEXT, NOT_BLANK, description="Expert who rated"),
        "ts": pa.Column(UTC_TS, description="When the rating was given, UTC, microseconds"),
        "comment": pa.Column(TEXT, nullable=True, description="Rater's comment, optional"),
    },
}
LINEAGE = {
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
UNIQUE_KEY = {
    "trades": ["feed", "symbol", "trade_id"],
    "bars": ["feed", "symbol", "ts"],
    "decisions": ["feed", "decision_id"],
    "feedback": ["feed", "episode_id", "step_index", "rater_id"],
}
# Checks across columns of a row, per kind.
ROW_CHECKS: dict[str, list[pa.Check]] = {
    "bars": [
        pa.Check(
            lambda df: (
                (df["high"] >= df[["open", "close"]].max(axis=1))
                & (df[["open", "close"]].min(axis=1) >= df["low"])
            ),
            name="high_low_envelope",
            error="high >= max(open, close) >= min(open, close) >= low",
        )
    ],
    "decisions": [
        pa.Check(
            lambda df: (df["action"] != "hold") | (df["size"] == 0),
            name="hold_has_zero_size",
            error="a hold decision has size 0",
        )
    ],
}


def _ts_on_partition_day(df: pd.DataFrame) -> pd.Series:
    # Parse each distinct day once, then compare whole days as numbers.
    codes, days = pd.factorize(df["partition_date"])
    day_of_partition = pd.to_datetime(days.astype(str)).values.astype("datetime64[D]")[codes]
    day_of_ts = df["ts"].dt.tz_convert(None).values.astype("datetime64[D]")
    return pd.Series(day_of_ts == day_of_partition, index=df.index)


def raw_schema(
    kind: str, feeds: dict[str, FeedSpec] | None = None, *, with_partition: bool = True
) -> pa.DataFrameSchema:
    """The contract of ``raw_<kind>``. ``with_partition`` adds the ``partition_date`` column
    (taken from each file's path when partitions are read together): timestamps must fall on
    it and rows are unique per partition."""
    checks = list(ROW_CHECKS.get(kind, []))
    known = {name: set(f.symbols) for name, f in (feeds or {}).items() if f.symbols}
    if known and "symbol" in COLUMNS[kind]:
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
    columns = {**COLUMNS[kind], **LINEAGE}
    unique = UNIQUE_KEY[kind]
    if with_partition:
        columns["partition_date"] = pa.Column(
            TEXT, pa.Check.str_matches(r"^\d{4}-\d{2}-\d{2}$"), description="Partition day"
        )
        checks.append(
            pa.Check(
                _ts_on_partition_day,
                name="timestamp_inside_partition",
                error="timestamp outside its partition",
            )
        )
        unique = ["partition_date", *unique]
    return pa.DataFrameSchema(
        columns,
        checks=checks,
        unique=unique,
        strict=True,
        ordered=True,
        name=f"raw_{kind}",
        description=f"Validated {kind}, one Parquet file per UTC day",
    )


def read_partition(path) -> pd.DataFrame:
    """A raw Parquet file as the DataFrame the schemas expect (Arrow-backed strings)."""
    return pq.read_table(path).to_pandas(types_mapper={pyarrow_.string(): TEXT}.get)


def _chunks(rows_by_day: dict[str, int], max_rows: int) -> Iterator[list[str]]:
    chunk, rows = [], 0
    for day in sorted(rows_by_day):
        if chunk and rows + rows_by_day[day] > max_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(day)
        rows += rows_by_day[day]
    if chunk:
        yield chunk


def validate_partitions(
    storage: Storage,
    feeds: dict[str, FeedSpec],
    kind: str,
    rows_by_day: dict[str, int],
    path_of_day,
    max_rows: int = 1_000_000,
) -> ContractResult:
    """Validate every written partition, reading days together in chunks of about ``max_rows``
    (thousands of tiny daily files validate as one frame; a huge day validates alone)."""
    schema = raw_schema(kind, feeds)
    result = ContractResult()
    con = new_connection()
    for days in _chunks({d: n for d, n in rows_by_day.items() if n}, max_rows):
        with contextlib.ExitStack() as stack:
            # Raw files sit at .../date=YYYY-MM-DD/data.parquet (local copies keep that shape),
            # so the partition day comes from the path through hive partitioning.
            files = [str(stack.enter_context(storage.local_copy(path_of_day(d)))) for d in days]
            table = con.execute(
                "SELECT * EXCLUDE (date), CAST(date AS VARCHAR) AS partition_date "
                "FROM read_parquet($files, hive_partitioning = true)",
                {"files": files},
            ).fetch_arrow_table()
        result.validate(schema, table.to_pandas(types_mapper={pyarrow_.string(): TEXT}.get))
    return result


def column_docs(kind: str) -> Sequence[tuple[str, str, str]]:
    """(name, dtype, description) of the raw table's columns, for docs and UI metadata."""
    schema = raw_schema(kind, with_partition=False)
    return [(n, str(c.dtype), c.description or "") for n, c in schema.columns.items()]
