"""Issue 11's corpus: pre-history rows, a re-delivery under a new name, changed content under an
old name (refused, then landed as a correction), hostile file names; every row of every landed
file is accepted, quarantined with a reason, or in a file refused with a file-level record.

The corpus (feed ``daily-index``: daily bars without a symbol column, like an index vendor's):

| file | rows | fate |
|---|---|---|
| ``idx-a.csv`` | 11 | 5 accepted (2000-01-03..07); 5 quarantined ``before the first partition`` (1999-12-27..31) and 1 ``unreadable line`` |
| ``idx-a.redelivery.csv`` | 11 | the same bytes: refused as a duplicate of ``idx-a.csv`` |
| ``idx-c.csv`` | 5 | superseded by its correction (2000-01-10..14) |
| ``idx-c.correction-1.csv`` | 6 | 6 accepted (2000-01-10..14 with one close changed, and 2000-01-17) |
| hostile names put into the landing zone by other tools | | listed as not indexed, never read |
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets.core.feeds import LandingNameError, load_feeds
from assets.core.resources import FeedsResource, StorageResource
from assets.core.storage import Storage
from assets.ingestion.ingest import (
    account_for_files,
    day_range,
    ingest_partitions,
    refused_file_path,
    scan_landing,
)
from assets.ingestion.landing import LandingConflict, land_file
from assets.ingestion.raw_assets import build_ingestion_definitions

REPO = Path(__file__).resolve().parents[2]
FEEDS_YAML = """feeds:
  - name: daily-index
    kind: bars
    format: csv
    symbol: IDX
    columns: {ts: Date, open: Open, high: High, low: Low, close: Close, volume: Volume}
    timestamp: {format: "%Y-%m-%d"}
"""
HEADER = "Date,Open,High,Low,Close,Volume\n"
PRE_HISTORY = ["1999-12-27", "1999-12-28", "1999-12-29", "1999-12-30", "1999-12-31"]
WEEK_1 = ["2000-01-03", "2000-01-04", "2000-01-05", "2000-01-06", "2000-01-07"]
WEEK_2 = ["2000-01-10", "2000-01-11", "2000-01-12", "2000-01-13", "2000-01-14"]
WINDOW = day_range("2000-01-01", "2000-01-17")
PREFIX = "landing/daily-index"
# Names refused by every entry point: separators, climbing out, hidden or reserved names,
# control characters, glob and quote characters, blanks, overlong names.
HOSTILE_NAMES = [
    "",
    ".",
    "..",
    "../x.csv",
    "nosuchdir/../../../../x.csv",
    "a/b.csv",
    "/etc/x.csv",
    "a\\b.csv",
    "..\\..\\x.csv",
    ".staging/x",
    ".hidden.csv",
    "_state.csv",
    "x\n.csv",
    "x\x00.csv",
    "x\x1b[31m.csv",
    "x\u202e.csv",
    "*.csv",
    "x?.csv",
    "[a].csv",
    "it's.csv",
    " x.csv",
    "x.csv ",
    "x" * 256 + ".csv",
]


def _bars(days: list[str], close: float = 100.0) -> str:
    return "".join(f"{d},{close},{close + 1},{close - 1},{close},1000\n" for d in days)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _land_corpus(storage: Storage, tmp_path: Path) -> dict:
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(FEEDS_YAML)
    feed = load_feeds(feeds_file)["daily-index"]
    a = _write(tmp_path, "idx-a.csv", HEADER + _bars(PRE_HISTORY) + _bars(WEEK_1) + "garbage\n")
    assert land_file(storage, feed, a) == (f"{PREFIX}/idx-a.csv", True)
    assert land_file(storage, feed, a) == (f"{PREFIX}/idx-a.csv", False)  # unchanged: a no-op
    # The vendor delivers the same bytes again under another name.
    assert land_file(storage, feed, a, name="idx-a.redelivery.csv")[1]
    c = _write(tmp_path, "idx-c.csv", HEADER + _bars(WEEK_2))
    assert land_file(storage, feed, c)[1]
    corrected = _write(
        tmp_path,
        "idx-c.csv",
        HEADER
        + _bars(WEEK_2[:2])
        + _bars(WEEK_2[2:3], 101.0)
        + _bars(WEEK_2[3:])
        + _bars(["2000-01-17"]),
    )
    with pytest.raises(LandingConflict, match="already landed with other content"):
        land_file(storage, feed, corrected)
    assert storage.read_bytes(f"{PREFIX}/idx-c.csv").decode() == HEADER + _bars(WEEK_2)
    assert land_file(storage, feed, corrected, correction=True) == (
        f"{PREFIX}/idx-c.correction-1.csv",
        True,
    )
    # The same correction again is no new version.
    assert land_file(storage, feed, corrected, correction=True)[1] is False
    return {"feeds_file": feeds_file, "feeds": load_feeds(feeds_file), "feed": feed}


def _put_hostile_files(storage: Storage) -> list[str]:
    """Files other tools could put into the landing zone (not through land_file)."""
    rels = [f"{PREFIX}/sub/x.csv", f"{PREFIX}/a\\b.csv", f"{PREFIX}/.staging/x.csv"]
    if not storage.is_s3:
        rels.append(f"{PREFIX}/x\tab.csv")
    for rel in rels:
        storage.write_bytes(rel, (HEADER + _bars(["2000-01-05"])).encode())
    return rels


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_land_file_refuses_hostile_names(name, local_storage, tmp_path):
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(FEEDS_YAML)
    feed = load_feeds(feeds_file)["daily-index"]
    local = _write(tmp_path, "ok.csv", HEADER + _bars(WEEK_1))
    outside = tmp_path.parent
    before_outside, before_root = _tree(outside), _tree(Path(local_storage.root))
    with pytest.raises(LandingNameError):
        land_file(local_storage, feed, local, name=name)
    assert _tree(outside) == before_outside, "nothing written anywhere"
    assert _tree(Path(local_storage.root)) == before_root


def test_hostile_names_refused_on_s3_and_storage_never_climbs_out(s3_storage, tmp_path):
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(FEEDS_YAML)
    feed = load_feeds(feeds_file)["daily-index"]
    local = _write(tmp_path, "ok.csv", HEADER + _bars(WEEK_1))
    for name in HOSTILE_NAMES:
        with pytest.raises(LandingNameError):
            land_file(s3_storage, feed, local, name=name)
    assert s3_storage.list_files("") == []
    # Below the name check, the storage itself refuses relative paths that leave the root.
    for rel in ("../x.csv", "landing/f/../../../x", "/abs/x", "a/./b"):
        with pytest.raises(ValueError, match="not a path inside the storage root"):
            s3_storage.write_bytes(rel, b"x")
    assert s3_storage.list_files("") == []


def test_landing_cli_refuses_changed_content_and_lands_a_correction(tmp_path):
    """The documented commands: a changed file under a landed name exits 1 with a clear error;
    ``--correction`` lands it as the next version; a hostile ``--name`` exits 1."""
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(FEEDS_YAML)
    root = tmp_path / "var"
    env = {"DD_STORAGE_ROOT": str(root), "DD_FEEDS_FILE": str(feeds_file), "PYTHONPATH": str(REPO)}
    first = _write(tmp_path, "idx-c.csv", HEADER + _bars(WEEK_2))

    def land(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "assets.ingestion.landing", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert land("daily-index", str(first)).returncode == 0
    assert "already landed (unchanged)" in land("daily-index", str(first)).stdout
    first.write_text(HEADER + _bars(WEEK_2, 99.0))
    refused = land("daily-index", str(first))
    assert refused.returncode == 1
    assert (
        "already landed with other content" in refused.stderr and "--correction" in refused.stderr
    )
    corrected = land("--correction", "daily-index", str(first))
    assert corrected.returncode == 0, corrected.stderr
    assert corrected.stdout.strip().endswith("landing/daily-index/idx-c.correction-1.csv")
    hostile = land("--name", "../../x.csv", "daily-index", str(first))
    assert hostile.returncode == 1 and "path separator" in hostile.stderr
    assert sorted(p.name for p in (root / PREFIX).iterdir()) == [
        "idx-c.correction-1.csv",
        "idx-c.csv",
    ]
    assert not (tmp_path / "x.csv").exists()


def test_corpus_every_row_accounted_for(any_storage, tmp_path):
    corpus = _land_corpus(any_storage, tmp_path)
    hostile = _put_hostile_files(any_storage)
    landed = scan_landing(any_storage, corpus["feeds"])
    not_indexed = {f.path: f.error for f in landed if not f.sha256}
    assert set(not_indexed) == set(hostile)
    assert all(e.startswith("not indexed: landed file name") for e in not_indexed.values())

    report = ingest_partitions(any_storage, corpus["feeds"], "bars", WINDOW, landed)
    assert report.rows_accepted == 11
    assert report.rows_quarantined == 6
    assert report.reasons == {"before the first partition": 5, "unreadable line": 1}
    ledgers = {f.source_file.rsplit("/", 1)[-1]: f for f in report.files}
    a, dup = ledgers["idx-a.csv"], ledgers["idx-a.redelivery.csv"]
    old_c, new_c = ledgers["idx-c.csv"], ledgers["idx-c.correction-1.csv"]
    assert (a.rows_read, a.accepted, a.quarantined, a.refused) == (11, 5, 6, None)
    assert (
        dup.refused
        == f"same content (SHA-256) as {PREFIX}/idx-a.csv, landed before it: not read twice"
    )
    assert old_c.refused == f"superseded by the correction {PREFIX}/idx-c.correction-1.csv"
    assert (new_c.rows_read, new_c.accepted, new_c.quarantined) == (6, 6, 0)
    assert {f.source_file for f in report.file_errors} == set(hostile)
    assert (
        json.loads(
            any_storage.read_bytes(refused_file_path("daily-index", "idx-a.redelivery.csv"))
        )["rows"]
        == 11
    )

    accounts = {a.source_file.rsplit("/", 1)[-1]: a for a in account_for_files(any_storage, report)}
    # accepted + quarantined (+ refused with a file-level record) = rows in the file
    assert {n: (a.rows, a.found, a.refused is not None) for n, a in accounts.items()} == {
        "idx-a.csv": (11, 11, False),
        "idx-a.redelivery.csv": (11, 0, True),
        "idx-c.csv": (5, 0, True),
        "idx-c.correction-1.csv": (6, 6, False),
    }
    assert not any(a.missing or a.pending_days for a in accounts.values())

    with any_storage.local_copy("quarantine/bars/date=2000-01-01/data.parquet") as local:
        quarantine = pq.read_table(local).to_pylist()
    assert [q["reason"] for q in quarantine].count("before the first partition") == 5
    assert (
        sorted(json.loads(q["record"])["ts"][:10] for q in quarantine if q["line"] is None)
        == PRE_HISTORY
    )
    with any_storage.local_copy("raw/bars/date=2000-01-12/data.parquet") as local:
        corrected = pq.read_table(local).to_pylist()
    assert [(r["close"], r["source_file"]) for r in corrected] == [
        (101.0, f"{PREFIX}/idx-c.correction-1.csv")
    ]


def test_nothing_lost_covers_the_whole_file_not_only_the_window(local_storage, tmp_path):
    """A run of one day still accounts for every row of the files it read: rows on days not
    built yet are pending, and a day that lost rows fails the check."""
    corpus = _land_corpus(local_storage, tmp_path)
    report = ingest_partitions(local_storage, corpus["feeds"], "bars", ["2000-01-04"])
    accounts = {
        a.source_file.rsplit("/", 1)[-1]: a for a in account_for_files(local_storage, report)
    }
    a = accounts["idx-a.csv"]
    assert (a.rows, a.found, a.missing) == (11, 1, {})
    assert a.pending_days == ["2000-01-01", "2000-01-03", "2000-01-05", "2000-01-06", "2000-01-07"]
    ingest_partitions(local_storage, corpus["feeds"], "bars", WINDOW)
    # Someone deletes a quarantine file: the rows of 1999 are missing again, and it shows.
    local_storage.delete("quarantine/bars/date=2000-01-01/data.parquet")
    report = ingest_partitions(local_storage, corpus["feeds"], "bars", ["2000-01-04"])
    (lost,) = [a for a in account_for_files(local_storage, report) if a.missing]
    assert lost.source_file == f"{PREFIX}/idx-a.csv"
    assert lost.missing == {"2000-01-01": (6, 0)}


def test_corpus_through_dagster_checks(local_storage, tmp_path):
    corpus = _land_corpus(local_storage, tmp_path)
    hostile = _put_hostile_files(local_storage)
    _, raw_assets = build_ingestion_definitions(corpus["feeds"])
    raw_bars = next(a for a in raw_assets if a.key == dg.AssetKey("raw_bars"))
    result = dg.materialize(
        [raw_bars],
        resources={
            "storage": StorageResource(root=local_storage.root),
            "feeds": FeedsResource(path=str(corpus["feeds_file"])),
        },
        tags={
            "dagster/asset_partition_range_start": WINDOW[0],
            "dagster/asset_partition_range_end": WINDOW[-1],
        },
    )
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    lost = checks["nothing_lost"]
    assert lost.passed
    meta = {k: v.value for k, v in lost.metadata.items()}
    assert meta["rows_in_files"] == 33
    assert meta["rows_found_in_raw_and_quarantine"] == 17
    assert meta["rows_in_refused_files"] == 16
    assert meta["rows_pending"] == 0 and meta["files_with_missing_rows"] == []
    readable = checks["landed_files_readable"]
    assert not readable.passed
    assert {f["file"] for f in readable.metadata["unreadable_files"].value} == set(hostile)


def test_sensor_reports_unindexable_files_once_and_rebuilds_superseded_days(
    local_storage, tmp_path
):
    from orchestration.sensors import landing_sensor

    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(FEEDS_YAML)
    feed = load_feeds(feeds_file)["daily-index"]
    resources = {
        "storage": StorageResource(root=local_storage.root),
        "feeds": FeedsResource(path=str(feeds_file)),
    }

    def tick(cursor):
        return landing_sensor(dg.build_sensor_context(cursor=cursor, resources=resources))

    land_file(local_storage, feed, _write(tmp_path, "idx-c.csv", HEADER + _bars(WEEK_2)))
    local_storage.write_bytes(f"{PREFIX}/sub/x.csv", (HEADER + _bars(WEEK_1)).encode())
    first = tick(None)
    observed = [e for e in first.asset_events if isinstance(e, dg.AssetObservation)]
    assert [e.metadata["path"].value for e in observed] == [f"{PREFIX}/sub/x.csv"]
    assert "path separator" in observed[0].metadata["error"].value
    (request,) = first.run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2000-01-10"
    assert request.tags["dagster/asset_partition_range_end"] == "2000-01-14"
    # Seen once: the next tick skips.
    assert tick(first.cursor).skip_reason.skip_message == "no new landed files"

    # A correction that drops the last day: the run covers the superseded file's days too.
    land_file(
        local_storage,
        feed,
        _write(tmp_path, "idx-c.csv", HEADER + _bars(WEEK_2[:3])),
        correction=True,
    )
    (request,) = tick(first.cursor).run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2000-01-10"
    assert request.tags["dagster/asset_partition_range_end"] == "2000-01-14"


def test_sensor_requests_no_partition_after_the_last(local_storage, tmp_path):
    """A row dated 2099 must not make the sensor request a partition that does not exist (the
    whole tick would fail, for every file); it waits for its day."""
    from orchestration.sensors import landing_sensor

    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(FEEDS_YAML)
    feed = load_feeds(feeds_file)["daily-index"]
    land_file(
        local_storage, feed, _write(tmp_path, "f.csv", HEADER + _bars(["2024-05-02", "2099-05-04"]))
    )
    context = dg.build_sensor_context(
        resources={
            "storage": StorageResource(root=local_storage.root),
            "feeds": FeedsResource(path=str(feeds_file)),
        }
    )
    (request,) = landing_sensor(context).run_requests
    assert request.partition_key == "2024-05-02"
