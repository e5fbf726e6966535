"""Ingestion of the ``decisions`` and ``feedback`` kinds (assets/ingestion/ingest.py), no Dagster: CSV and
Parquet files through the same machinery as trades and bars, every quarantine reason with exact
counts, nothing lost per file, byte-identical re-runs and the pandera contracts.

Every row of the corpus below carries its expected verdict next to it, and a tag unique within
its file (the decision's ``rationale``, the rating's ``comment``) that identifies it in raw/ and
in quarantine/ independently of the code under test; lines that never parse are identified by
their line number.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pandera.errors
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.corpus import check_raw_contract, land_and_ingest, raw_partitions_frame

from assets.core.feeds import FeedSpec, parse_feed
from assets.core.storage import Storage
from assets.ingestion.ingest import (
    RAW_SCHEMAS,
    IngestReport,
    day_range,
    ingest_partitions,
    quarantine_path,
    raw_path,
)
from assets.ingestion.raw_contracts import raw_schema

# Reasons, spelled out (not imported) so that a changed wording fails the tests.
UNKNOWN = "unknown symbol"
NO_SYMBOL = "symbol missing or malformed"
NO_TS = "timestamp missing or unparseable"
OUTSIDE = "timestamp outside partition"
ACTION = "action not buy, sell or hold"
SIZE = "size not finite or outside [0, 1]"
HOLD = "hold with non-zero size"
DUP_DECISION = "duplicate decision_id"
RATING = "rating not -1, 0 or 1"
STEP = "step_index not a whole number >= 1"
DUP_FEEDBACK = "duplicate feedback"


def missing(column: str) -> str:
    return f"required value missing: {column}"


def cast_error(column: str, value: str) -> str:
    return (
        f'unreadable line: Error when converting column "{column}". '
        f"Could not convert string \"{value}\" to 'DOUBLE'"
    )


FEEDS: dict[str, FeedSpec] = {
    f.name: f
    for f in (
        parse_feed(
            {
                "name": "journal",
                "kind": "decisions",
                "format": "csv",
                "symbols": ["AAPL", "MSFT", "IBM"],
                "file_date_pattern": r"(?P<date>\d{4}-\d{2}-\d{2})",
                "columns": {
                    "decision_id": "id",
                    "agent_id": "agent",
                    "symbol": "sym",
                    "ts": "time",
                    "action": "act",
                    "size": "frac",
                    "rationale": "tag",
                },
            }
        ),
        parse_feed(
            {
                "name": "agent-pq",
                "kind": "decisions",
                "format": "parquet",
                "symbol": "BTCUSDT",
                "columns": {
                    "decision_id": "id",
                    "agent_id": "agent",
                    "ts": "at",
                    "action": "act",
                    "size": "frac",
                    "rationale": "tag",
                },
            }
        ),
        parse_feed(
            {
                "name": "prm",
                "kind": "feedback",
                "format": "csv",
                "timestamp": {"format": "%Y-%m-%d %H:%M:%S", "timezone": "UTC"},
                "columns": {
                    "episode_id": "ep",
                    "step_index": "step",
                    "rating": "r",
                    "rater_id": "who",
                    "ts": "time",
                    "comment": "note",
                },
            }
        ),
        parse_feed(
            {
                "name": "prm-pq",
                "kind": "feedback",
                "format": "parquet",
                "columns": {
                    "episode_id": "episode",
                    "step_index": "step",
                    "rating": "rating",
                    "rater_id": "rater",
                    "ts": "rated_at",
                    "comment": "comment",
                },
            }
        ),
    )
}
KIND_OF_FEED = {name: f.kind for name, f in FEEDS.items()}
TAG = {"decisions": "rationale", "feedback": "comment"}
DAYS = day_range("2024-01-01", "2024-01-03")


@dataclass
class File:
    """A file to land, with each row's tag and expected verdict (None: accepted). ``rows`` holds
    (tag or line number, reason); a CSV's lines are built from ``lines``."""

    feed: str
    name: str
    header: str | None = None
    lines: list[tuple[str, str | None]] = field(default_factory=list)
    table: pa.Table | None = None
    parquet_verdicts: list[str | None] = field(default_factory=list)
    raw: bytes | None = None
    error: str | None = None

    @property
    def rel(self) -> str:
        return f"landing/{self.feed}/{self.name}"

    @property
    def kind(self) -> str:
        return KIND_OF_FEED[self.feed]

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.table is not None:
            sink = io.BytesIO()
            pq.write_table(self.table, sink)
            return sink.getvalue()
        return "".join(f"{line}\n" for line in [self.header, *(t for t, _ in self.lines)]).encode()

    def expected(self) -> dict[str, str | None]:
        """Row identity (its tag, or 'line N' for a line that never parsed) -> verdict."""
        if self.table is not None:
            tags = self.table.column(FEEDS[self.feed].source_column(TAG[self.kind])).to_pylist()
            return dict(zip(tags, self.parquet_verdicts, strict=True))
        out: dict[str, str | None] = {}
        for number, (line, reason) in enumerate(self.lines, start=2):
            key = (
                f"line {number}"
                if reason and reason.startswith("unreadable")
                else line.rsplit(",", 1)[1]
            )
            assert key not in out, key
            out[key] = reason
        return out


def dec(i: str, agent: str, sym: str, time: str, act: str, frac: str, tag: str) -> str:
    return ",".join((i, agent, sym, time, act, frac, tag))


DEC_HEADER = "id,agent,sym,time,act,frac,tag"
D2 = "2024-01-02T10:00:00Z"


def decisions_csv() -> list[File]:
    day2 = File(
        "journal",
        "journal-2024-01-02.csv",
        DEC_HEADER,
        [
            (dec("d01", "alice", "AAPL", D2, "buy", "0.5", "t01"), None),
            (dec("d02", "alice", "MSFT", D2, " SELL ", "1", "t02"), None),
            (dec("d03", "bob", "IBM", D2, "Hold", "0", "t03"), None),
            (dec("d04", "bob", "AAPL", D2, "short", "0.5", "t04"), ACTION),
            (dec("d05", "bob", "AAPL", D2, "buy", "1.5", "t05"), SIZE),
            (dec("d06", "bob", "AAPL", D2, "buy", "-0.1", "t06"), SIZE),
            (dec("d07", "bob", "AAPL", D2, "buy", "inf", "t07"), SIZE),
            (dec("d08", "bob", "AAPL", D2, "buy", "nan", "t08"), missing("size")),
            (dec("d09", "bob", "AAPL", D2, "hold", "0.2", "t09"), HOLD),
            (dec("d10", "", "AAPL", D2, "buy", "0.1", "t10"), missing("agent_id")),
            (dec("", "carol", "AAPL", D2, "buy", "0.1", "t11"), missing("decision_id")),
            (dec("d12", "carol", "AAPL", D2, "", "0.1", "t12"), missing("action")),
            (dec("d13", "carol", "AAPL", D2, "buy", "", "t13"), missing("size")),
            (dec("d14", "carol", "TSLA", D2, "buy", "0.1", "t14"), UNKNOWN),
            (dec("d15", "carol", "", D2, "buy", "0.1", "t15"), NO_SYMBOL),
            (dec("d16", "carol", "AAPL", "yesterday", "buy", "0.1", "t16"), NO_TS),
            (dec("d17", "carol", "AAPL", "2024-01-01T23:59:59Z", "buy", "0.1", "t17"), OUTSIDE),
            # d01 again (another agent and symbol): the first in landing order wins.
            (dec("d01", "carol", "MSFT", D2, "sell", "0.3", "t18"), DUP_DECISION),
            # d04's first row was quarantined: this one is the first valid d04.
            (dec("d04", "carol", "AAPL", D2, "buy", "0.3", "t19"), None),
            (dec("d20", "carol", "AAPL", D2, "buy", "abc", "t20"), cast_error("frac", "abc")),
            (
                "d21,carol,AAPL," + D2 + ",buy",
                "unreadable line: Expected Number of Columns: 7 Found: 5",
            ),
            (dec("d22", "   ", "AAPL", D2, "buy", "0.1", "t22"), missing("agent_id")),
            (dec("d23", "carol", "IBM", "2024-01-02T23:59:59.999999Z", "hold", "0", "t23"), None),
        ],
    )
    # Lands after day2 (".csv" < ".resend.csv"): its repeat of d02 loses.
    resend = File(
        "journal",
        "journal-2024-01-02.resend.csv",
        DEC_HEADER,
        [
            (dec("d02", "alice", "MSFT", D2, "sell", "1", "t41"), DUP_DECISION),
            (dec("d41", "alice", "MSFT", D2, "sell", "0.4", "t42"), None),
        ],
    )
    day3 = File(
        "journal",
        "journal-2024-01-03.csv",
        DEC_HEADER,
        [
            # d01 on another day: duplicates are per feed and day.
            (dec("d01", "alice", "AAPL", "2024-01-03T09:00:00Z", "buy", "0.2", "t31"), None),
            (dec("d03", "bob", "IBM", D2, "sell", "0.2", "t32"), OUTSIDE),
            (dec("d31", "bob", "IBM", "2024-01-03T09:00:00Z", "buy", "0.2", "t33"), None),
            (dec("d31", "bob", "IBM", "2024-01-03T09:01:00Z", "buy", "0.2", "t34"), DUP_DECISION),
        ],
    )
    return [day2, resend, day3]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def decisions_parquet() -> File:
    return File(
        "agent-pq",
        "run-1.parquet",
        table=pa.table(
            {
                "id": ["p1", "p2", "p3", "p4", "p5", "p6", "p1"],
                "agent": ["agent-x"] * 7,
                "at": pa.array(
                    [
                        utc(2024, 1, 2, 1),
                        utc(2024, 1, 3, 2),
                        None,
                        utc(2024, 1, 2, 3),
                        utc(2024, 1, 2, 4),
                        utc(2024, 1, 2, 5),
                        utc(2024, 1, 2, 6),
                    ],
                    pa.timestamp("ms", tz="UTC"),
                ),
                "act": ["Buy", "sell", "buy", "hold", "hold", "buy", "sell"],
                "frac": [0.1, 0.2, 0.3, 0.0, 0.5, float("nan"), 0.7],
                "tag": ["q1", "q2", "q3", "q4", "q5", "q6", "q7"],
            }
        ),
        parquet_verdicts=[None, None, NO_TS, None, HOLD, missing("size"), DUP_DECISION],
    )


FB_HEADER = "ep,step,r,who,time,note"
F2 = "2024-01-02 10:00:00"


def fb(ep: str, step: str, r: str, who: str, time: str, note: str) -> str:
    return ",".join((ep, step, r, who, time, note))


def feedback_csv() -> File:
    return File(
        "prm",
        "ratings-1.csv",
        FB_HEADER,
        [
            (fb("ep1", "1", "1", "x1", F2, "n01"), None),
            (fb("ep1", "2", "-1", "x1", F2, "n02"), None),
            (fb("ep1", "3", "0", "x1", F2, "n03"), None),
            (fb("ep1", "4", "2", "x1", F2, "n04"), RATING),
            (fb("ep1", "5", "0.5", "x1", F2, "n05"), RATING),
            (fb("ep1", "0", "1", "x1", F2, "n06"), STEP),
            (fb("ep1", "-3", "1", "x1", F2, "n07"), STEP),
            (fb("ep1", "1.5", "1", "x1", F2, "n08"), STEP),
            (fb("ep1", "1e30", "1", "x1", F2, "n09"), STEP),
            (fb("ep1", "1", "-1", "x1", "2024-01-02 10:05:00", "n10"), DUP_FEEDBACK),
            (fb("ep1", "1", "-1", "x2", "2024-01-02 10:05:00", "n11"), None),  # another rater
            (fb("", "6", "1", "x1", F2, "n12"), missing("episode_id")),
            (fb("ep1", "6", "1", "", F2, "n13"), missing("rater_id")),
            (fb("ep1", "", "1", "x1", F2, "n14"), missing("step_index")),
            (fb("ep1", "7", "", "x1", F2, "n15"), missing("rating")),
            (fb("ep1", "8", "nan", "x1", F2, "n16"), missing("rating")),
            (fb("ep1", "9", "1", "x1", "2024-01-02T10:00:00Z", "n17"), NO_TS),  # not the format
            (fb("ep1", "9", "x", "x1", F2, "n18"), cast_error("r", "x")),
            (fb("ep1", "1", "1", "x1", "2024-01-03 09:00:00", "n19"), None),  # another day
            (fb("ep1", "10", "+1", "x1", F2, "n20"), None),
        ],
    )


def feedback_parquet() -> File:
    return File(
        "prm-pq",
        "batch-1.parquet",
        table=pa.table(
            {
                "episode": ["e1", "e1", "e1", "e1", "e1", "e2"],
                "step": pa.array([1, 2, 2, 3, 0, 1], pa.int32()),
                "rating": pa.array([1, -1, 1, 5, 1, 0], pa.int8()),
                "rater": ["r1"] * 6,
                "rated_at": pa.array(
                    [utc(2024, 1, 2, 8, m) for m in range(5)] + [utc(2024, 1, 3, 8)],
                    pa.timestamp("us", tz="UTC"),
                ),
                "comment": ["c1", "c2", "c3", "c4", "c5", "c6"],
            }
        ),
        parquet_verdicts=[None, None, DUP_FEEDBACK, RATING, STEP, None],
    )


def unreadable() -> list[File]:
    return [
        File(
            "journal",
            "journal-2024-01-03.no-action.csv",
            raw=b"id,agent,sym,time,frac,tag\nd1,a,AAPL,2024-01-03T00:00:00Z,1,t\n",
            error="missing columns ['act']",
        ),
        File("prm", "empty.csv", raw=b"", error="empty file (0 bytes)"),
    ]


def all_files() -> list[File]:
    return [
        *decisions_csv(),
        decisions_parquet(),
        feedback_csv(),
        feedback_parquet(),
        *unreadable(),
    ]


READABLE = [f for f in all_files() if f.error is None]


@dataclass
class Run:
    root: Path
    storage: Storage
    reports: dict[str, IngestReport]

    def rows(self, kind: str, quarantine: bool) -> list[dict]:
        rows = []
        for day in DAYS:
            rel = quarantine_path(kind, day) if quarantine else raw_path(kind, day)
            if self.storage.exists(rel):
                rows += [
                    {**r, "day": day} for r in pq.read_table(self.storage.uri(rel)).to_pylist()
                ]
        return rows


def build(root: Path, files: list[File]) -> Run:
    storage, _, reports = land_and_ingest(root, files, FEEDS, {"decisions": DAYS, "feedback": DAYS})
    return Run(root / "root", storage, reports)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return build(tmp_path_factory.mktemp("decisions_feedback"), all_files())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def identity(row: dict, kind: str) -> str:
    if row.get("line") is not None:
        return f"line {row['line']}"
    values = json.loads(row["record"]) if "record" in row else row
    return values[TAG[kind]]


# --------------------------------------------------------------------------------------------
# Exact verdicts, nothing lost
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("corpus_file", READABLE, ids=lambda f: f.rel)
def test_each_row_gets_its_exact_verdict_and_nothing_is_lost(run: Run, corpus_file: File) -> None:
    payload = corpus_file.payload()
    source_hash = sha256(payload)
    kind = corpus_file.kind
    if corpus_file.table is not None:
        expected_rows = pq.read_table(io.BytesIO(payload)).num_rows
    else:
        expected_rows = len([ln for ln in payload.decode().splitlines() if ln.strip()]) - 1
    assert expected_rows == len(corpus_file.expected())  # the corpus is what it says

    actual: dict[str, str | None] = {}
    for quarantine in (False, True):
        for row in run.rows(kind, quarantine):
            if row["source_hash"] == source_hash:
                assert (row["feed"], row["source_file"]) == (corpus_file.feed, corpus_file.rel)
                key = identity(row, kind)
                assert key not in actual, f"row {key} written twice"
                actual[key] = row["reason"] if quarantine else None
    assert actual == corpus_file.expected()

    (ledger,) = [f for f in run.reports[kind].files if f.source_file == corpus_file.rel]
    accepted = sum(v is None for v in actual.values())
    assert ledger.error is None
    assert (ledger.rows_read, ledger.accepted, ledger.quarantined) == (
        expected_rows,
        accepted,
        expected_rows - accepted,
    )


def test_exact_counts_by_reason_and_day(run: Run) -> None:
    for kind, report in run.reports.items():
        verdicts: Counter = Counter()
        for f in READABLE:
            if f.kind == kind:
                verdicts.update(f.expected().values())
        reasons = Counter()
        for reason, n in verdicts.items():
            if reason is not None:
                reasons[reason.split(":")[0]] += n
        assert report.reasons == dict(reasons)
        assert report.rows_accepted == verdicts[None]
        assert report.rows_read == verdicts.total()

    decisions, feedback = run.reports["decisions"], run.reports["feedback"]
    # Spelled out too, so that a corpus edit that changes them is noticed.
    assert decisions.reasons == {
        ACTION: 1,
        SIZE: 3,
        HOLD: 2,
        "required value missing": 7,
        UNKNOWN: 1,
        NO_SYMBOL: 1,
        NO_TS: 2,
        OUTSIDE: 2,
        DUP_DECISION: 4,
        "unreadable line": 2,
    }
    assert decisions.rows_by_day == {"2024-01-01": 0, "2024-01-02": 8, "2024-01-03": 3}
    assert decisions.quarantined_by_day == {"2024-01-02": 23, "2024-01-03": 2}
    assert feedback.reasons == {
        RATING: 3,
        STEP: 5,
        DUP_FEEDBACK: 2,
        "required value missing": 5,
        NO_TS: 1,
        "unreadable line": 1,
    }
    assert feedback.rows_by_day == {"2024-01-01": 0, "2024-01-02": 7, "2024-01-03": 2}
    assert feedback.quarantined_by_day == {"2024-01-02": 17}


def test_unreadable_files_are_reported_and_do_not_stop_the_others(run: Run) -> None:
    for f in unreadable():
        (ledger,) = [x for x in run.reports[f.kind].files if x.source_file == f.rel]
        assert ledger.error and f.error in ledger.error
        assert (ledger.rows_read, ledger.accepted, ledger.quarantined) == (0, 0, 0)
    for kind, report in run.reports.items():
        assert {f.source_file for f in report.file_errors} == {
            f.rel for f in unreadable() if f.kind == kind
        }


# --------------------------------------------------------------------------------------------
# What lands in raw/
# --------------------------------------------------------------------------------------------
def test_raw_files_have_the_declared_schema(run: Run) -> None:
    for kind in ("decisions", "feedback"):
        for day in DAYS:  # empty days too
            schema = pq.read_schema(run.storage.uri(raw_path(kind, day)))
            assert schema.remove_metadata() == RAW_SCHEMAS[kind], (kind, day)
    assert RAW_SCHEMAS["decisions"].names == [
        "decision_id",
        "agent_id",
        "symbol",
        "ts",
        "action",
        "size",
        "rationale",
        "feed",
        "source_file",
        "source_hash",
    ]
    assert RAW_SCHEMAS["feedback"].names == [
        "episode_id",
        "step_index",
        "rating",
        "rater_id",
        "ts",
        "comment",
        "feed",
        "source_file",
        "source_hash",
    ]


def test_accepted_decisions_hold_the_parsed_values(run: Run) -> None:
    rows = run.rows("decisions", False)
    # Landing order: feeds, then files by path, then lines.
    assert [(r["feed"], r["decision_id"], r["day"]) for r in rows] == [
        ("agent-pq", "p1", "2024-01-02"),
        ("agent-pq", "p4", "2024-01-02"),
        ("journal", "d01", "2024-01-02"),
        ("journal", "d02", "2024-01-02"),
        ("journal", "d03", "2024-01-02"),
        ("journal", "d04", "2024-01-02"),
        ("journal", "d23", "2024-01-02"),
        ("journal", "d41", "2024-01-02"),
        ("agent-pq", "p2", "2024-01-03"),
        ("journal", "d01", "2024-01-03"),
        ("journal", "d31", "2024-01-03"),
    ]
    by_tag = {r["rationale"]: r for r in rows}
    assert set(by_tag) == {
        "t01",
        "t02",
        "t03",
        "t19",
        "t23",
        "t42",
        "t31",
        "t33",
        "q1",
        "q2",
        "q4",
    }
    assert {k: v for k, v in by_tag["t02"].items() if k != "source_hash"} == {
        "decision_id": "d02",
        "agent_id": "alice",
        "symbol": "MSFT",
        "ts": utc(2024, 1, 2, 10),
        "action": "sell",  # " SELL " trimmed and lower-cased
        "size": 1.0,
        "rationale": "t02",
        "feed": "journal",
        "source_file": "landing/journal/journal-2024-01-02.csv",
        "day": "2024-01-02",
    }
    assert (by_tag["t03"]["action"], by_tag["t03"]["size"]) == ("hold", 0.0)
    assert by_tag["t19"]["agent_id"] == "carol"  # the first valid d04
    assert by_tag["t23"]["ts"] == datetime(2024, 1, 2, 23, 59, 59, 999_999, tzinfo=UTC)
    assert (by_tag["q1"]["symbol"], by_tag["q1"]["action"]) == ("BTCUSDT", "buy")
    assert by_tag["q2"]["day"] == "2024-01-03"


def test_accepted_feedback_holds_the_parsed_values(run: Run) -> None:
    rows = run.rows("feedback", False)
    by_tag = {r["comment"]: r for r in rows}
    assert set(by_tag) == {"n01", "n02", "n03", "n11", "n19", "n20", "c1", "c2", "c6"}
    assert {k: v for k, v in by_tag["n02"].items() if k != "source_hash"} == {
        "episode_id": "ep1",
        "step_index": 2,
        "rating": -1,
        "rater_id": "x1",
        "ts": utc(2024, 1, 2, 10),
        "comment": "n02",
        "feed": "prm",
        "source_file": "landing/prm/ratings-1.csv",
        "day": "2024-01-02",
    }
    assert (by_tag["n20"]["step_index"], by_tag["n20"]["rating"]) == (10, 1)
    assert by_tag["n19"]["day"] == "2024-01-03"
    assert (by_tag["c6"]["episode_id"], by_tag["c6"]["rating"], by_tag["c6"]["day"]) == (
        "e2",
        0,
        "2024-01-03",
    )


def test_quarantined_rows_keep_their_values_or_text(run: Run) -> None:
    quarantined = run.rows("decisions", True)
    (unparsed,) = [r for r in quarantined if r["line"] == 22]
    assert unparsed["record"] == "d21,carol,AAPL,2024-01-02T10:00:00Z,buy"
    (hold,) = [r for r in quarantined if r["reason"] == HOLD and r["feed"] == "journal"]
    assert json.loads(hold["record"])["size"] == 0.2
    # A row without a timestamp goes to its file's first day.
    (no_ts,) = [r for r in quarantined if r["reason"] == NO_TS and r["feed"] == "agent-pq"]
    assert no_ts["day"] == "2024-01-02"
    ratings = {
        json.loads(r["record"])["comment"]: r
        for r in run.rows("feedback", True)
        if r["line"] is None
    }
    assert json.loads(ratings["n05"]["record"])["rating"] == 0.5  # not rounded to 1


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------
def partition_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256(p.read_bytes())
        for top in ("raw", "quarantine")
        for p in sorted((root / top).rglob("data.parquet"))
    }


def test_rerun_gives_byte_identical_partitions(run: Run, tmp_path: Path) -> None:
    before = partition_hashes(run.root)
    # raw: 3 days of each kind; quarantine: decisions 2 days, feedback 1.
    assert len(before) == 3 + 3 + 2 + 1
    for kind in ("decisions", "feedback"):
        again = ingest_partitions(run.storage, FEEDS, kind, DAYS)
        assert again.data_hashes == run.reports[kind].data_hashes
        assert again.data_hashes == {d: before[raw_path(kind, d)] for d in DAYS}
    assert partition_hashes(run.root) == before
    # One day alone gives that day's rows too: duplicates are decided within a day. (Not its
    # bytes: the lineage columns' dictionaries are per run.)
    day3 = raw_path("decisions", "2024-01-03")
    rows_of_range = pq.read_table(run.storage.uri(day3)).to_pylist()
    ingest_partitions(run.storage, FEEDS, "decisions", ["2024-01-03"])
    assert pq.read_table(run.storage.uri(day3)).to_pylist() == rows_of_range
    ingest_partitions(run.storage, FEEDS, "decisions", DAYS)
    assert partition_hashes(run.root) == before
    other = build(tmp_path, all_files())
    assert partition_hashes(other.root) == before


# --------------------------------------------------------------------------------------------
# Contracts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["decisions", "feedback"])
def test_raw_partitions_satisfy_the_contract(run: Run, kind: str) -> None:
    check_raw_contract(run.storage, FEEDS, kind, run.reports[kind], DAYS)


# name: (kind, corruption, the check that must report it)
CORRUPTIONS = {
    "bad_action": (
        "decisions",
        lambda df: df.assign(action=df["action"].str.upper()),
        "isin(['buy', 'sell', 'hold'])",
    ),
    "size_above_1": ("decisions", lambda df: df.assign(size=df["size"] + 1), "in_range(0, 1)"),
    "size_nan": ("decisions", lambda df: df.assign(size=float("nan")), "not_nullable"),
    "hold_with_size": (
        "decisions",
        lambda df: df.assign(size=df["size"].where(df["action"] != "hold", 0.5)),
        "a hold decision has size 0",
    ),
    "blank_agent": (
        "decisions",
        lambda df: df.assign(agent_id=df["agent_id"].str.replace("alice", " ")),
        "not_blank",
    ),
    "unknown_symbol": (
        "decisions",
        lambda df: df.assign(symbol=df["symbol"].str.replace("AAPL", "TSLA")),
        "symbol not declared for its feed",
    ),
    "duplicate_decision": (
        "decisions",
        lambda df: pd.concat([df, df.iloc[:1]], ignore_index=True),
        "multiple_fields_uniqueness",
    ),
    "missing_rationale": (
        "decisions",
        lambda df: df.drop(columns=["rationale"]),
        "column_in_dataframe",
    ),
    "rating_2": ("feedback", lambda df: df.assign(rating=df["rating"] * 2), "isin([-1, 0, 1])"),
    "step_0": (
        "feedback",
        lambda df: df.assign(step_index=df["step_index"] - 1),
        "greater_than_or_equal_to(1)",
    ),
    "duplicate_rating": (
        "feedback",
        lambda df: pd.concat([df, df.iloc[:1]], ignore_index=True),
        "multiple_fields_uniqueness",
    ),
    "ts_on_another_day": (
        "feedback",
        lambda df: df.assign(ts=df["ts"] + pd.Timedelta(days=1)),
        "timestamp outside its partition",
    ),
    "extra_symbol": ("feedback", lambda df: df.assign(symbol="AAPL"), "column_in_schema"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corrupted_frame_fails_the_contract(run: Run, name: str) -> None:
    kind, corrupt, check = CORRUPTIONS[name]
    df = raw_partitions_frame(run.storage, kind, DAYS)
    schema = raw_schema(kind, FEEDS)
    schema.validate(df, lazy=True)
    with pytest.raises(pandera.errors.SchemaErrors) as caught:
        schema.validate(corrupt(df.copy()), lazy=True)
    assert check in set(caught.value.failure_cases["check"].astype(str))
