"""Tests for the ingestion core (assets/ingestion/ingest.py), no Dagster: landing index, raw partitions,
the quarantine that loses nothing, determinism and atomic writes, the raw contracts, and the
embedded default feed.

The bad-input corpus (tests/helpers/corpus.py) writes each line's expected verdict next to the line.
Counts of data lines are taken from the files' bytes, not from the code under test.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pandera.errors
import pyarrow.parquet as pq
import pytest
from helpers.corpus import (
    DAY,
    DUP_TRADE,
    NEG,
    OUTSIDE,
    PARQUET_EXPECTED,
    CorpusFile,
    bars_corpus,
    bars_feed,
    binance_corpus,
    binance_feed,
    check_raw_contract,
    data_lines,
    land,
    land_and_ingest,
    ms,
    parquet_bars_feed,
    parquet_corpus,
    raw_partitions_frame,
    trade,
)

from assets.core.feeds import FeedSpec, load_feeds
from assets.core.storage import Storage
from assets.ingestion.ingest import (
    IngestReport,
    LandedFile,
    day_range,
    file_error_path,
    ingest_partitions,
    quarantine_path,
    raw_path,
    scan_landing,
)
from assets.ingestion.raw_contracts import raw_schema

REPO = Path(__file__).resolve().parents[2]
FEEDS: dict[str, FeedSpec] = {f.name: f for f in (binance_feed(), bars_feed(), parquet_bars_feed())}
TRADE_DAYS = day_range("2024-01-01", "2024-01-03")
BAR_DAYS = day_range("2024-01-01", "2024-01-04")
DAYS = {"trades": TRADE_DAYS, "bars": BAR_DAYS}
KIND_OF_FEED = {"bin": "trades", "bars": "bars", "pqbars": "bars"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hashes(root: Path, *tops: str) -> dict[str, str]:
    """sha256 of every file below the given top folders, keyed by path relative to root."""
    return {
        str(p.relative_to(root)): sha256(p.read_bytes())
        for top in tops
        for p in sorted((root / top).rglob("*"))
        if p.is_file()
    }


def read_rows(storage: Storage, kind: str, days: list[str], quarantine: bool) -> list[dict]:
    """Every row of the written partitions (plain pyarrow), with the day of its file."""
    rows = []
    for day in days:
        rel = quarantine_path(kind, day) if quarantine else raw_path(kind, day)
        if storage.exists(rel):
            for row in pq.read_table(storage.uri(rel)).to_pylist():
                rows.append({**row, "day": day})
    return rows


def row_key(row: dict, key_column: str) -> tuple[str, float]:
    """The identity of a written row: line number for lines that never parsed, else the value
    of the identifying column (from the row, or from a quarantined row's JSON record)."""
    if row.get("line") is not None:
        return ("line", float(row["line"]))
    values = json.loads(row["record"]) if "record" in row else row
    return (key_column, float(values[key_column]))


@dataclass
class CorpusRun:
    root: Path
    storage: Storage
    files: list[CorpusFile]
    landed: list[LandedFile]
    reports: dict[str, IngestReport]

    def rows(self, kind: str, quarantine: bool) -> list[dict]:
        return read_rows(self.storage, kind, DAYS[kind], quarantine)


def all_corpus() -> list[CorpusFile]:
    return binance_corpus() + bars_corpus() + parquet_corpus()


def build_corpus(root: Path, files: list[CorpusFile]) -> CorpusRun:
    storage, landed, reports = land_and_ingest(
        root, files, FEEDS, {kind: DAYS[kind] for kind in ("trades", "bars")}
    )
    return CorpusRun(root / "root", storage, files, landed, reports)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    return build_corpus(tmp_path_factory.mktemp("corpus"), all_corpus())


READABLE = [f for f in all_corpus() if f.error is None]
UNREADABLE = [f for f in all_corpus() if f.error is not None]


# --------------------------------------------------------------------------------------------
# The bad-input corpus: nothing lost, exact verdicts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("corpus_file", READABLE, ids=lambda f: f.rel)
def test_every_line_of_a_readable_file_is_accepted_or_quarantined(
    corpus_run: CorpusRun, corpus_file: CorpusFile
) -> None:
    payload = corpus_file.payload()
    source_hash = sha256(payload)
    kind = KIND_OF_FEED[corpus_file.feed]
    if corpus_file.name.endswith(".parquet"):
        expected_rows = pq.read_table(io.BytesIO(payload)).num_rows
    else:
        # Binance dumps may or may not start with a header; the CSV feed's files do.
        header = None if corpus_file.feed == "bin" else True
        expected_rows = data_lines(payload, corpus_file.name, header)
        assert expected_rows == len(corpus_file.lines)  # the corpus is what it says
    accepted = [r for r in corpus_run.rows(kind, False) if r["source_hash"] == source_hash]
    quarantined = [r for r in corpus_run.rows(kind, True) if r["source_hash"] == source_hash]
    assert len(accepted) + len(quarantined) == expected_rows
    assert {r["source_file"] for r in accepted + quarantined} == {corpus_file.rel}
    assert {r["feed"] for r in accepted + quarantined} == {corpus_file.feed}

    ledger = next(f for f in corpus_run.reports[kind].files if f.source_file == corpus_file.rel)
    assert ledger.error is None
    assert (ledger.rows_read, ledger.accepted, ledger.quarantined) == (
        expected_rows,
        len(accepted),
        len(quarantined),
    )


@pytest.mark.parametrize("corpus_file", READABLE, ids=lambda f: f.rel)
def test_each_row_gets_its_exact_verdict(corpus_run: CorpusRun, corpus_file: CorpusFile) -> None:
    source_hash = sha256(corpus_file.payload())
    kind = KIND_OF_FEED[corpus_file.feed]
    key = corpus_file.key_column if corpus_file.lines else "volume"
    expected = corpus_file.expected() if corpus_file.lines else PARQUET_EXPECTED
    actual: dict[tuple[str, float], str | None] = {}
    for quarantine in (False, True):
        for row in corpus_run.rows(kind, quarantine):
            if row["source_hash"] == source_hash:
                k = row_key(row, key)
                assert k not in actual, f"row {k} written twice"
                actual[k] = row["reason"] if quarantine else None
    assert actual == expected


def test_exact_quarantine_counts(corpus_run: CorpusRun) -> None:
    for kind, report in corpus_run.reports.items():
        files = [f for f in READABLE if KIND_OF_FEED[f.feed] == kind]
        verdicts = Counter()
        for f in files:
            verdicts.update(f.expected().values() if f.lines else PARQUET_EXPECTED.values())
        reasons: Counter = Counter()
        for reason, n in verdicts.items():
            if reason is not None:
                reasons[reason.split(":")[0]] += n
        assert report.reasons == dict(reasons)
        assert report.rows_accepted == verdicts[None]
        assert report.rows_quarantined == sum(reasons.values())
        assert report.rows_read == verdicts.total()
        assert sum(report.quarantined_by_day.values()) == report.rows_quarantined

    trades, bars = corpus_run.reports["trades"], corpus_run.reports["bars"]
    assert trades.rows_by_day == {"2024-01-01": 0, "2024-01-02": 8, "2024-01-03": 1}
    assert trades.quarantined_by_day == {"2024-01-02": 20, "2024-01-03": 1}
    assert bars.rows_by_day == {"2024-01-01": 0, "2024-01-02": 4, "2024-01-03": 2, "2024-01-04": 1}
    assert bars.quarantined_by_day == {"2024-01-02": 8, "2024-01-03": 6}


@pytest.mark.parametrize("corpus_file", UNREADABLE, ids=lambda f: f.rel)
def test_unreadable_file_is_reported_with_feed_and_file(
    corpus_run: CorpusRun, corpus_file: CorpusFile
) -> None:
    kind = KIND_OF_FEED[corpus_file.feed]
    source_hash = sha256(corpus_file.payload())
    ledgers = [f for f in corpus_run.reports[kind].files if f.source_file == corpus_file.rel]
    assert len(ledgers) == 1
    (ledger,) = ledgers
    assert ledger.error and corpus_file.error in ledger.error
    assert (ledger.feed, ledger.source_hash) == (corpus_file.feed, source_hash)
    assert ledger in corpus_run.reports[kind].file_errors
    assert (ledger.rows_read, ledger.accepted, ledger.quarantined) == (0, 0, 0)

    payload = json.loads(corpus_run.storage.read_bytes(file_error_path(ledger.feed, source_hash)))
    assert payload == {
        "feed": corpus_file.feed,
        "source_file": corpus_file.rel,
        "source_hash": source_hash,
        "error": ledger.error,
    }
    # Not a row of it anywhere: a file is ingested whole or not at all.
    for quarantine in (False, True):
        assert not [r for r in corpus_run.rows(kind, quarantine) if r["source_hash"] == source_hash]


def test_unreadable_files_do_not_stop_the_others(corpus_run: CorpusRun) -> None:
    for kind, report in corpus_run.reports.items():
        failed = {f.source_file for f in report.file_errors}
        assert failed == {f.rel for f in UNREADABLE if KIND_OF_FEED[f.feed] == kind}
        ingested = {f.source_file for f in report.files if f.accepted}
        assert ingested == {f.rel for f in READABLE if KIND_OF_FEED[f.feed] == kind}


def test_accepted_rows_hold_the_parsed_values(corpus_run: CorpusRun) -> None:
    trades = corpus_run.rows("trades", False)
    day2 = [r for r in trades if r["day"] == DAY]
    # Landing order: files by path, then lines.
    assert [(r["symbol"], r["trade_id"]) for r in day2] == [
        ("BTCUSDT", 1),
        ("BTCUSDT", 10),
        ("BTCUSDT", 16),
        ("BTCUSDT", 2),
        ("BTCUSDT", 20),
        ("DOGEUSDT", 1),
        ("ETHUSDT", 1),
        ("ETHUSDT", 2),
    ]
    by_key = {(r["symbol"], r["trade_id"]): r for r in trades}
    start = datetime(2024, 1, 2, tzinfo=UTC)
    # The first of two rows with one id wins: the original, not the repeat nor the resend.
    assert (by_key["BTCUSDT", 1]["price"], by_key["BTCUSDT", 1]["size"]) == (100.0, 1.001)
    assert by_key["BTCUSDT", 16]["price"] == 102.0
    assert by_key["BTCUSDT", 1]["ts"] == start + timedelta(seconds=1)
    assert by_key["BTCUSDT", 10]["ts"] == start + timedelta(seconds=10)  # microsecond epoch
    assert by_key["BTCUSDT", 20]["ts"] == start + timedelta(seconds=20)
    assert by_key["ETHUSDT", 2]["ts"] == start + timedelta(hours=3)
    assert by_key["BTCUSDT", 30]["ts"] == start + timedelta(days=1, seconds=5)
    # is_buyer_maker true: the taker sold.
    assert (by_key["BTCUSDT", 1]["side"], by_key["BTCUSDT", 16]["side"]) == ("sell", "buy")

    bars = {(r["feed"], r["symbol"], r["volume"]): r for r in corpus_run.rows("bars", False)}
    assert set(bars) == {
        ("bars", "AAA", 1001.0),
        ("bars", "BBB", 1002.0),
        ("bars", "BBB", 1010.0),
        ("bars", "AAA", 1014.0),
        ("bars", "BBB", 1016.0),
        ("pqbars", "ZZZ", 101.0),
        ("pqbars", "ZZZ", 104.0),
    }
    offset_bar = bars["bars", "BBB", 1016.0]
    assert offset_bar["ts"] == datetime(2024, 1, 3, 4, 30, tzinfo=UTC)
    assert offset_bar["day"] == "2024-01-03"
    assert (offset_bar["interval"], offset_bar["adj_close"]) == ("1d", 21.0)
    # Parquet timestamps that carry a zone are not shifted by the feed's (naive-only) zone.
    pq_bar = bars["pqbars", "ZZZ", 101.0]
    assert pq_bar["ts"] == datetime(2024, 1, 2, 14, tzinfo=UTC)
    assert (pq_bar["interval"], pq_bar["adj_close"]) == ("1h", None)


def test_quarantined_rows_land_in_the_partition_of_their_file(corpus_run: CorpusRun) -> None:
    quarantined = corpus_run.rows("trades", True)
    # A row of D-1 (and one of D+1) in a file named for D is quarantined under D.
    outside = {
        (r["day"], json.loads(r["record"])["trade_id"])
        for r in quarantined
        if r["reason"] == OUTSIDE and r["source_file"].endswith("BTCUSDT-trades-2024-01-02.csv")
    }
    assert outside == {(DAY, 6), (DAY, 15)}
    (d_minus_1,) = [r for r in quarantined if r["day"] == "2024-01-03"]
    assert json.loads(d_minus_1["record"])["trade_id"] == 31
    # Unparseable lines keep their text and line number.
    (short,) = [r for r in quarantined if r["line"] == 8 and r["source_file"].endswith("02.csv")]
    assert short["record"] == "8,100.0,1.008"
    # Rows without a usable timestamp and rejected lines go to the file's first day.
    bars_quarantined = corpus_run.rows("bars", True)
    no_ts = [r for r in bars_quarantined if r["reason"].startswith("timestamp missing")]
    assert [r["day"] for r in no_ts] == ["2024-01-02"]
    rejected = [r for r in bars_quarantined if r["line"] is not None]
    assert {r["day"] for r in rejected} == {"2024-01-02"}
    assert sorted(r["line"] for r in rejected) == [9, 12, 18]


# --------------------------------------------------------------------------------------------
# Immutability, determinism, atomic writes
# --------------------------------------------------------------------------------------------
def test_landed_files_are_never_modified(corpus_run: CorpusRun) -> None:
    for f in all_corpus():
        assert corpus_run.storage.sha256(f.rel) == sha256(f.payload()), f.rel
    ingest_partitions(corpus_run.storage, FEEDS, "trades", TRADE_DAYS)
    landing = file_hashes(corpus_run.root, "landing")
    assert landing == {f.rel: sha256(f.payload()) for f in all_corpus()}


def partition_hashes(root: Path) -> dict[str, str]:
    """sha256 of every raw and quarantine Parquet partition (not the file-error JSONs)."""
    return {
        path: digest
        for path, digest in file_hashes(root, "raw", "quarantine").items()
        if path.endswith("/data.parquet")
    }


def test_rerun_gives_byte_identical_partitions(corpus_run: CorpusRun, tmp_path: Path) -> None:
    before = partition_hashes(corpus_run.root)
    assert len(before) == len(TRADE_DAYS) + len(BAR_DAYS) + 4  # raw days + quarantine days
    for kind, report in corpus_run.reports.items():
        assert report.data_hashes == {day: before[raw_path(kind, day)] for day in DAYS[kind]}, (
            "reported hashes are the written files' hashes"
        )

    # Again, on a fresh connection and a fresh scan (served by the landing index).
    for kind in ("trades", "bars"):
        again = ingest_partitions(corpus_run.storage, FEEDS, kind, DAYS[kind])
        assert again.data_hashes == corpus_run.reports[kind].data_hashes
    assert partition_hashes(corpus_run.root) == before

    # And from scratch in another root: nothing depends on where or when it ran.
    other = build_corpus(tmp_path, all_corpus())
    assert partition_hashes(other.root) == before


def test_a_run_leaves_no_temporary_files(corpus_run: CorpusRun) -> None:
    leftovers = [
        p
        for p in corpus_run.root.rglob("*")
        if p.is_file() and (p.name.startswith(".tmp-") or ".staging" in p.parts)
    ]
    assert leftovers == []


SMALL = [f for f in binance_corpus() if f.name.startswith(("BTCUSDT", "DOGE"))]


def _fail_commit_at(monkeypatch: pytest.MonkeyPatch, call: int) -> list[str]:
    """Make the ``call``-th Storage.commit_file from now on raise, after nothing was written."""
    committed: list[str] = []
    original = Storage.commit_file

    def commit_file(self: Storage, local_path, rel: str) -> None:
        if len(committed) + 1 == call:
            committed.append(rel)
            raise OSError(f"injected failure committing {rel}")
        committed.append(rel)
        original(self, local_path, rel)

    monkeypatch.setattr(Storage, "commit_file", commit_file)
    return committed


@pytest.mark.parametrize("fail_at", [2, 4])
def test_failure_mid_run_leaves_old_bytes_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    # Reference: the bytes a complete run writes for the small corpus, with and without an
    # extra file landed for day D.
    extra = CorpusFile(
        "bin", "LTCUSDT-trades-2024-01-02.csv", lines=[(trade(1, 70, 1, ms(9)), None)]
    )
    old = build_corpus(tmp_path / "old", SMALL)
    new = build_corpus(tmp_path / "new", [*SMALL, extra])
    old_bytes = file_hashes(old.root, "raw", "quarantine")
    new_bytes = file_hashes(new.root, "raw", "quarantine")
    assert old_bytes != new_bytes

    # 1. A first run that fails: every partition file is complete or absent.
    storage = Storage(str(tmp_path / "fresh" / "root"))
    for f in SMALL:
        land(storage, tmp_path / "fresh", f.rel, f.payload())
    landed = scan_landing(storage, FEEDS)
    committed = _fail_commit_at(monkeypatch, fail_at)
    with pytest.raises(OSError, match="injected failure"):
        ingest_partitions(storage, FEEDS, "trades", TRADE_DAYS, landed)
    written = file_hashes(Path(storage.root), "raw", "quarantine")
    assert set(written) == set(committed[: fail_at - 1])
    assert all(old_bytes[path] == digest for path, digest in written.items())

    # 2. A rerun over old partitions that fails: each file holds the old or the new bytes.
    land(old.storage, tmp_path / "old", extra.rel, extra.payload())
    landed = scan_landing(old.storage, FEEDS)
    committed = _fail_commit_at(monkeypatch, fail_at)
    with pytest.raises(OSError, match="injected failure"):
        ingest_partitions(old.storage, FEEDS, "trades", TRADE_DAYS, landed)
    written = file_hashes(old.root, "raw", "quarantine")
    assert set(written) == set(old_bytes)
    for path, digest in written.items():
        expected = new_bytes[path] if path in committed[: fail_at - 1] else old_bytes[path]
        assert digest == expected, path
    leftovers = [p for p in old.root.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
    assert leftovers == []
    assert [p for p in (old.root / ".staging").rglob("*") if p.is_file()] == []

    # 3. Once the fault is gone, a rerun completes the partitions.
    monkeypatch.undo()
    ingest_partitions(old.storage, FEEDS, "trades", TRADE_DAYS, landed)
    assert file_hashes(old.root, "raw", "quarantine") == new_bytes


# --------------------------------------------------------------------------------------------
# Landing index
# --------------------------------------------------------------------------------------------
def test_scan_landing_hashes_each_file_once_and_rehashes_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(str(tmp_path / "root"))
    files = [f for f in all_corpus() if f.name.endswith((".csv", ".parquet"))][:6]
    for f in files:
        land(storage, tmp_path, f.rel, f.payload())
    hashed: list[str] = []
    original = Storage.sha256

    def counting_sha256(self: Storage, rel: str) -> str:
        hashed.append(rel)
        return original(self, rel)

    monkeypatch.setattr(Storage, "sha256", counting_sha256)
    first = scan_landing(storage, FEEDS)
    assert sorted(hashed) == sorted(f.rel for f in files)
    assert {f.path: f.sha256 for f in first} == {f.rel: sha256(f.payload()) for f in files}

    hashed.clear()
    second = scan_landing(storage, FEEDS)
    assert hashed == [], "a second scan reads the index, not the files"
    assert second == first
    # A new Storage on the same root (another process) uses the same index.
    assert scan_landing(Storage(str(tmp_path / "root")), FEEDS) == first
    assert hashed == []

    # The same path with new content (a vendor's re-upload): hashed again, new entry.
    changed = files[0]
    new_payload = changed.payload() + trade(99, 100.0, 9.9, ms(99)).encode() + b"\n"
    local = Path(storage.uri(changed.rel))
    stat = local.stat()
    local.write_bytes(new_payload)
    os.utime(local, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    third = scan_landing(storage, FEEDS)
    assert hashed == [changed.rel]
    by_path = {f.path: f for f in third}
    assert by_path[changed.rel].sha256 == sha256(new_payload)
    assert by_path[changed.rel].size == len(new_payload)
    assert [f for f in third if f.path != changed.rel] == [
        f for f in first if f.path != changed.rel
    ]


def test_scan_landing_records_days_and_errors(corpus_run: CorpusRun) -> None:
    by_path = {f.path: f for f in corpus_run.landed}
    assert set(by_path) == {f.rel for f in all_corpus()}
    # Days from the file name when the feed declares a pattern (even for unreadable files).
    assert by_path["landing/bin/BTCUSDT-trades-2024-01-02.csv"].dates == (DAY,)
    assert by_path["landing/bin/ETHUSDT-trades-2024-01-03.csv.gz"].dates == ("2024-01-03",)
    # Otherwise from the rows' UTC timestamps.
    assert by_path["landing/bars/2024-01.csv"].dates == ("2024-01-02", "2024-01-03", "2024-01-04")
    assert by_path["landing/pqbars/bars-1.parquet"].dates == ("2024-01-02",)
    for f in UNREADABLE:
        if f.feed != "bin":
            assert f.error in (by_path[f.rel].error or ""), f.rel
            assert by_path[f.rel].dates == ()


# --------------------------------------------------------------------------------------------
# Raw contracts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["trades", "bars"])
def test_raw_partitions_satisfy_the_contract(corpus_run: CorpusRun, kind: str) -> None:
    check_raw_contract(corpus_run.storage, FEEDS, kind, corpus_run.reports[kind], DAYS[kind])


CORRUPTIONS = {
    "negative_price": ("trades", lambda df: df.assign(price=-df["price"])),
    "negative_size": ("trades", lambda df: df.assign(size=df["size"] - 1000)),
    "bad_side": ("trades", lambda df: df.assign(side=df["side"].str.replace("sell", "SELL"))),
    "duplicate_trade": ("trades", lambda df: pd.concat([df, df.iloc[:1]], ignore_index=True)),
    "ts_on_another_day": ("trades", lambda df: df.assign(ts=df["ts"] + pd.Timedelta(days=2))),
    "not_a_hash": ("trades", lambda df: df.assign(source_hash=df["source_hash"].str[:10])),
    "extra_column": ("trades", lambda df: df.assign(extra=1)),
    "missing_column": ("trades", lambda df: df.drop(columns=["side"])),
    "unknown_symbol": ("bars", lambda df: df.assign(symbol=df["symbol"].str.replace("AAA", "CCC"))),
    "high_below_low": ("bars", lambda df: df.assign(high=df["low"] / 2)),
    "nan_close": ("bars", lambda df: df.assign(close=float("nan"))),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corrupted_frame_fails_the_contract(corpus_run: CorpusRun, name: str) -> None:
    kind, corrupt = CORRUPTIONS[name]
    df = raw_partitions_frame(corpus_run.storage, kind, DAYS[kind])
    schema = raw_schema(kind, FEEDS)
    schema.validate(df, lazy=True)
    with pytest.raises((pandera.errors.SchemaErrors, pandera.errors.SchemaError)):
        schema.validate(corrupt(df.copy()), lazy=True)


# --------------------------------------------------------------------------------------------
# The embedded default feed
# --------------------------------------------------------------------------------------------
def test_embedded_default_feed_bokeh_stocks(tmp_path: Path) -> None:
    feeds = load_feeds(REPO / "feeds.yaml")
    storage = Storage(str(tmp_path / "root"))
    source = importlib.resources.files("bokeh_sampledata").joinpath("_data", "stocks.csv.gz")
    with importlib.resources.as_file(source) as path:
        payload = path.read_bytes()
        assert storage.put_immutable(path, "landing/bokeh-stocks/stocks.csv.gz")

    # Expectations straight from the source file, independently of the ingestion.
    src = pd.read_csv(io.BytesIO(gzip.decompress(payload)), dtype={"Date": str})
    march = src[(src["Date"] >= "2000-03-01") & (src["Date"] <= "2000-03-31")]
    assert len(march) == 69  # AAPL, IBM and MSFT on 23 trading days

    landed = scan_landing(storage, feeds)
    report = ingest_partitions(
        storage, feeds, "bars", day_range("2000-03-01", "2000-03-31"), landed
    )
    assert report.file_errors == []
    assert (report.rows_accepted, report.rows_quarantined) == (len(march), 0)
    assert report.rows_by_day == {
        day: int((march["Date"] == day).sum()) for day in day_range("2000-03-01", "2000-03-31")
    }

    rows = read_rows(storage, "bars", day_range("2000-03-01", "2000-03-31"), quarantine=False)
    new_york = ZoneInfo("America/New_York")
    got = sorted(
        (
            r["symbol"],
            r["ts"].astimezone(new_york).strftime("%Y-%m-%d %H:%M"),
            r["open"],
            r["high"],
            r["low"],
            r["close"],
            r["volume"],
            r["adj_close"],
        )
        for r in rows
    )
    want = sorted(
        (t, f"{d} 00:00", o, h, lo, c, float(v), a)
        for t, d, o, h, lo, c, v, a in march.itertuples(index=False)
    )
    assert got == want
    assert {(r["feed"], r["interval"], r["source_hash"]) for r in rows} == {
        ("bokeh-stocks", "1d", sha256(payload))
    }
    assert rows[0]["ts"] == datetime(2000, 3, 1, 5, tzinfo=UTC)  # midnight in New York

    # Each of the five symbols' first close, on its first day in the source.
    first = src.sort_values("Date").groupby("Ticker").first()
    assert sorted(first.index) == ["AAPL", "FB", "GOOG", "IBM", "MSFT"]
    for ticker, row in first.iterrows():
        day_report = ingest_partitions(storage, feeds, "bars", [row["Date"]], landed)
        assert day_report.file_errors == []
        (bar_row,) = [
            r
            for r in read_rows(storage, "bars", [row["Date"]], quarantine=False)
            if r["symbol"] == ticker
        ]
        assert bar_row["close"] == row["Close"], ticker
    assert (first.loc["AAPL", "Close"], first.loc["FB", "Close"]) == (130.31, 38.2318)


def test_duplicate_ids_across_files_first_in_landing_order_wins(corpus_run: CorpusRun) -> None:
    quarantined = [
        json.loads(r["record"])
        for r in corpus_run.rows("trades", True)
        if r["reason"] == DUP_TRADE and r["source_file"].endswith(".resend.csv")
    ]
    assert sorted((q["trade_id"], q["price"]) for q in quarantined) == [(1, 100.0), (16, 99.0)]
    # The resend's id 2 is accepted: the original id 2 was quarantined (negative price).
    original_2 = [
        r
        for r in corpus_run.rows("trades", True)
        if r["reason"] == NEG and r["source_file"].endswith("02.csv")
    ]
    assert 2 in {json.loads(r["record"])["trade_id"] for r in original_2}
