"""Feed readers: turn one landed file of any declared format into canonical typed rows in DuckDB.

Everything is SQL over DuckDB's CSV/Parquet readers, so a 5-million-row file is parsed in
parallel and never passes through Python objects. Lines that cannot be parsed at all (wrong
number of fields, a value that is not a number) are *not* dropped: DuckDB's ``store_rejects``
keeps them with their line number and text, and they become quarantine rows.

A file that cannot be read at all (empty, not UTF-8, truncated archive, missing columns, wrong
delimiter) raises :class:`FileReadError` naming the file and the feed.
"""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from pathlib import Path

import duckdb

from assets.core.feeds import (
    BINANCE_TRADE_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    FeedSpec,
)

# Columns of the canonical staging rows, per kind, with their DuckDB types.
CANONICAL: dict[str, dict[str, str]] = {
    "trades": {
        "symbol": "VARCHAR",
        "ts": "TIMESTAMPTZ",
        "trade_id": "BIGINT",
        "price": "DOUBLE",
        "size": "DOUBLE",
        "side": "VARCHAR",
    },
    "bars": {
        "symbol": "VARCHAR",
        "ts": "TIMESTAMPTZ",
        "open": "DOUBLE",
        "high": "DOUBLE",
        "low": "DOUBLE",
        "close": "DOUBLE",
        "volume": "DOUBLE",
        "adj_close": "DOUBLE",
    },
    "decisions": {
        "decision_id": "VARCHAR",
        "agent_id": "VARCHAR",
        "symbol": "VARCHAR",
        "ts": "TIMESTAMPTZ",
        "action": "VARCHAR",
        "size": "DOUBLE",
        "rationale": "VARCHAR",
    },
    "feedback": {
        "episode_id": "VARCHAR",
        "step_index": "DOUBLE",
        "rating": "DOUBLE",
        "rater_id": "VARCHAR",
        "ts": "TIMESTAMPTZ",
        "comment": "VARCHAR",
    },
}
# Canonical columns normalised on read (``{}`` is the file's column); others are TRY_CAST to
# their canonical type. An action read as " BUY " is "buy"; a blank one is missing (NULL).
NORMALISE: dict[str, str] = {
    "action": "nullif(lower(trim(CAST({} AS VARCHAR))), '')",
}


class FileReadError(Exception):
    """A landed file that cannot be read at all. The message names feed and file."""

    def __init__(self, feed: str, path: str, reason: str) -> None:
        super().__init__(f"feed {feed!r}, file {path!r}: {reason}")
        self.feed, self.path, self.reason = feed, path, reason


def sql_literal(value: str | None) -> str:
    if value is None:
        return "NULL"
    return "'" + str(value).replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(local: Path) -> str:
    """The first line of a (possibly gzip- or zip-compressed) text file, strictly UTF-8."""
    name = local.name.lower()
    if name.endswith(".zip"):
        raise ValueError("zip archives are not read directly; land the CSV inside")
    if name.endswith(".gz"):
        # DuckDB reads a truncated gzip stream up to the cut without an error, so the archive
        # is checked to its end here (CRC and length trailer included).
        try:
            with gzip.open(local, "rb") as raw:
                head = raw.read(64 * 1024)
                while raw.read(16 * 1024 * 1024):
                    pass
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"truncated or corrupt gzip archive: {exc}") from exc
    else:
        with open(local, "rb") as raw:
            head = raw.read(64 * 1024)
    if not head:
        raise ValueError("empty file")
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _split_header(line: str, delimiter: str) -> list[str]:
    import csv

    return next(csv.reader(io.StringIO(line), delimiter=delimiter), [""])


def timestamp_expr(feed: FeedSpec, col: str) -> str:
    """SQL turning the raw timestamp column (read as text) into TIMESTAMPTZ (UTC); NULL when it
    cannot be parsed, so the row is quarantined with a reason rather than the file failing."""
    ts = feed.timestamp
    if ts.unit:
        num = f"TRY_CAST({col} AS DOUBLE)"
        if ts.unit == "auto":
            # Epoch units by magnitude: Binance spot moved from ms to us in 2025.
            micros = (
                f"CASE WHEN abs({num}) >= 1e17 THEN {num} / 1000 "
                f"WHEN abs({num}) >= 1e14 THEN {num} "
                f"WHEN abs({num}) >= 1e11 THEN {num} * 1000 ELSE {num} * 1000000 END"
            )
        else:
            factor = {"s": "* 1000000", "ms": "* 1000", "us": "", "ns": "/ 1000"}[ts.unit]
            micros = f"({num} {factor})"
        # TRY_CAST: an epoch beyond BIGINT microseconds is one bad row, not a failed file.
        return f"CASE WHEN isfinite({num}) THEN make_timestamptz(TRY_CAST({micros} AS BIGINT)) END"
    tz = sql_literal(ts.timezone)
    if ts.format:
        parsed = f"try_strptime({col}, {sql_literal(ts.format)})"
        if "%z" in ts.format or "%Z" in ts.format:
            # The text carries its own offset: already TIMESTAMPTZ, the feed's zone is not used.
            return parsed
        return f"timezone({tz}, {parsed})"
    # An offset is "Z", "+hh:mm", "+hhmm", or "+hh" right after a time (Parquet's
    # TIMESTAMPTZ rendered as text ends in "+00"); a bare date "2024-01-02" has none.
    offset = "(Z|[+-][0-9][0-9]:?[0-9][0-9]|[0-9]:[0-9][0-9](\\.[0-9]*)?[+-][0-9][0-9])$"
    return (
        f"CASE WHEN regexp_matches({col}, '{offset}') "
        f"THEN TRY_CAST({col} AS TIMESTAMPTZ) ELSE timezone({tz}, TRY_CAST({col} AS TIMESTAMP)) END"
    )


def _side_expr(feed: FeedSpec, cols: dict[str, str | None]) -> str:
    if cols.get("side"):
        return (
            f"CASE lower(CAST({cols['side']} AS VARCHAR)) WHEN 'buy' THEN 'buy' WHEN 'b' THEN 'buy' "
            f"WHEN 'sell' THEN 'sell' WHEN 's' THEN 'sell' ELSE 'unknown' END"
        )
    if cols.get("is_buyer_maker"):
        # The buyer was the resting order, so the aggressor (taker) sold.
        return (
            f"CASE TRY_CAST({cols['is_buyer_maker']} AS BOOLEAN) WHEN true THEN 'sell' "
            f"WHEN false THEN 'buy' ELSE 'unknown' END"
        )
    return "'unknown'"


def select_canonical(feed: FeedSpec, local: Path, filename: str) -> tuple[str, bool]:
    """SQL selecting canonical rows from one local file, and whether it records CSV rejects.

    Raises FileReadError for problems visible before the scan (empty, not UTF-8, missing
    columns, wrong delimiter)."""
    kind = feed.kind
    if kind not in CANONICAL:
        raise FileReadError(feed.name, filename, f"kind {kind!r} has no raw table yet")
    path = sql_literal(str(local))
    wanted = {**REQUIRED_COLUMNS[kind], **OPTIONAL_COLUMNS[kind]}
    if local.stat().st_size == 0:
        raise FileReadError(feed.name, filename, "empty file (0 bytes)")

    uses_rejects = feed.format != "parquet"
    if feed.format == "parquet":
        try:
            schema = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet({path})").fetchall()
        except duckdb.Error as exc:
            raise FileReadError(feed.name, filename, f"not a readable Parquet file: {exc}") from exc
        present = [row[0] for row in schema]
        source = f"read_parquet({path})"
    else:
        try:
            first = _first_line(local)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise FileReadError(feed.name, filename, str(exc)) from exc
        if feed.format == "binance-trades":
            # Older dumps have no header; newer ones start with "id,price,…". Decided by the
            # first field's name: a malformed first data line must be quarantined, not skipped.
            header = _split_header(first, ",")[0].strip().lower() == "id"
            present = list(BINANCE_TRADE_COLUMNS)
            types = dict(BINANCE_TRADE_COLUMNS)
            types["time"] = "VARCHAR"
            delim = ","
        else:
            header = feed.header
            delim = feed.delimiter
            present = _split_header(first, delim) if header else list(feed.columns.values())
            mapped_types = {
                feed.columns[c]: ("VARCHAR" if c == "ts" else t)
                for c, t in wanted.items()
                if c in feed.columns
            }
            types = {name: mapped_types.get(name, "VARCHAR") for name in present}
        columns = (
            "{" + ", ".join(f"{sql_literal(n)}: {sql_literal(t)}" for n, t in types.items()) + "}"
        )
        source = (
            f"read_csv({path}, auto_detect=false, header={str(header).lower()}, "
            f"delim={sql_literal(delim)}, quote='\"', escape='\"', columns={columns}, "
            f"store_rejects=true, rejects_table='dd_rejects', rejects_scan='dd_reject_scans')"
        )

    cols: dict[str, str | None] = {}
    missing = []
    for canonical in wanted:
        source_col = feed.source_column(canonical)
        if canonical == "symbol" and source_col is None:
            cols[canonical] = None
            continue
        if source_col is not None and source_col not in present:
            if canonical in REQUIRED_COLUMNS[kind]:
                missing.append(source_col)
            source_col = None
        cols[canonical] = quote_ident(source_col) if source_col else None
    if missing:
        hint = ""
        if feed.format == "csv" and len(present) == 1:
            hint = f"; the header has one field: is the delimiter {feed.delimiter!r} right?"
        raise FileReadError(
            feed.name, filename, f"missing columns {missing}; found {present[:12]}{hint}"
        )

    exprs = {"ts": timestamp_expr(feed, f"CAST({cols['ts']} AS VARCHAR)")}
    if "symbol" in CANONICAL[kind]:
        symbol = cols["symbol"] or sql_literal(feed.symbol_for_file(filename))
        exprs["symbol"] = f"CAST({symbol} AS VARCHAR)"
    for canonical, typ in CANONICAL[kind].items():
        if canonical in exprs:
            continue
        if canonical == "side":
            exprs["side"] = _side_expr(feed, cols)
        elif cols.get(canonical) and canonical in NORMALISE:
            exprs[canonical] = NORMALISE[canonical].format(cols[canonical])
        elif cols.get(canonical):
            exprs[canonical] = f"TRY_CAST({cols[canonical]} AS {typ})"
        else:
            exprs[canonical] = f"CAST(NULL AS {typ})"
    # In the canonical order (the staging table's).
    select = ", ".join(f"{exprs[name]} AS {name}" for name in CANONICAL[kind])
    return f"SELECT {select} FROM {source}", uses_rejects
