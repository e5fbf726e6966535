"""Landing zone → validated raw daily partitions, with a quarantine that loses nothing.

Two steps, both plain Python over DuckDB (Dagster assets and the benchmark call them):

1. :func:`scan_landing` lists every landed file of the declared feeds, hashes it once and records
   which UTC days it touches (an index under ``state/landing_index/``, keyed by path, size and
   modification stamp, so a tick of the landing sensor re-reads nothing it has seen).
2. :func:`ingest_partitions` builds raw partitions for a range of days from every landed file
   that touches them. Each row gets a verdict from the rules below (the first failing rule is its
   quarantine reason). Accepted rows go to ``raw/<table>/date=D/data.parquet``; the rest, with
   reason, source file, content hash and line, to ``quarantine/<table>/date=D/data.parquet``.

Determinism: rows keep landing order (files by path, then line), which DuckDB preserves through
the scan, the staging table and the Parquet writer, so building a partition again from the same
landed files gives byte-identical Parquet (tested). No sort: it would cost more than the parse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from assets.core.calendar import HISTORY_START
from assets.core.feeds import (
    REQUIRED_COLUMNS,
    SYMBOL_PATTERN,
    FeedSpec,
    LandingNameError,
    check_landed_name,
    correction_of,
)
from assets.core.storage import Storage, file_sha256
from assets.ingestion.readers import CANONICAL, FileReadError, select_canonical, sql_literal

log = logging.getLogger(__name__)

TABLE_OF_KIND = {
    "trades": "raw_trades",
    "bars": "raw_bars",
    "decisions": "raw_decisions",
    "feedback": "raw_feedback",
}
INDEX_PREFIX = "state/landing_index"
# Part of each index key: entries of an older layout (without row counts) are rebuilt.
INDEX_VERSION = "2"
ROW_GROUP_ROWS = 1_000_000
# The UTC day of a TIMESTAMPTZ. CAST(ts AS DATE) goes through ICU time zones row by row (about
# 1.5 s per 5 million rows); through epoch microseconds it is plain integer arithmetic.
UTC_DATE = "CAST(make_timestamp(epoch_us(ts)) AS DATE)"
FIRST_DAY = f"DATE '{HISTORY_START}'"
LARGE_DAY_ROWS = 100_000

RAW_SCHEMAS: dict[str, pa.Schema] = {
    "trades": pa.schema(
        [
            ("symbol", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("trade_id", pa.int64()),
            ("price", pa.float64()),
            ("size", pa.float64()),
            ("side", pa.string()),
            ("feed", pa.string()),
            ("source_file", pa.string()),
            ("source_hash", pa.string()),
        ]
    ),
    "bars": pa.schema(
        [
            ("symbol", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("interval", pa.string()),
            ("open", pa.float64()),
            ("high", pa.float64()),
            ("low", pa.float64()),
            ("close", pa.float64()),
            ("volume", pa.float64()),
            ("adj_close", pa.float64()),
            ("feed", pa.string()),
            ("source_file", pa.string()),
            ("source_hash", pa.string()),
        ]
    ),
    "decisions": pa.schema(
        [
            ("decision_id", pa.string()),
            ("agent_id", pa.string()),
            ("symbol", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("action", pa.string()),
            ("size", pa.float64()),
            ("rationale", pa.string()),
            ("feed", pa.string()),
            ("source_file", pa.string()),
            ("source_hash", pa.string()),
        ]
    ),
    "feedback": pa.schema(
        [
            ("episode_id", pa.string()),
            ("step_index", pa.int64()),
            ("rating", pa.int64()),
            ("rater_id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("comment", pa.string()),
            ("feed", pa.string()),
            ("source_file", pa.string()),
            ("source_hash", pa.string()),
        ]
    ),
}
# Rows that repeat one of these keys within a feed and partition day are duplicates: the first
# in landing order is kept, the others are quarantined with the reason.
DUPLICATE_KEY: dict[str, tuple[tuple[str, ...], str]] = {
    "trades": (("symbol", "trade_id"), "duplicate trade_id"),
    "bars": (("symbol", "ts"), "duplicate bar"),
    "decisions": (("decision_id",), "duplicate decision_id"),
    "feedback": (("episode_id", "step_index", "rater_id"), "duplicate feedback"),
}
QUARANTINE_SCHEMA = pa.schema(
    [
        ("feed", pa.string()),
        ("source_file", pa.string()),
        ("source_hash", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
        ("record", pa.string()),
    ]
)
# Lineage columns are ENUMs over one run's files (see _create_staging).
LINEAGE_ENUMS = {
    "feed": "dd_feed",
    "source_file": "dd_source_file",
    "source_hash": "dd_source_hash",
}


def raw_path(kind: str, day: str) -> str:
    return f"raw/{kind}/date={day}/data.parquet"


def quarantine_path(kind: str, day: str) -> str:
    return f"quarantine/{kind}/date={day}/data.parquet"


def file_error_path(feed: str, sha256: str) -> str:
    return f"quarantine/_files/{feed}/{sha256}.json"


def refused_file_path(feed: str, filename: str) -> str:
    """The record of a readable file whose rows are not ingested (a duplicate, a superseded
    version): per name, as a duplicate shares its content hash with the file that is kept."""
    return f"quarantine/_files/{feed}/refused/{filename}.json"


# --------------------------------------------------------------------------------------------
# Landing index
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LandedFile:
    """A file in the landing zone, as the index knows it."""

    feed: str
    path: str
    sha256: str
    size: int
    modified: str
    dates: tuple[str, ...] = ()
    error: str | None = None
    # Rows per partition day as the index counted them when the file was first seen (rows
    # without a usable time and unreadable lines under the file's first day): the expected
    # side of the nothing-lost count-back, counted apart from the ingestion.
    rows_by_day: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    @property
    def rows(self) -> int:
        return sum(self.rows_by_day.values())

    @property
    def home_date(self) -> str | None:
        """Where rows without a usable timestamp, and file-level errors, are reported."""
        return self.dates[0] if self.dates else None

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def new_connection(
    memory_limit: str = "2GB", threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC with a memory cap: large partitions spill to disk instead of
    growing memory with the file size."""
    con = duckdb.connect(config={"memory_limit": memory_limit})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def _first_partition_day(day: str) -> str:
    """Rows before the first partition are filed (and quarantined) under the first day."""
    return max(day, HISTORY_START)


def _rows_by_day(
    con: duckdb.DuckDBPyConnection, feed: FeedSpec, local: Path, name: str
) -> dict[str, int]:
    """Rows of the file per partition day, as the ingestion will file them: by the UTC day of
    their time (the day the name declares, for daily files), days before the first partition
    on the first day; rows without a usable time and unreadable lines on the file's first day."""
    declared = feed.date_for_file(name)
    sql, uses_rejects = select_canonical(feed, local, name)
    con.execute("DROP TABLE IF EXISTS dd_rejects")
    con.execute("DROP TABLE IF EXISTS dd_reject_scans")
    try:
        rows = con.execute(
            f"SELECT CAST({UTC_DATE} AS VARCHAR) AS d, count(*) FROM ({sql}) GROUP BY d"
        ).fetchall()
        unreadable = (
            con.execute("SELECT count(DISTINCT line) FROM dd_rejects").fetchone()[0]
            if uses_rejects
            else 0
        )
    except duckdb.Error as exc:
        raise FileReadError(feed.name, name, f"unreadable: {exc}") from exc
    dated = {d: n for d, n in rows if d is not None}
    undated = sum(n for d, n in rows if d is None) + unreadable
    if declared:
        return {_first_partition_day(declared): sum(dated.values()) + undated}
    if not dated:
        # No day to file its rows under: without an error the file would never be ingested
        # nor reported.
        raise FileReadError(
            feed.name, name, "no row has a usable timestamp (check the feed's 'timestamp')"
        )
    counts: dict[str, int] = {}
    for day, n in sorted(dated.items()):
        counts[_first_partition_day(day)] = counts.get(_first_partition_day(day), 0) + n
    home = min(counts)
    counts[home] += undated
    return counts


def landed_name_problem(feed: FeedSpec, path: str) -> str | None:
    """Why a file found under ``landing/<feed>/`` cannot be indexed (None when it can): it is
    not a plain file name directly in the feed's folder."""
    try:
        check_landed_name(path.removeprefix(f"{feed.landing_prefix}/"))
    except LandingNameError as exc:
        return f"not indexed: {exc}"
    return None


def scan_landing(
    storage: Storage,
    feeds: dict[str, FeedSpec],
    con: duckdb.DuckDBPyConnection | None = None,
) -> list[LandedFile]:
    """Every landed file of every feed, hashed and dated (cached in the landing index).

    A file whose name is not a plain file name in its feed's folder (a subfolder, a backslash,
    a control character) is neither read nor hashed: it is listed with the error saying why, so
    that the sensor and every run of its table report it."""
    con = con or new_connection()
    landed: list[LandedFile] = []
    for feed in feeds.values():
        for info in storage.list_files(feed.landing_prefix):
            problem = landed_name_problem(feed, info.path)
            if problem:
                landed.append(
                    LandedFile(feed.name, info.path, "", info.size, info.modified, (), problem)
                )
                continue
            key = f"{info.path}|{info.size}|{info.modified}|{INDEX_VERSION}"
            stamp = hashlib.sha256(key.encode()).hexdigest()
            index_rel = f"{INDEX_PREFIX}/{feed.name}/{stamp[:32]}.json"
            if storage.exists(index_rel):
                entry = json.loads(storage.read_bytes(index_rel))
                landed.append(LandedFile(**{**entry, "dates": tuple(entry["dates"])}))
                continue
            sha = storage.sha256(info.path)
            filename = info.path.rsplit("/", 1)[-1]
            error, counts = None, {}
            try:
                with storage.local_copy(info.path) as local:
                    counts = _rows_by_day(con, feed, local, filename)
            except FileReadError as exc:
                error = exc.reason
                declared = feed.date_for_file(filename)
                counts = {_first_partition_day(declared): 0} if declared else {}
            entry = LandedFile(
                feed.name, info.path, sha, info.size, info.modified, tuple(counts), error, counts
            )
            storage.write_bytes(index_rel, json.dumps(asdict(entry)).encode())
            landed.append(entry)
    return landed


def refused_files(landed: Sequence[LandedFile]) -> dict[str, str]:
    """Readable landed files whose rows are not ingested, with the reason (recorded per file):

    * a version superseded by a correction: of ``x.csv``, ``x.correction-1.csv``, … only the
      highest version is read;
    * content landed before under another name (the same SHA-256 in the same feed): a vendor's
      re-delivery. The first in landing order (path) is read, the others are refused, so no
      row is counted twice."""
    refused: dict[str, str] = {}
    newest: dict[tuple[str, str], tuple[int, str]] = {}
    readable = sorted((f for f in landed if not f.error), key=lambda f: (f.feed, f.path))
    for f in readable:
        base, version = correction_of(f.filename)
        key = (f.feed, f.path.rsplit("/", 1)[0] + "/" + base)
        newest[key] = max(newest.get(key, (-1, "")), (version, f.path))
    for f in readable:
        base, _ = correction_of(f.filename)
        _, kept = newest[(f.feed, f.path.rsplit("/", 1)[0] + "/" + base)]
        if kept != f.path:
            refused[f.path] = f"superseded by the correction {kept}"
    first_of_content: dict[tuple[str, str], str] = {}
    for f in readable:
        if f.path in refused:
            continue
        first = first_of_content.setdefault((f.feed, f.sha256), f.path)
        if first != f.path:
            refused[f.path] = f"same content (SHA-256) as {first}, landed before it: not read twice"
    return refused


# --------------------------------------------------------------------------------------------
# Ingestion
# --------------------------------------------------------------------------------------------
@dataclass
class FileLedger:
    """What happened to one landed file's rows in one ingestion."""

    feed: str
    source_file: str
    source_hash: str
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    error: str | None = None
    refused: str | None = None
    # Rows per partition day of the whole file, from the landing index (not only this run's
    # window): what the nothing-lost check counts back.
    rows_by_day: dict[str, int] = field(default_factory=dict)
    modified: str = ""  # the landed file's modification stamp, as listed


@dataclass
class IngestReport:
    """The outcome of building raw partitions for a range of days."""

    kind: str
    days: list[str]
    rows_accepted: int = 0
    rows_quarantined: int = 0
    rows_by_day: dict[str, int] = field(default_factory=dict)
    quarantined_by_day: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    files: list[FileLedger] = field(default_factory=list)
    quarantine_sample: list[dict] = field(default_factory=list)
    data_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def file_errors(self) -> list[FileLedger]:
        return [f for f in self.files if f.error]

    @property
    def refused_files(self) -> list[FileLedger]:
        return [f for f in self.files if f.refused]

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)


def day_range(start: str, end: str) -> list[str]:
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    return [str(first + timedelta(days=i)) for i in range((last - first).days + 1)]


def _missing(kind: str) -> list[tuple[str, str]]:
    """One rule per required column (symbol and ts have their own): NULL, blank text or NaN."""
    rules = []
    for column, typ in REQUIRED_COLUMNS[kind].items():
        if column in ("symbol", "ts"):
            continue
        also = f"trim({column}) = ''" if typ == "VARCHAR" else f"isnan({column})"
        rules.append((f"{column} IS NULL OR {also}", f"'required value missing: {column}'"))
    return rules


_OHLC = ("open", "high", "low", "close")
# Rules of each kind, after the symbol and timestamp rules every kind shares.
KIND_RULES: dict[str, list[tuple[str, str]]] = {
    "trades": [
        ("price IS NULL OR isnan(price)", "'price missing or NaN'"),
        ("price <= 0 OR NOT isfinite(price)", "'price not positive and finite'"),
        (
            "size IS NULL OR isnan(size) OR size < 0 OR NOT isfinite(size)",
            "'size negative or missing'",
        ),
        ("trade_id IS NULL", "'trade_id missing'"),
    ],
    "bars": [
        (" OR ".join(f"{c} IS NULL OR isnan({c})" for c in _OHLC), "'price missing or NaN'"),
        (
            " OR ".join(f"{c} <= 0 OR NOT isfinite({c})" for c in _OHLC),
            "'price not positive and finite'",
        ),
        (
            "volume IS NULL OR isnan(volume) OR volume < 0 OR NOT isfinite(volume)",
            "'volume negative or missing'",
        ),
        (
            "high < greatest(open, close) OR least(open, close) < low",
            "'high/low inconsistent with open/close'",
        ),
    ],
    "decisions": [
        *_missing("decisions"),
        ("action NOT IN ('buy', 'sell', 'hold')", "'action not buy, sell or hold'"),
        ("NOT isfinite(size) OR size < 0 OR size > 1", "'size not finite or outside [0, 1]'"),
        ("action = 'hold' AND size <> 0", "'hold with non-zero size'"),
    ],
    "feedback": [
        *_missing("feedback"),
        (
            # Whole and below 2**53 (exact as a DOUBLE, and fits the int64 it is written as).
            "NOT isfinite(step_index) OR step_index < 1 OR step_index >= 9007199254740992 "
            "OR step_index <> floor(step_index)",
            "'step_index not a whole number >= 1'",
        ),
        ("rating NOT IN (-1, 0, 1)", "'rating not -1, 0 or 1'"),
    ],
}


def _symbol_rules(kind: str, feed: FeedSpec, constant_symbol: str | None) -> list[tuple[str, str]]:
    """For a file whose symbol is a constant (from the feed or the file name) the symbol rules
    are decided once here instead of on every row. Kinds without a symbol have none."""
    if "symbol" not in REQUIRED_COLUMNS[kind]:
        return []
    if feed.source_column("symbol") is None:
        if constant_symbol is None or not SYMBOL_PATTERN.match(constant_symbol):
            return [("true", "'symbol missing or malformed'")]
        if feed.symbols and constant_symbol not in feed.symbols:
            return [("true", "'unknown symbol'")]
        return []
    rules = [
        (
            "symbol IS NULL OR NOT regexp_matches(symbol, '^[A-Za-z0-9._:/-]{1,32}$')",
            "'symbol missing or malformed'",
        )
    ]
    if feed.symbols:
        known = ", ".join(sql_literal(s) for s in feed.symbols)
        rules.append((f"symbol NOT IN ({known})", "'unknown symbol'"))
    return rules


def _rules(kind: str, feed: FeedSpec, constant_symbol: str | None) -> list[tuple[str, str]]:
    """(condition, reason) pairs; a row's quarantine reason is the first condition that holds."""
    return [
        *_symbol_rules(kind, feed, constant_symbol),
        ("ts IS NULL", "'timestamp missing or unparseable'"),
        (f"{UTC_DATE} < {FIRST_DAY}", "'before the first partition'"),
        (f"{UTC_DATE} <> partition_date", "'timestamp outside partition'"),
        *KIND_RULES[kind],
    ]


def _create_staging(con: duckdb.DuckDBPyConnection, kind: str, files: Sequence[LandedFile]) -> None:
    """The staging table. Lineage columns are ENUMs over this run's files: a constant per file
    costs a byte or two a row, where 5 million copies of a 64-character hash would cost more than
    the parsing. DuckDB writes them to Parquet as plain dictionary-encoded strings."""
    con.execute("DROP TABLE IF EXISTS staged")
    values = {
        "feed": [f.feed for f in files],
        "source_file": [f.path for f in files],
        "source_hash": [f.sha256 for f in files],
    }
    for column, type_name in LINEAGE_ENUMS.items():
        distinct = sorted(set(values[column])) or [""]
        con.execute(f"DROP TYPE IF EXISTS {type_name}")
        con.execute(f"CREATE TYPE {type_name} AS ENUM ({', '.join(map(sql_literal, distinct))})")
    cols = ", ".join(f"{name} {typ}" for name, typ in CANONICAL[kind].items())
    lineage = ", ".join(f"{c} {t}" for c, t in LINEAGE_ENUMS.items())
    con.execute(
        f"CREATE TEMP TABLE staged ({cols}, partition_date DATE, {lineage}, "
        "line BIGINT, raw_line VARCHAR, reason VARCHAR)"
    )


def _lineage_literals(feed: FeedSpec, landed: LandedFile) -> str:
    pairs = (("feed", feed.name), ("source_file", landed.path), ("source_hash", landed.sha256))
    return ", ".join(f"{sql_literal(v)}::{LINEAGE_ENUMS[c]}" for c, v in pairs)


def _stage_file(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    feed: FeedSpec,
    landed: LandedFile,
    local: Path,
    first: str,
    last: str,
) -> None:
    """Insert one file's rows of days [first, last] into ``staged`` with their verdicts."""
    sql, uses_rejects = select_canonical(feed, local, landed.filename)
    declared = feed.date_for_file(landed.filename)
    partition = (
        f"DATE {sql_literal(declared)}"
        if declared
        else f"coalesce({UTC_DATE}, DATE {sql_literal(landed.home_date or first)})"
    )
    # Rows before the first partition are filed under its first day (and quarantined there).
    partition = f"greatest({partition}, {FIRST_DAY})"
    lineage = _lineage_literals(feed, landed)
    reason = _reason_case(kind, feed, feed.symbol_for_file(landed.filename))
    # DuckDB appends to a rejects table across scans: start empty so that only this file's
    # rejected lines are read back below.
    con.execute("DROP TABLE IF EXISTS dd_rejects")
    con.execute("DROP TABLE IF EXISTS dd_reject_scans")
    con.execute(
        f"""
        INSERT INTO staged
        SELECT {", ".join(CANONICAL[kind])}, partition_date, {lineage}, NULL, NULL, {reason}
        FROM (SELECT *, {partition} AS partition_date FROM ({sql}))
        WHERE partition_date BETWEEN DATE {sql_literal(first)} AND DATE {sql_literal(last)}
        """
    )
    if not uses_rejects:
        return
    # Lines the CSV reader could not turn into typed rows: one quarantine row per line.
    home = _first_partition_day(declared or landed.home_date or first)
    if first <= home <= last:
        con.execute(
            f"""
            INSERT INTO staged (partition_date, feed, source_file, source_hash, line, raw_line,
                                reason)
            SELECT DATE {sql_literal(home)}, {lineage}, line, any_value(csv_line),
                   -- A short line has one reject per missing column: report the first.
                   'unreadable line: ' || arg_min(error_message, coalesce(column_idx, 0))
            FROM dd_rejects GROUP BY line ORDER BY line
            """
        )


def _reason_case(kind: str, feed: FeedSpec, constant_symbol: str | None) -> str:
    whens = " ".join(f"WHEN {cond} THEN {why}" for cond, why in _rules(kind, feed, constant_symbol))
    return f"CASE {whens} END"


def _mark_duplicates(con: duckdb.DuckDBPyConnection, kind: str) -> None:
    """Quarantine all but the first of rows that repeat their kind's key (a trade id, a bar, a
    decision id, a rating of a step by a rater) within a feed and partition day. 'First' is
    landing order (file path, then line), so a replayed file loses to the original. The
    repeated keys are found with one hash aggregate; usually there are none."""
    columns, why = DUPLICATE_KEY[kind]
    key = ", ".join(("feed", "partition_date", *columns))
    reason = sql_literal(why)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE repeated AS SELECT {key} FROM staged "
        "WHERE reason IS NULL GROUP BY ALL HAVING count(*) > 1"
    )
    if con.execute("SELECT count(*) FROM repeated").fetchone()[0]:
        con.execute(
            f"""
            UPDATE staged SET reason = {reason}
            FROM (
                SELECT rid FROM (
                    SELECT s.rowid AS rid,
                           row_number() OVER (PARTITION BY {key} ORDER BY s.rowid) AS n
                    FROM staged AS s SEMI JOIN repeated USING ({key})
                    WHERE s.reason IS NULL
                ) WHERE n > 1
            ) AS dups
            WHERE staged.rowid = dups.rid
            """
        )
    con.execute("DROP TABLE repeated")


def _raw_columns(kind: str, feeds: dict[str, FeedSpec]) -> str:
    """The raw table's columns as SQL over ``staged``: bars take their interval from the feed;
    whole numbers staged as DOUBLE (checked exactly by the rules) are written as int64."""
    cases = " ".join(
        f"WHEN {sql_literal(f.name)} THEN {sql_literal(f.interval)}" for f in feeds.values()
    )

    def column(name: str, typ: pa.DataType) -> str:
        if name == "interval":
            return f"CASE CAST(feed AS VARCHAR) {cases} END AS interval"
        if pa.types.is_integer(typ) and CANONICAL[kind].get(name) == "DOUBLE":
            return f"CAST({name} AS BIGINT) AS {name}"
        return name

    return ", ".join(column(f.name, f.type) for f in RAW_SCHEMAS[kind])


def _record_sql(kind: str) -> str:
    """The quarantined row as text: the raw line when it never parsed, else its values as JSON."""
    fields = ", ".join(CANONICAL[kind])
    return f"coalesce(raw_line, CAST(to_json(struct_pack({fields})) AS VARCHAR))"


def _copy_days(
    con: duckdb.DuckDBPyConnection,
    storage: Storage,
    select: str,
    where: str,
    rows_by_day: dict[str, int],
    path_of_day: Callable[[str], str],
) -> dict[str, str]:
    """Write one Parquet file per day (rows in landing order) and commit each atomically; a day
    without rows gets an empty file with the schema. Returns each file's content hash.

    Large days get a COPY each: DuckDB's plain writer is parallel and keeps insertion order.
    All small days go through one partitioned COPY on a single thread: per-day statements cost
    milliseconds each (most of a 13-year daily backfill), and the partitioned writer keeps row
    order, hence identical bytes, only when it runs on one thread."""
    hashes = {}
    options = f"FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_ROWS}"
    large = [d for d, n in rows_by_day.items() if n >= LARGE_DAY_ROWS]
    with storage.staging_dir() as staging:
        written: dict[str, Path] = {}
        for day in large:
            written[day] = staging / f"{day}.parquet"
            con.execute(
                f"COPY (SELECT {select} FROM staged WHERE {where} AND partition_date = "
                f"DATE {sql_literal(day)}) TO {sql_literal(str(written[day]))} ({options})"
            )
        small = [d for d, n in rows_by_day.items() if 0 < n < LARGE_DAY_ROWS]
        if small:
            out = staging / "small"
            threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
            con.execute("SET threads = 1")
            try:
                con.execute(
                    f"COPY (SELECT partition_date, {select} FROM staged WHERE {where} AND "
                    f"partition_date IN ({', '.join(f'DATE {sql_literal(d)}' for d in small)})) "
                    f"TO {sql_literal(str(out))} ({options}, PARTITION_BY (partition_date), "
                    "FILENAME_PATTERN 'data')"
                )
            finally:
                con.execute(f"SET threads = {int(threads)}")
            for day in small:
                (written[day],) = (out / f"partition_date={day}").glob("*.parquet")
        empty = staging / "empty.parquet"
        for day in sorted(rows_by_day):
            if day not in written:
                if not empty.exists():
                    con.execute(
                        f"COPY (SELECT {select} FROM staged WHERE false) "
                        f"TO {sql_literal(str(empty))} (FORMAT parquet)"
                    )
                written[day] = staging / f"{day}.parquet"
                shutil.copyfile(empty, written[day])
            hashes[day] = file_sha256(written[day])
            storage.commit_file(written[day], path_of_day(day))
    return hashes


def _files_for_days(
    landed: Sequence[LandedFile], feeds: dict[str, FeedSpec], kind: str, first: str, last: str
) -> list[LandedFile]:
    """Landed files of this kind's feeds touching [first, last], in landing order (feed, path).
    Unreadable files without a known day are listed too, so every run reports them."""
    return sorted(
        (
            f
            for f in landed
            if f.feed in feeds
            and feeds[f.feed].kind == kind
            and (any(first <= d <= last for d in f.dates) or (not f.dates and f.error))
        ),
        key=lambda f: (f.feed, f.path),
    )


def ingest_partitions(
    storage: Storage,
    feeds: dict[str, FeedSpec],
    kind: str,
    days: Sequence[str],
    landed: Sequence[LandedFile] | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    sample_size: int = 20,
) -> IngestReport:
    """Build ``raw/<kind>/date=D`` and its quarantine for every day D in ``days``."""
    if kind not in TABLE_OF_KIND:
        raise ValueError(f"no raw table for kind {kind!r}")
    days = sorted(days)
    first, last = days[0], days[-1]
    con = con or new_connection()
    # Scratch folders of killed runs (their processes are gone) would otherwise pile up.
    for leftover in storage.clean_stale_staging():
        log.info("removed the staging folder of a process that is gone: %s", leftover)
    if landed is None:
        landed = scan_landing(storage, feeds, con)
    refused = refused_files(landed)
    files = _files_for_days(landed, feeds, kind, first, last)
    report = IngestReport(kind=kind, days=list(days))
    _create_staging(con, kind, files)

    for landed_file in files:
        ledger = FileLedger(
            landed_file.feed,
            landed_file.path,
            landed_file.sha256,
            rows_by_day=dict(landed_file.rows_by_day),
            modified=landed_file.modified,
        )
        report.files.append(ledger)
        ledger.error = landed_file.error
        ledger.refused = refused.get(landed_file.path)
        if ledger.refused:
            payload = {
                "feed": ledger.feed,
                "source_file": ledger.source_file,
                "source_hash": ledger.source_hash,
                "rows": landed_file.rows,
                "refused": ledger.refused,
            }
            storage.write_bytes(
                refused_file_path(ledger.feed, landed_file.filename), json.dumps(payload).encode()
            )
            log.info(
                "feed %r, file %r not read: %s", ledger.feed, ledger.source_file, ledger.refused
            )
        if ledger.error or ledger.refused:
            continue
        try:
            with storage.local_copy(landed_file.path) as local:
                _stage_file(con, kind, feeds[landed_file.feed], landed_file, local, first, last)
        except (FileReadError, duckdb.Error) as exc:
            ledger.error = exc.reason if isinstance(exc, FileReadError) else f"unreadable: {exc}"
            # A file is ingested whole or not at all.
            con.execute(f"DELETE FROM staged WHERE source_file = {sql_literal(landed_file.path)}")
    for ledger in report.file_errors:
        if not ledger.source_hash:
            continue  # not indexed (a name that is no plain file name): reported, never read
        payload = {k: getattr(ledger, k) for k in ("feed", "source_file", "source_hash", "error")}
        storage.write_bytes(
            file_error_path(ledger.feed, ledger.source_hash), json.dumps(payload).encode()
        )
        log.warning(
            "feed %r, file %r not ingested: %s", ledger.feed, ledger.source_file, ledger.error
        )

    _mark_duplicates(con, kind)

    for day, ok, bad in con.execute(
        # Group on the column, cast after: grouping on the cast text is ~10x slower.
        "SELECT CAST(partition_date AS VARCHAR), ok, bad FROM (SELECT partition_date, "
        "count(*) FILTER (reason IS NULL) AS ok, count(*) FILTER (reason IS NOT NULL) AS bad "
        "FROM staged GROUP BY partition_date) ORDER BY 1"
    ).fetchall():
        report.rows_by_day[day] = ok
        if bad:
            report.quarantined_by_day[day] = bad
    report.rows_by_day = {d: report.rows_by_day.get(d, 0) for d in days}
    report.data_hashes = _copy_days(
        con,
        storage,
        _raw_columns(kind, feeds),
        "reason IS NULL",
        report.rows_by_day,
        lambda d: raw_path(kind, d),
    )
    record = _record_sql(kind)
    _copy_days(
        con,
        storage,
        f"feed, source_file, source_hash, line, reason, {record} AS record",
        "reason IS NOT NULL",
        report.quarantined_by_day,
        lambda d: quarantine_path(kind, d),
    )
    # A day that has no quarantined rows any more must not keep an old quarantine file.
    for info in storage.list_files(f"quarantine/{kind}"):
        day = info.path.split("date=", 1)[-1].split("/", 1)[0]
        if first <= day <= last and day not in report.quarantined_by_day:
            storage.delete(info.path)

    report.rows_accepted = sum(report.rows_by_day.values())
    report.rows_quarantined = sum(report.quarantined_by_day.values())
    report.reasons = dict(
        con.execute(
            "SELECT split_part(reason, ':', 1) AS r, count(*) FROM staged "
            "WHERE reason IS NOT NULL GROUP BY r ORDER BY r"
        ).fetchall()
    )
    counts = {
        path: (n, ok)
        for path, n, ok in con.execute(
            "SELECT CAST(source_file AS VARCHAR), n, ok FROM (SELECT source_file, count(*) AS n, "
            "count(*) FILTER (reason IS NULL) AS ok FROM staged GROUP BY source_file)"
        ).fetchall()
    }
    for ledger in report.files:
        n, ok = counts.get(ledger.source_file, (0, 0))
        ledger.rows_read, ledger.accepted, ledger.quarantined = n, ok, n - ok
    report.quarantine_sample = [
        dict(zip(("source_file", "line", "reason", "record"), row, strict=True))
        for row in con.execute(
            f"SELECT CAST(source_file AS VARCHAR), line, reason, {record} FROM staged "
            f"WHERE reason IS NOT NULL LIMIT {int(sample_size)}"
        ).fetchall()
    ]
    con.execute("DROP TABLE staged")
    return report


# --------------------------------------------------------------------------------------------
# Nothing lost: every row of every file a run read, accounted for
# --------------------------------------------------------------------------------------------
@dataclass
class FileAccount:
    """Where the rows of one landed file are, counted back from the written Parquet."""

    source_file: str
    rows: int  # rows in the whole file (landing index)
    found: int = 0  # rows of this file (path and hash) in raw/ and quarantine/
    refused: str | None = None  # not read at all, with a file-level record
    # Days not built since the file landed (their own run, requested by the sensor, builds
    # them): no partition file yet, or one older than the landed file.
    pending_days: list[str] = field(default_factory=list)
    missing: dict[str, tuple[int, int]] = field(default_factory=dict)  # day: (rows, found)


def account_for_files(storage: Storage, report: IngestReport) -> list[FileAccount]:
    """For every file the run read or refused, over the whole file (not only the run's window):
    rows accepted + rows quarantined, counted back from the Parquet files on storage per day,
    must equal the file's rows of that day in the landing index. A refused file (unreadable,
    a duplicate, a superseded version) has a file-level record and no row anywhere.

    Days outside the run's window with no row of the file and no partition file written since
    the file landed are *pending* (their own run, requested by the landing sensor, builds
    them); any other difference (a day built after the file landed without its rows, some but
    not all of them, rows on a day the file does not touch) is a loss."""
    window = set(report.days)
    needed = {d for f in report.files for d in f.rows_by_day} | window
    built: dict[str, list[str]] = {}
    raw_written: dict[str, str] = {}
    for table in ("raw", "quarantine"):
        for info in storage.list_files(f"{table}/{report.kind}"):
            day = info.path.split("date=", 1)[-1].split("/", 1)[0]
            if day in needed and info.path.endswith("/data.parquet"):
                built.setdefault(day, []).append(info.path)
                if table == "raw":
                    raw_written[day] = info.modified
    found: dict[tuple[str, str], dict[str, int]] = {}
    paths = [p for day in sorted(built) for p in built[day]]
    if paths:
        with contextlib.ExitStack() as stack:
            local = [str(stack.enter_context(storage.local_copy(p))) for p in paths]
            rows = (
                new_connection()
                .execute(
                    "SELECT CAST(source_file AS VARCHAR), CAST(source_hash AS VARCHAR), "
                    "CAST(date AS VARCHAR), count(*) FROM read_parquet($files, "
                    "hive_partitioning = true, union_by_name = true) GROUP BY ALL",
                    {"files": local},
                )
                .fetchall()
            )
        for source_file, source_hash, day, n in rows:
            found.setdefault((source_file, source_hash), {})[day] = n
    accounts = []
    for ledger in report.files:
        if not ledger.source_hash:
            continue  # not indexed: reported by the readable-files check, never read
        by_day = found.get((ledger.source_file, ledger.source_hash), {})
        account = FileAccount(
            ledger.source_file,
            sum(ledger.rows_by_day.values()),
            sum(by_day.values()),
            ledger.refused or ledger.error,
        )
        if account.refused:
            account.missing = {d: (0, n) for d, n in by_day.items()}
        else:
            for day in sorted(set(ledger.rows_by_day) | set(by_day)):
                expected, got = ledger.rows_by_day.get(day, 0), by_day.get(day, 0)
                if got == expected:
                    continue
                written = raw_written.get(day)
                if day not in window and got == 0 and (not written or written < ledger.modified):
                    account.pending_days.append(day)
                else:
                    account.missing[day] = (expected, got)
        accounts.append(account)
    return accounts
