"""Tests for the feed config parser (assets/core/feeds.py) and the feed readers (assets/ingestion/readers.py):
each declared format read into canonical rows, timestamps converted to UTC."""

from __future__ import annotations

import gzip
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.corpus import BINANCE_HEADER, binance_feed, ms, trade, truncated_gzip, us

from assets.core.feeds import FeedConfigError, FeedSpec, TimestampSpec, load_feeds, parse_feed
from assets.ingestion.ingest import new_connection
from assets.ingestion.readers import FileReadError, select_canonical

REPO = Path(__file__).resolve().parents[2]
TRADE_COLUMNS = {"ts": "time", "trade_id": "id", "price": "px", "size": "qty"}
DECISION_COLUMNS = {
    "decision_id": "id",
    "agent_id": "agent",
    "ts": "time",
    "action": "act",
    "size": "frac",
}
FEEDBACK_COLUMNS = {
    "episode_id": "ep",
    "step_index": "step",
    "rating": "r",
    "rater_id": "who",
    "ts": "time",
}


def entry(**overrides: Any) -> dict[str, Any]:
    """A valid csv trades feed entry, with overrides (None removes a key)."""
    base: dict[str, Any] = {
        "name": "acme",
        "kind": "trades",
        "format": "csv",
        "symbol": "BTC-USD",
        "columns": dict(TRADE_COLUMNS),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# --------------------------------------------------------------------------------------------
# Config parser
# --------------------------------------------------------------------------------------------
def test_repository_feeds_file() -> None:
    feeds = load_feeds(REPO / "feeds.yaml")
    assert list(feeds) == [
        "bokeh-stocks",
        "sim-trades",
        "recorded-decisions",
        "expert-feedback",
        "live-trades",
    ]

    stocks = feeds["bokeh-stocks"]
    assert (stocks.kind, stocks.format, stocks.interval, stocks.header) == (
        "bars",
        "csv",
        "1d",
        True,
    )
    assert stocks.symbols == ("AAPL", "GOOG", "IBM", "MSFT", "FB")
    assert stocks.timestamp == TimestampSpec(format="%Y-%m-%d", timezone="America/New_York")
    assert stocks.columns["adj_close"] == "Adj Close"
    assert stocks.source_column("symbol") == "Ticker"
    assert stocks.source_column("side") is None
    assert stocks.landing_prefix == "landing/bokeh-stocks"

    sim = feeds["sim-trades"]
    assert (sim.kind, sim.format, sim.header, sim.delimiter) == (
        "trades",
        "binance-trades",
        False,
        ",",
    )
    assert sim.timestamp == TimestampSpec(unit="auto")
    assert sim.source_column("ts") == "time"
    assert sim.source_column("size") == "qty"
    assert sim.symbol_for_file("BTCUSDT-trades-2024-01-02.csv") == "BTCUSDT"
    assert sim.date_for_file("BTCUSDT-trades-2024-01-02.csv") == "2024-01-02"
    assert sim.symbol_for_file("btc-trades.csv") is None
    assert sim.date_for_file("BTCUSDT-trades.csv") is None

    decisions = feeds["recorded-decisions"]
    assert (decisions.kind, decisions.format, decisions.symbols) == ("decisions", "csv", ())
    assert decisions.source_column("agent_id") == "agent"
    assert decisions.source_column("rationale") == "why"
    assert decisions.timestamp == TimestampSpec()
    feedback = feeds["expert-feedback"]
    assert (feedback.kind, feedback.format, feedback.symbol) == ("feedback", "csv", None)
    assert feedback.source_column("step_index") == "step"
    assert feedback.timestamp == TimestampSpec(format="%Y-%m-%d %H:%M:%S", timezone="UTC")


def test_parse_feed_defaults_and_fields() -> None:
    spec = parse_feed(entry(description="a vendor", delimiter=";", interval="1m"))
    assert spec == FeedSpec(
        name="acme",
        kind="trades",
        format="csv",
        columns=TRADE_COLUMNS,
        timestamp=TimestampSpec(),
        delimiter=";",
        header=True,
        symbol="BTC-USD",
        interval="1m",
        description="a vendor",
    )
    assert spec.symbol_for_file("anything.csv") == "BTC-USD"
    assert spec.date_for_file("2024-01-02.csv") is None

    binance = parse_feed({"name": "b", "kind": "trades", "format": "binance-trades", "symbol": "X"})
    assert (binance.header, binance.timestamp.unit, binance.columns) == (False, "auto", {})
    explicit = parse_feed(
        {
            "name": "b2",
            "kind": "trades",
            "format": "binance-trades",
            "symbol_from_filename": r"^([A-Z]+)_",
            "timestamp": {"unit": "ms"},
        }
    )
    assert explicit.timestamp.unit == "ms"
    assert explicit.symbol_for_file("ETHBTC_2024.csv") == "ETHBTC"  # unnamed group 1

    parquet = parse_feed(
        entry(
            name="pq-1",
            format="parquet",
            symbol=None,
            columns={**TRADE_COLUMNS, "symbol": "sym"},
            timestamp={"unit": "ns"},
            symbols=["A", "B"],
        )
    )
    assert (parquet.symbols, parquet.timestamp.unit) == (("A", "B"), "ns")
    # Decisions take a constant symbol like bars; feedback has no symbol at all.
    decisions = parse_feed(
        {
            "name": "d",
            "kind": "decisions",
            "format": "parquet",
            "symbol": "AAPL",
            "columns": dict(DECISION_COLUMNS),
        }
    )
    assert (decisions.kind, decisions.symbol_for_file("x.parquet")) == ("decisions", "AAPL")
    feedback = parse_feed(
        {"name": "f", "kind": "feedback", "format": "csv", "columns": dict(FEEDBACK_COLUMNS)}
    )
    assert (feedback.kind, feedback.symbols, feedback.symbol) == ("feedback", (), None)


BAD_ENTRIES = {
    "unknown_key": (entry(colums={}), "unknown keys ['colums']"),
    "bad_kind": (entry(kind="quotes"), "kind must be one of"),
    "missing_kind": (entry(kind=None), "kind must be one of"),
    "bad_format": (entry(format="xlsx"), "format must be one of"),
    "binance_bars": (entry(kind="bars", format="binance-trades"), "holds trades, not bars"),
    "binance_decisions": (
        entry(kind="decisions", format="binance-trades"),
        "holds trades, not decisions",
    ),
    "binance_feedback": (
        entry(kind="feedback", format="binance-trades", symbol=None),
        "holds trades, not feedback",
    ),
    "decisions_unmapped": (
        entry(
            kind="decisions",
            columns={k: v for k, v in DECISION_COLUMNS.items() if k != "action"},
        ),
        "columns must map ['action']",
    ),
    "decisions_no_symbol": (
        entry(kind="decisions", symbol=None, columns=DECISION_COLUMNS),
        "map a 'symbol' column",
    ),
    "feedback_unmapped": (
        entry(kind="feedback", symbol=None, columns={"ts": "time", "rating": "r"}),
        "columns must map ['episode_id', 'rater_id', 'step_index']",
    ),
    "feedback_with_symbols": (
        entry(kind="feedback", symbol=None, columns=FEEDBACK_COLUMNS, symbols=["AAPL"]),
        "kind feedback has no symbol; remove ['symbols']",
    ),
    "feedback_with_symbol_column": (
        entry(kind="feedback", symbol=None, columns={**FEEDBACK_COLUMNS, "symbol": "s"}),
        "kind feedback has no symbol; remove ['columns.symbol']",
    ),
    "timestamp_not_mapping": (entry(timestamp="ms"), "'timestamp' must be a mapping"),
    "timestamp_unknown_key": (entry(timestamp={"zone": "UTC"}), "unknown timestamp keys"),
    "timestamp_bad_unit": (entry(timestamp={"unit": "minutes"}), "timestamp.unit must be one of"),
    "timestamp_unit_and_format": (
        entry(timestamp={"unit": "s", "format": "%Y"}),
        "not both",
    ),
    "unmapped_columns": (entry(columns={"ts": "time"}), "columns must map"),
    "no_symbol": (entry(symbol=None), "map a 'symbol' column"),
    "bad_symbol_pattern": (entry(symbol=None, symbol_from_filename="(["), "bad pattern"),
    "bad_date_pattern": (entry(file_date_pattern="(?P<date>"), "bad pattern"),
    "date_pattern_without_group": (entry(file_date_pattern=r"\d{8}"), "needs a group"),
    "columns_not_mapping": (entry(columns=["ts", "price"]), "'columns' must be a mapping"),
    "symbols_not_list": (entry(symbols="AAPL"), "'symbols' must be a list"),
    "header_not_bool": (entry(header="no"), "'header' must be true or false"),
}


@pytest.mark.parametrize("name", sorted(BAD_ENTRIES))
def test_bad_entry_raises_naming_the_feed(name: str) -> None:
    raw, message = BAD_ENTRIES[name]
    with pytest.raises(FeedConfigError) as caught:
        parse_feed(raw)
    assert message in str(caught.value)
    assert "'acme'" in str(caught.value), "the message names the feed"


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "ac me", None, "acme!"])
def test_bad_feed_name(name: str | None) -> None:
    with pytest.raises(FeedConfigError, match="must be lower-case"):
        parse_feed(entry(name=name))  # None: no name at all


def test_entry_that_is_not_a_mapping() -> None:
    with pytest.raises(FeedConfigError, match="must be a mapping"):
        parse_feed("bokeh-stocks")  # type: ignore[arg-type]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(text)
    return path


def test_load_feeds_errors(tmp_path: Path) -> None:
    with pytest.raises(FeedConfigError, match="cannot read feeds file"):
        load_feeds(tmp_path / "missing.yaml")
    with pytest.raises(FeedConfigError, match="cannot read feeds file"):
        load_feeds(_write(tmp_path, "feeds: [unclosed"))
    with pytest.raises(FeedConfigError, match="expected 'feeds:' followed by a list"):
        load_feeds(_write(tmp_path, "- name: a\n"))
    with pytest.raises(FeedConfigError, match="expected 'feeds:' followed by a list"):
        load_feeds(_write(tmp_path, "feeds: {name: a}\n"))
    twice = """
feeds:
  - {name: dup, kind: trades, format: binance-trades, symbol: X}
  - {name: dup, kind: trades, format: binance-trades, symbol: Y}
"""
    with pytest.raises(FeedConfigError, match="'dup' is declared twice"):
        load_feeds(_write(tmp_path, twice))
    bad = """
feeds:
  - {name: fine, kind: trades, format: binance-trades, symbol: X}
  - {name: broken, kind: trades, format: csv, symbol: X}
"""
    with pytest.raises(FeedConfigError, match="feed 'broken': columns must map"):
        load_feeds(_write(tmp_path, bad))
    assert load_feeds(_write(tmp_path, "")) == {}
    assert load_feeds(_write(tmp_path, "feeds:\n")) == {}


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------
def read(feed: FeedSpec, path: Path, name: str | None = None) -> tuple[list[dict], list[tuple]]:
    """Canonical rows of one file, and its rejected lines as (line, error type)."""
    con = new_connection()
    sql, uses_rejects = select_canonical(feed, path, name or path.name)
    rows = con.execute(sql).fetch_arrow_table().to_pylist()
    rejects = []
    if uses_rejects:
        rejects = con.execute(
            "SELECT DISTINCT line, CAST(error_type AS VARCHAR) FROM dd_rejects ORDER BY line"
        ).fetchall()
    return rows, rejects


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def read_parquet(feed: FeedSpec, table: pa.Table, folder: Path, name: str) -> list[dict]:
    """Canonical rows of ``table`` written as the Parquet file ``name``; no line rejected."""
    path = folder / name
    pq.write_table(table, path)
    rows, rejects = read(feed, path)
    assert rejects == []
    return rows


def test_csv_with_header_mapping_format_and_timezone(tmp_path: Path) -> None:
    feed = parse_feed(
        {
            "name": "vendor",
            "kind": "trades",
            "format": "csv",
            "columns": {
                "symbol": "Ticker",
                "ts": "When",
                "trade_id": "No",
                "price": "Px",
                "size": "Qty",
                "side": "Side",
            },
            "timestamp": {"format": "%d.%m.%Y %H:%M:%S", "timezone": "Europe/Berlin"},
        }
    )
    path = tmp_path / "trades.csv"
    path.write_text(
        "Venue,Qty,Px,When,Ticker,No,Side\n"  # other order, one unmapped column
        "X,1.5,100.25,15.01.2024 10:30:00,SAP,1,B\n"  # CET: UTC+1
        "X,2,101,15.07.2024 10:30:00,SAP,2,sell\n"  # CEST: UTC+2
        'X,3,102,31.12.2023 00:30:00,"SAP",3,?\n'  # the previous UTC day
        "X,4,103,2024-01-15 10:30:00,SAP,4,s\n"  # not the declared format
    )
    rows, rejects = read(feed, path)
    assert rejects == []
    assert rows == [
        {
            "symbol": "SAP",
            "ts": utc(2024, 1, 15, 9, 30),
            "trade_id": 1,
            "price": 100.25,
            "size": 1.5,
            "side": "buy",
        },
        {
            "symbol": "SAP",
            "ts": utc(2024, 7, 15, 8, 30),
            "trade_id": 2,
            "price": 101.0,
            "size": 2.0,
            "side": "sell",
        },
        {
            "symbol": "SAP",
            "ts": utc(2023, 12, 30, 23, 30),
            "trade_id": 3,
            "price": 102.0,
            "size": 3.0,
            "side": "unknown",
        },
        {
            "symbol": "SAP",
            "ts": None,
            "trade_id": 4,
            "price": 103.0,
            "size": 4.0,
            "side": "sell",
        },
    ]


def test_csv_iso_timestamps_naive_in_feed_zone_offsets_kept(tmp_path: Path) -> None:
    feed = parse_feed(
        entry(columns={**TRADE_COLUMNS}, timestamp={"timezone": "America/New_York"}, header=True)
    )
    path = tmp_path / "iso.csv"
    path.write_text(
        "id,time,px,qty\n"
        "1,2024-01-02 09:30:00,1,1\n"  # naive: New York (EST, UTC-5)
        "2,2024-01-02T09:30:00.25,1,1\n"
        "3,2024-01-02T09:30:00Z,1,1\n"
        "4,2024-01-02T09:30:00+05:30,1,1\n"
        "5,2024-01-02 09:30:00+0100,1,1\n"
        "6,2024-01-02 09:30:00+01,1,1\n"
        "7,2024-01-02,1,1\n"  # a bare date is naive too: midnight in New York
        "8,garbage,1,1\n"
    )
    rows, _ = read(feed, path)
    assert [r["ts"] for r in rows] == [
        utc(2024, 1, 2, 14, 30),
        datetime(2024, 1, 2, 14, 30, 0, 250_000, tzinfo=UTC),
        utc(2024, 1, 2, 9, 30),
        utc(2024, 1, 2, 4, 0),
        utc(2024, 1, 2, 8, 30),
        utc(2024, 1, 2, 8, 30),
        utc(2024, 1, 2, 5, 0),
        None,
    ]
    assert {r["symbol"] for r in rows} == {"BTC-USD"}  # the feed's constant symbol


def test_csv_format_with_offset_ignores_the_feed_zone(tmp_path: Path) -> None:
    feed = parse_feed(entry(timestamp={"format": "%Y-%m-%d %H:%M:%S%z", "timezone": "Asia/Tokyo"}))
    path = tmp_path / "z.csv"
    path.write_text("id,time,px,qty\n1,2024-01-02 09:30:00+0100,1,1\n")
    rows, _ = read(feed, path)
    assert rows[0]["ts"] == utc(2024, 1, 2, 8, 30)


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("s", "1704187800", utc(2024, 1, 2, 9, 30)),
        ("s", "1704187800.5", datetime(2024, 1, 2, 9, 30, 0, 500_000, tzinfo=UTC)),
        ("ms", "1704187800123", datetime(2024, 1, 2, 9, 30, 0, 123_000, tzinfo=UTC)),
        ("us", "1704187800123456", datetime(2024, 1, 2, 9, 30, 0, 123_456, tzinfo=UTC)),
        ("ns", "1704187800123456000", datetime(2024, 1, 2, 9, 30, 0, 123_456, tzinfo=UTC)),
        ("auto", "1704187800", utc(2024, 1, 2, 9, 30)),
        ("auto", "1704187800123", datetime(2024, 1, 2, 9, 30, 0, 123_000, tzinfo=UTC)),
        ("auto", "1704187800123456", datetime(2024, 1, 2, 9, 30, 0, 123_456, tzinfo=UTC)),
        ("auto", "1704187800123456000", datetime(2024, 1, 2, 9, 30, 0, 123_456, tzinfo=UTC)),
        ("ms", "not-a-number", None),
        ("ms", "nan", None),
        ("ms", "1e30", None),  # beyond any timestamp: the row, not the file, fails
    ],
)
def test_epoch_units(tmp_path: Path, unit: str, value: str, expected: datetime | None) -> None:
    feed = parse_feed(entry(timestamp={"unit": unit}))
    path = tmp_path / "epoch.csv"
    path.write_text(f"id,time,px,qty\n1,{value},1,1\n")
    rows, _ = read(feed, path)
    assert rows[0]["ts"] == expected


def test_csv_lines_that_do_not_parse_are_rejects(tmp_path: Path) -> None:
    feed = parse_feed(entry())
    path = tmp_path / "t.csv"
    path.write_text(
        "id,time,px,qty\n"
        "1,2024-01-02T00:00:00Z,1,1\n"
        "2,2024-01-02T00:00:00Z,abc,1\n"
        "3,2024-01-02T00:00:00Z,1\n"
        "4,2024-01-02T00:00:00Z,1,1,1\n"
        "x,2024-01-02T00:00:00Z,1,1\n"
        "6,2024-01-02T00:00:00Z,,1\n"
    )
    rows, rejects = read(feed, path)
    assert [r["trade_id"] for r in rows] == [1, 6]
    assert rows[1]["price"] is None
    assert rejects == [(3, "CAST"), (4, "MISSING COLUMNS"), (5, "TOO MANY COLUMNS"), (6, "CAST")]


def test_semicolon_feed_gzipped(tmp_path: Path) -> None:
    feed = parse_feed(entry(delimiter=";"))
    path = tmp_path / "t.csv.gz"
    path.write_bytes(
        gzip.compress(
            b"id;time;px;qty\n1;2024-01-02T00:00:00Z;1.5;2\n2;2024-01-02T00:00:00Z;1,5;2\n"
        )
    )
    rows, rejects = read(feed, path)
    assert [(r["trade_id"], r["price"], r["size"]) for r in rows] == [(1, 1.5, 2.0)]
    assert rejects == [(3, "CAST")]  # "1,5" is not a DOUBLE: a reject, not a lost row


def test_parquet_reader(tmp_path: Path) -> None:
    feed = parse_feed(
        {
            "name": "pq",
            "kind": "bars",
            "format": "parquet",
            "timestamp": {"timezone": "America/New_York"},
            "columns": {
                "symbol": "sym",
                "ts": "naive",
                "open": "o",
                "high": "h",
                "low": "l",
                "close": "c",
                "volume": "v",
            },
        }
    )
    table = pa.table(
        {
            "sym": ["AAA", "BBB"],
            "naive": pa.array([datetime(2024, 1, 2, 9, 30), None], pa.timestamp("ms")),
            "aware": pa.array(
                [utc(2024, 1, 2, 9, 30), utc(2024, 7, 2, 9, 30)], pa.timestamp("us", tz="UTC")
            ),
            "o": [1.0, 2.0],
            "h": [2.0, 3.0],
            "l": [0.5, 1.5],
            "c": [1.5, 2.5],
            "v": pa.array([10, 20], pa.int32()),
        }
    )
    assert read_parquet(feed, table, tmp_path, "bars.parquet") == [
        {
            "symbol": "AAA",
            "ts": utc(2024, 1, 2, 14, 30),  # naive: New York wall time
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5,
            "volume": 10.0,
            "adj_close": None,  # optional, not mapped
        },
        {
            "symbol": "BBB",
            "ts": None,
            "open": 2.0,
            "high": 3.0,
            "low": 1.5,
            "close": 2.5,
            "volume": 20.0,
            "adj_close": None,
        },
    ]
    # A zone-aware column is already UTC: the feed's zone does not shift it.
    aware = parse_feed(
        {**feed_entry_of(feed), "columns": {**feed.columns, "ts": "aware"}, "name": "pq2"}
    )
    rows, _ = read(aware, tmp_path / "bars.parquet")
    assert [r["ts"] for r in rows] == [utc(2024, 1, 2, 9, 30), utc(2024, 7, 2, 9, 30)]


def feed_entry_of(feed: FeedSpec) -> dict[str, Any]:
    return {
        "name": feed.name,
        "kind": feed.kind,
        "format": feed.format,
        "columns": dict(feed.columns),
        "timestamp": {"timezone": feed.timestamp.timezone},
    }


BINANCE_NAME = "BTCUSDT-trades-2024-01-02.csv"


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("unit", ["ms", "us"])
def test_binance_trades(tmp_path: Path, header: bool, unit: str) -> None:
    feed = binance_feed()
    to_epoch = ms if unit == "ms" else us
    lines = [trade(7, 42000.5, 0.25, to_epoch(1.5)), trade(8, 42001, 1, to_epoch(2), maker="false")]
    path = tmp_path / BINANCE_NAME
    path.write_text("\n".join(([BINANCE_HEADER] if header else []) + lines) + "\n")
    rows, rejects = read(feed, path)
    assert rejects == []
    assert rows == [
        {
            "symbol": "BTCUSDT",
            "ts": datetime(2024, 1, 2, 0, 0, 1, 500_000, tzinfo=UTC),
            "trade_id": 7,
            "price": 42000.5,
            "size": 0.25,
            "side": "sell",  # the buyer was the maker: the taker sold
        },
        {
            "symbol": "BTCUSDT",
            "ts": utc(2024, 1, 2, 0, 0, 2),
            "trade_id": 8,
            "price": 42001.0,
            "size": 1.0,
            "side": "buy",
        },
    ]
    assert feed.date_for_file(BINANCE_NAME) == "2024-01-02"
    assert feed.symbol_for_file(BINANCE_NAME) == "BTCUSDT"


def test_binance_symbol_comes_from_the_landed_name(tmp_path: Path) -> None:
    path = tmp_path / "local-copy.csv"
    path.write_text(trade(1, 1, 1, ms(0)) + "\n")
    rows, _ = read(binance_feed(), path, name="ETHBTC-trades-2024-01-02.csv")
    assert rows[0]["symbol"] == "ETHBTC"
    rows, _ = read(binance_feed(), path, name="no-symbol-here.csv")
    assert rows[0]["symbol"] is None


def test_binance_malformed_first_line_is_not_a_header(tmp_path: Path) -> None:
    path = tmp_path / BINANCE_NAME
    path.write_text("x1,1,1,1,1704153600000,true,true\n" + trade(2, 1, 1, ms(0)) + "\n")
    rows, rejects = read(binance_feed(), path)
    assert [r["trade_id"] for r in rows] == [2]
    assert rejects == [(1, "CAST")]


def _zip(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("t.csv", "id,time,px,qty\n")
    return path


UNREADABLE = {
    "empty": (lambda p: (p / "t.csv").write_bytes(b""), "t.csv", "empty file (0 bytes)"),
    "empty_gzip": (
        lambda p: (p / "t.csv.gz").write_bytes(gzip.compress(b"")),
        "t.csv.gz",
        "empty file",
    ),
    "not_utf8": (
        lambda p: (p / "t.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00"),
        "t.csv",
        "not UTF-8 text (invalid start byte at byte 0)",
    ),
    "truncated_gzip": (
        lambda p: (p / "t.csv.gz").write_bytes(truncated_gzip()),
        "t.csv.gz",
        "truncated or corrupt gzip archive",
    ),
    "not_gzip": (
        lambda p: (p / "t.csv.gz").write_bytes(b"id,time,px,qty\n"),
        "t.csv.gz",
        "truncated or corrupt gzip archive",
    ),
    "zip": (_zip, "t.csv.zip", "zip archives are not read directly"),
    "missing_columns": (
        lambda p: (p / "t.csv").write_text("id,time,px\n1,2,3\n"),
        "t.csv",
        "missing columns ['qty']; found ['id', 'time', 'px']",
    ),
    "wrong_delimiter": (
        lambda p: (p / "t.csv").write_text("id;time;px;qty\n1;2;3;4\n"),
        "t.csv",
        "the header has one field: is the delimiter ',' right?",
    ),
    "blank_first_line": (
        lambda p: (p / "t.csv").write_text("\nid,time,px,qty\n"),
        "t.csv",
        "missing columns",
    ),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_csv_names_feed_and_file(tmp_path: Path, case: str) -> None:
    make, name, message = UNREADABLE[case]
    make(tmp_path)
    with pytest.raises(FileReadError) as caught:
        select_canonical(parse_feed(entry()), tmp_path / name, f"vendor-{name}")
    assert message in caught.value.reason
    assert (caught.value.feed, caught.value.path) == ("acme", f"vendor-{name}")
    assert "'acme'" in str(caught.value) and f"'vendor-{name}'" in str(caught.value)


def test_unreadable_parquet(tmp_path: Path) -> None:
    feed = parse_feed(entry(format="parquet"))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1" + bytes(64) + b"PAR1")
    with pytest.raises(FileReadError, match="not a readable Parquet file") as caught:
        select_canonical(feed, junk, "junk.parquet")
    assert caught.value.feed == "acme"
    narrow = tmp_path / "narrow.parquet"
    pq.write_table(pa.table({"id": [1], "time": ["x"], "px": [1.0]}), narrow)
    with pytest.raises(FileReadError, match=r"missing columns \['qty'\]"):
        select_canonical(feed, narrow, "narrow.parquet")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(FileReadError, match="empty file"):
        select_canonical(feed, empty, "empty.parquet")


def decisions_feed(fmt: str = "csv", **overrides: Any) -> FeedSpec:
    return parse_feed(
        {
            "name": "journal",
            "kind": "decisions",
            "format": fmt,
            "columns": {**DECISION_COLUMNS, "symbol": "sym", "rationale": "why"},
            **overrides,
        }
    )


def feedback_feed(fmt: str = "csv", **overrides: Any) -> FeedSpec:
    return parse_feed(
        {
            "name": "prm",
            "kind": "feedback",
            "format": fmt,
            "columns": {**FEEDBACK_COLUMNS, "comment": "note"},
            **overrides,
        }
    )


def test_decisions_csv_reader(tmp_path: Path) -> None:
    feed = decisions_feed(timestamp={"timezone": "America/New_York"})
    path = tmp_path / "decisions.csv"
    path.write_text(
        "why,frac,act,time,sym,agent,id,unused\n"  # any order, an unmapped column
        '"breakout, volume up",0.25, BUY ,2024-01-02 09:31:00,AAPL,alice,d1,x\n'  # naive: NY
        ",0,Hold,2024-01-02T15:00:00Z,MSFT,bob,d2,x\n"
        "  ,1,sell,2024-01-02T15:00:00+01:00,IBM,alice,d3,x\n"
        ",0.5,,garbage,IBM,,d4,x\n"
        ",abc,buy,2024-01-02T15:00:00Z,IBM,bob,d5,x\n"  # not a number: a reject
    )
    rows, rejects = read(feed, path)
    assert rejects == [(6, "CAST")]
    assert rows == [
        {
            "decision_id": "d1",
            "agent_id": "alice",
            "symbol": "AAPL",
            "ts": utc(2024, 1, 2, 14, 31),
            "action": "buy",  # trimmed and lower-cased
            "size": 0.25,
            "rationale": "breakout, volume up",
        },
        {
            "decision_id": "d2",
            "agent_id": "bob",
            "symbol": "MSFT",
            "ts": utc(2024, 1, 2, 15),
            "action": "hold",
            "size": 0.0,
            "rationale": None,
        },
        {
            "decision_id": "d3",
            "agent_id": "alice",
            "symbol": "IBM",
            "ts": utc(2024, 1, 2, 14),
            "action": "sell",
            "size": 1.0,
            "rationale": "  ",  # free text, kept as written
        },
        {
            "decision_id": "d4",
            "agent_id": None,
            "symbol": "IBM",
            "ts": None,
            "action": None,  # blank: missing
            "size": 0.5,
            "rationale": None,
        },
    ]


def test_decisions_parquet_reader_with_constant_symbol(tmp_path: Path) -> None:
    columns = {**DECISION_COLUMNS, "ts": "at"}
    feed = parse_feed(
        {
            "name": "agent-log",
            "kind": "decisions",
            "format": "parquet",
            "symbol_from_filename": r"^(?P<symbol>[A-Z]+)-",
            "columns": columns,
        }
    )
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),  # numeric ids are read as text
            "agent": ["a1", "a1"],
            "at": pa.array([utc(2024, 1, 2, 9), utc(2024, 1, 3, 9)], pa.timestamp("ns", "UTC")),
            "act": ["SELL", "hold"],
            "frac": pa.array([0.5, 0], pa.float32()),
        }
    )
    rows = read_parquet(feed, table, tmp_path, "AAPL-2024.parquet")
    assert rows == [
        {
            "decision_id": "1",
            "agent_id": "a1",
            "symbol": "AAPL",
            "ts": utc(2024, 1, 2, 9),
            "action": "sell",
            "size": 0.5,
            "rationale": None,  # optional, not mapped
        },
        {
            "decision_id": "2",
            "agent_id": "a1",
            "symbol": "AAPL",
            "ts": utc(2024, 1, 3, 9),
            "action": "hold",
            "size": 0.0,
            "rationale": None,
        },
    ]


def test_feedback_csv_reader(tmp_path: Path) -> None:
    feed = feedback_feed(timestamp={"unit": "s"})
    path = tmp_path / "ratings.csv"
    path.write_text(
        "ep,step,r,who,time,note\n"
        "ep-1,1,1,exp-7,1704187800,fine\n"
        "ep-1,2,-1,exp-7,1704187801,\n"
        'ep-1,3,+1,exp-7,1704187802,"says ""why"""\n'
        "ep-1,4,0.5,exp-7,1704187803,\n"  # read as is: the rules quarantine it
        "ep-1,x,1,exp-7,1704187804,\n"
    )
    rows, rejects = read(feed, path)
    assert rejects == [(6, "CAST")]
    assert [(r["step_index"], r["rating"], r["comment"]) for r in rows] == [
        (1.0, 1.0, "fine"),
        (2.0, -1.0, None),
        (3.0, 1.0, 'says "why"'),
        (4.0, 0.5, None),
    ]
    assert rows[0] == {
        "episode_id": "ep-1",
        "step_index": 1.0,
        "rating": 1.0,
        "rater_id": "exp-7",
        "ts": utc(2024, 1, 2, 9, 30),
        "comment": "fine",
    }
    assert "symbol" not in rows[0]


def test_feedback_parquet_reader(tmp_path: Path) -> None:
    feed = feedback_feed("parquet")
    table = pa.table(
        {
            "ep": ["ep-1", "ep-2"],
            "step": pa.array([1, 2], pa.int32()),
            "r": pa.array([-1, 0], pa.int8()),
            "who": ["exp-1", "exp-2"],
            "time": ["2024-01-02T10:00:00Z", "2024-01-02 11:00:00"],  # text, naive is UTC
            "note": [None, "ok"],
        }
    )
    assert read_parquet(feed, table, tmp_path, "f.parquet") == [
        {
            "episode_id": "ep-1",
            "step_index": 1.0,
            "rating": -1.0,
            "rater_id": "exp-1",
            "ts": utc(2024, 1, 2, 10),
            "comment": None,
        },
        {
            "episode_id": "ep-2",
            "step_index": 2.0,
            "rating": 0.0,
            "rater_id": "exp-2",
            "ts": utc(2024, 1, 2, 11),
            "comment": "ok",
        },
    ]


def test_new_kinds_name_their_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("ep,step,who,time\nep-1,1,exp,2024-01-02T00:00:00Z\n")
    with pytest.raises(FileReadError, match=r"missing columns \['r'\]"):
        select_canonical(feedback_feed(), path, "f.csv")
    path.write_text("id,agent,time,act,frac\nd1,a,2024-01-02T00:00:00Z,buy,1\n")
    with pytest.raises(FileReadError, match=r"missing columns \['sym'\]"):
        select_canonical(decisions_feed(), path, "f.csv")


def test_gzip_reader_reads_everything(tmp_path: Path) -> None:
    text = "".join(f"{trade(i, 1, 1, ms(i))}\n" for i in range(1, 2001))
    path = tmp_path / BINANCE_NAME.replace(".csv", ".csv.gz")
    path.write_bytes(gzip.compress(text.encode()))
    rows, rejects = read(binance_feed(), path)
    assert (len(rows), rejects) == (2000, [])
