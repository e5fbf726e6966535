"""Builders for the ingestion tests: small feeds, landed files and a bad-input corpus.

Every corpus line carries its expected verdict next to its text, so the tests compare what the
ingestion wrote against expectations written down here, not against the code under test. Rows
are identified independently of the ingestion: a rejected (unparseable) line by its line number
in the file, any other row by a value unique within its file (the trade's size, the bar's
volume).
"""

from __future__ import annotations

import gzip
import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from assets.core.feeds import FeedSpec, parse_feed
from assets.core.storage import Storage
from assets.ingestion.ingest import ingest_partitions, new_connection, raw_path, scan_landing
from assets.ingestion.raw_contracts import raw_schema, read_partition, validate_partitions

DAY = "2024-01-02"
DAY_START = datetime(2024, 1, 2, tzinfo=UTC)
DAY_MS = int(DAY_START.timestamp() * 1000)  # 2024-01-02T00:00:00Z in epoch milliseconds
BINANCE_HEADER = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"

# Reasons, spelled out (not imported) so that a changed wording fails the tests.
NEG = "price not positive and finite"
NAN = "price missing or NaN"
OUTSIDE = "timestamp outside partition"
NO_TS = "timestamp missing or unparseable"
DUP_TRADE = "duplicate trade_id"
DUP_BAR = "duplicate bar"
SIZE = "size negative or missing"
VOLUME = "volume negative or missing"
HIGH_LOW = "high/low inconsistent with open/close"
UNKNOWN = "unknown symbol"
NO_SYMBOL = "symbol missing or malformed"
TOO_MANY_7 = "unreadable line: Expected Number of Columns: 7 Found: 8"
TOO_FEW_7 = "unreadable line: Expected Number of Columns: 7 Found: 3"


def cast_error(column: str, value: str) -> str:
    return (
        f'unreadable line: Error when converting column "{column}". '
        f"Could not convert string \"{value}\" to 'DOUBLE'"
    )


def cast_error_bigint(column: str, value: str) -> str:
    return (
        f'unreadable line: Error when converting column "{column}". '
        f"Could not convert string \"{value}\" to 'BIGINT'"
    )


def binance_feed(name: str = "bin") -> FeedSpec:
    return parse_feed(
        {
            "name": name,
            "kind": "trades",
            "format": "binance-trades",
            "symbol_from_filename": r"^(?P<symbol>[A-Z0-9]+)-trades-",
            "file_date_pattern": r"(?P<date>\d{4}-\d{2}-\d{2})",
        }
    )


def bars_feed(name: str = "bars") -> FeedSpec:
    return parse_feed(
        {
            "name": name,
            "kind": "bars",
            "format": "csv",
            "symbols": ["AAA", "BBB"],
            "interval": "1d",
            "columns": {
                "symbol": "Sym",
                "ts": "Date",
                "open": "O",
                "high": "H",
                "low": "L",
                "close": "C",
                "volume": "V",
                "adj_close": "Adj",
            },
        }
    )


def parquet_bars_feed(name: str = "pqbars") -> FeedSpec:
    # The declared zone applies to naive timestamps only; this file's are tz-aware.
    return parse_feed(
        {
            "name": name,
            "kind": "bars",
            "format": "parquet",
            "symbol": "ZZZ",
            "interval": "1h",
            "timestamp": {"timezone": "America/New_York"},
            "columns": {
                "ts": "start",
                "open": "o",
                "high": "h",
                "low": "l",
                "close": "c",
                "volume": "vol",
            },
        }
    )


def trade(
    trade_id: object, price: object, qty: object, time: object, *extra: str, maker: str = "true"
) -> str:
    """One Binance dump line: id,price,qty,quote_qty,time,is_buyer_maker,is_best_match."""
    return ",".join(str(v) for v in (trade_id, price, qty, 100, time, maker, "true", *extra))


def ms(offset_s: float) -> int:
    """Epoch milliseconds of DAY 00:00 UTC plus an offset in seconds."""
    return DAY_MS + int(offset_s * 1000)


def us(offset_s: float) -> int:
    return ms(offset_s) * 1000


@dataclass
class CorpusFile:
    """A file to land: its feed, name, lines with their expected verdicts (None = accepted),
    or raw bytes for files that cannot be read at all (then ``error`` is expected)."""

    feed: str
    name: str
    header: str | None = None
    lines: list[tuple[str, str | None]] = field(default_factory=list)
    raw: bytes | None = None
    error: str | None = None  # expected substring of the file-level error
    gzip: bool = False
    key_column: str = "size"  # canonical column whose value identifies a parsed row
    key_index: int = 2  # its position in the file's lines

    @property
    def rel(self) -> str:
        return f"landing/{self.feed}/{self.name}"

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw
        text = "".join(f"{line}\n" for line in ([self.header] if self.header else []))
        text += "".join(f"{line}\n" for line, _ in self.lines)
        data = text.encode()
        # mtime=0: the same corpus gives the same bytes (and hash) on every run.
        return gzip.compress(data, mtime=0) if self.gzip else data

    def expected(self) -> dict[tuple[str, float], str | None]:
        """Row identity -> expected reason (None: accepted). See :func:`row_key`."""
        first = 2 if self.header else 1
        out: dict[tuple[str, float], str | None] = {}
        for number, (line, reason) in enumerate(self.lines, start=first):
            if reason is not None and reason.startswith("unreadable line"):
                key = ("line", float(number))
            else:
                key = (self.key_column, float(line.split(",")[self.key_index]))
            assert key not in out, f"corpus keys must be unique: {key} in {self.name}"
            out[key] = reason
        return out


def data_lines(payload: bytes, name: str, has_header: bool | None = None) -> int:
    """Data lines of a landed text file, counted from its bytes: non-blank lines, less the
    header. ``has_header=None`` decides it like a Binance dump (first field named 'id')."""
    text = gzip.decompress(payload) if name.endswith(".gz") else payload
    lines = [line for line in text.decode().splitlines() if line.strip()]
    if has_header is None:
        has_header = bool(lines) and lines[0].split(",")[0].strip().lower() == "id"
    return len(lines) - (1 if has_header and lines else 0)


def land(storage: Storage, scratch: Path, rel: str, payload: bytes) -> str:
    """Land bytes at ``rel`` the way the platform does (put_immutable from a local file)."""
    local = scratch / "outbox" / hashlib.sha256(rel.encode()).hexdigest()
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(payload)
    assert storage.put_immutable(local, rel)
    return rel


def truncated_gzip(lines: int = 5_000) -> bytes:
    """A valid gzip of a Binance dump, cut in half: DuckDB alone would read the first half."""
    text = "".join(f"{trade(i, 100.5, 1, ms(i))}\n" for i in range(1, lines + 1))
    full = gzip.compress(text.encode(), mtime=0)
    return full[: len(full) // 2]


PNG_JUNK = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
# Bytes that decode as UTF-8 in the first line but break the CSV parser further on.
CONTROL_JUNK = bytes(range(256)) * 4


def binance_corpus() -> list[CorpusFile]:
    """Binance-format files for day DAY (plus one for the next day), good and bad."""
    day_before = -1  # seconds: 2024-01-01T23:59:59Z
    first = CorpusFile(
        "bin",
        "BTCUSDT-trades-2024-01-02.csv",
        lines=[
            (trade(1, 100.0, 1.001, ms(1)), None),
            (trade(2, -5.0, 1.002, ms(2)), NEG),
            (trade(3, 0, 1.003, ms(3)), NEG),
            (trade(4, "nan", 1.004, ms(4)), NAN),
            (trade(5, "abc", 1.005, ms(5)), cast_error("price", "abc")),
            (trade(6, 100.0, 1.006, ms(day_before)), OUTSIDE),
            (trade(1, 100.5, 1.007, ms(7)), DUP_TRADE),  # same id, same file
            ("8,100.0,1.008", TOO_FEW_7),
            (trade(9, 100.0, 1.009, ms(9), "extra"), TOO_MANY_7),
            (trade(10, 101.0, 1.010, us(10)), None),  # microseconds in a millisecond file
            (trade(11, "inf", 1.011, ms(11)), NEG),
            (trade(12, 100.0, -1.012, ms(12)), SIZE),
            (trade(13, "", 1.013, ms(13)), NAN),
            (trade(14, 100.0, 1.014, "1e30"), NO_TS),
            (trade(15, 100.0, 1.015, ms(86_400 + 1)), OUTSIDE),  # the next day
            (trade(16, 102.0, 1.016, ms(16), maker="false"), None),
            (trade(17, 100.0, 1.017, "yesterday"), NO_TS),
        ],
    )
    # Lands after ``first`` (".csv" < ".resend.csv"): a replay of ids already seen loses.
    resend = CorpusFile(
        "bin",
        "BTCUSDT-trades-2024-01-02.resend.csv",
        header=BINANCE_HEADER,
        lines=[
            (trade(16, 99.0, 2.001, us(16)), DUP_TRADE),
            (trade(1, 100.0, 2.002, us(1)), DUP_TRADE),
            (trade(2, 100.0, 2.003, us(2)), None),  # id 2 was quarantined: this one is first
            (trade(20, 103.0, 2.004, us(20)), None),
            (trade(21, -1.0, 2.005, us(21)), NEG),
        ],
    )
    # A malformed first line must not be mistaken for a header.
    other_symbol = CorpusFile(
        "bin",
        "ETHUSDT-trades-2024-01-02.csv",
        lines=[
            ("x1,2000.0,3.001,100," + str(ms(1)) + ",true,true", cast_error_bigint("id", "x1")),
            (trade(1, 2000.0, 3.002, ms(2)), None),  # id 1 again, but another symbol
            (trade(2, 2001.0, 3.003, ms(3 * 3600)), None),
        ],
    )
    compressed = CorpusFile(
        "bin",
        "DOGEUSDT-trades-2024-01-02.csv.gz",
        gzip=True,
        lines=[
            (trade(1, 0.08, 4.001, ms(60)), None),
            (trade(2, 0.08, 4.002, ms(day_before)), OUTSIDE),
            (trade(3, -0.08, 4.003, ms(61)), NEG),
        ],
    )
    next_day = CorpusFile(
        "bin",
        "BTCUSDT-trades-2024-01-03.csv",
        lines=[
            (trade(30, 104.0, 5.001, ms(86_400 + 5)), None),
            (trade(31, 104.0, 5.002, ms(5)), OUTSIDE),  # a row of day D-1 in a file of day D
        ],
    )
    bad = [
        CorpusFile(
            "bin",
            "ETHUSDT-trades-2024-01-03.csv.gz",
            raw=truncated_gzip(),
            error="truncated or corrupt gzip archive",
        ),
        CorpusFile("bin", "SOLUSDT-trades-2024-01-02.csv", raw=b"", error="empty file (0 bytes)"),
        CorpusFile("bin", "XRPUSDT-trades-2024-01-02.csv", raw=PNG_JUNK, error="not UTF-8 text"),
        CorpusFile("bin", "ADAUSDT-trades-2024-01-02.csv", raw=CONTROL_JUNK, error="unreadable:"),
    ]
    return [first, resend, other_symbol, compressed, next_day, *bad]


BARS_HEADER = "Sym,Date,O,H,L,C,V,Adj"


def bar(sym: str, date: str, o: object, h: object, low: object, c: object, v: object) -> str:
    return f"{sym},{date},{o},{h},{low},{c},{v},{c}"


def bars_corpus() -> list[CorpusFile]:
    good = CorpusFile(
        "bars",
        "2024-01.csv",
        header=BARS_HEADER,
        key_column="volume",
        key_index=6,
        lines=[
            (bar("AAA", "2024-01-02", 10, 11, 9, 10.5, 1001), None),
            (bar("BBB", "2024-01-02", 20, 21, 19, 20.5, 1002), None),
            (bar("CCC", "2024-01-02", 30, 31, 29, 30.5, 1003), UNKNOWN),
            (bar("AAA", "2024-01-03", 10, 9, 11, 10, 1004), HIGH_LOW),  # high < low
            (bar("AAA", "2024-01-03", -1, 11, 9, 10, 1005), NEG),
            (bar("BBB", "2024-01-03", 20, 21, 19, "nan", 1006), NAN),
            (bar("AAA", "2024-01-02", 10, 11, 9, 10.5, 1007), DUP_BAR),
            (bar("BBB", "2024-01-03", 20, 21, 19, 20, "abc"), cast_error("V", "abc")),
            (bar("AAA", "not-a-date", 10, 11, 9, 10, 1009), NO_TS),
            (bar("BBB", "2024-01-04", 20, 21, 19, 20, 1010), None),
            ("AAA,2024-01-03,10,11", "unreadable line: Expected Number of Columns: 8 Found: 4"),
            (bar("", "2024-01-03", 10, 11, 9, 10, 1012), NO_SYMBOL),
            (bar("BBB", "2024-01-03", 20, 21, 19, 20, -1013), VOLUME),
            (bar("AAA", "2024-01-03", 10, 12, 8, 11, 1014), None),
            (bar("AAA", "2024-01-03", 0, 12, 8, 11, 1015), NEG),
            # An explicit offset wins over the feed's zone: 04:30 UTC on 2024-01-03.
            (bar("BBB", "2024-01-02T23:30:00-05:00", 20, 22, 18, 21, 1016), None),
            (
                bar("AAA", "2024-01-04", 10, 12, 8, 11, 1017) + ",extra",
                "unreadable line: Expected Number of Columns: 8 Found: 9",
            ),
        ],
    )
    bad = [
        CorpusFile(
            "bars",
            "semicolon.csv",
            raw=(
                BARS_HEADER.replace(",", ";") + "\n" + "AAA;2024-01-02;1;2;0.5;1.5;10;1.5\n"
            ).encode(),
            error="is the delimiter ',' right?",
        ),
        CorpusFile(
            "bars",
            "no-volume.csv",
            raw=b"Sym,Date,O,H,L,C\nAAA,2024-01-02,1,2,0.5,1.5\n",
            error="missing columns ['V']",
        ),
        CorpusFile(
            "bars",
            "bad-dates.csv",
            raw=(BARS_HEADER + "\nAAA,02/01/2024,1,2,0.5,1.5,10,1.5\n").encode(),
            error="no row has a usable timestamp",
        ),
        CorpusFile("bars", "zz-empty.csv", raw=b"", error="empty file (0 bytes)"),
    ]
    return [good, *bad]


def parquet_bars() -> bytes:
    """A Parquet file of hourly bars for the ``pqbars`` feed (tz-aware timestamps)."""
    table = pa.table(
        {
            "start": pa.array(
                [
                    datetime(2024, 1, 2, 14, tzinfo=UTC),
                    datetime(2024, 1, 2, 15, tzinfo=UTC),
                    datetime(2024, 1, 2, 16, tzinfo=UTC),
                    datetime(2024, 1, 2, 23, tzinfo=UTC),
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "o": [1.0, 1.0, 1.0, 1.0],
            "h": [2.0, 0.5, 2.0, 2.0],
            "l": [0.5, 2.0, 0.5, 0.5],
            "c": [1.5, 1.5, float("nan"), 1.5],
            "vol": [101.0, 102.0, 103.0, 104.0],
            "unused": ["a", "b", "c", "d"],
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


PARQUET_EXPECTED = {
    ("volume", 101.0): None,
    ("volume", 102.0): HIGH_LOW,
    ("volume", 103.0): NAN,
    ("volume", 104.0): None,
}


def parquet_corpus() -> list[CorpusFile]:
    return [
        CorpusFile("pqbars", "bars-1.parquet", raw=parquet_bars()),
        CorpusFile(
            "pqbars",
            "corrupt.parquet",
            raw=b"PAR1" + bytes(100) + b"PAR1",
            error="not a readable Parquet file",
        ),
    ]


def raw_partitions_frame(storage: Storage, kind: str, days: list[str]) -> pd.DataFrame:
    """The raw partitions of ``days`` as one frame, with the partition day as the contract
    reads it (``partition_date``)."""
    frames = []
    for day in days:
        df = read_partition(storage.uri(raw_path(kind, day)))
        frames.append(df.assign(partition_date=pd.Series([day] * len(df), dtype=df["feed"].dtype)))
    return pd.concat(frames, ignore_index=True)


def check_raw_contract(
    storage: Storage, feeds: dict[str, FeedSpec], kind: str, report: Any, days: list[str]
) -> None:
    """Every accepted row of ``report`` (an IngestReport) is in the partitions and satisfies the
    contract, read as one frame and through validate_partitions."""
    df = raw_partitions_frame(storage, kind, days)
    assert len(df) == report.rows_accepted
    raw_schema(kind, feeds).validate(df, lazy=True)
    result = validate_partitions(
        storage, feeds, kind, report.rows_by_day, lambda day: raw_path(kind, day)
    )
    assert result.passed, result.failure_sample
    assert result.rows == report.rows_accepted


def land_and_ingest(
    root: Path, files: list[Any], feeds: dict[str, FeedSpec], days: dict[str, list[str]]
) -> tuple[Storage, list[Any], dict[str, Any]]:
    """Land ``files`` (``rel``, ``payload()``) under ``root``/root, then ingest each kind's days:
    (storage, the landed files scanned, IngestReport per kind)."""
    storage = Storage(str(root / "root"))
    for f in files:
        land(storage, root, f.rel, f.payload())
    con = new_connection()
    landed = scan_landing(storage, feeds, con)
    reports = {
        kind: ingest_partitions(storage, feeds, kind, kind_days, landed, con)
        for kind, kind_days in days.items()
    }
    return storage, landed, reports
