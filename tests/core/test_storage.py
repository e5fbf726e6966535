"""Tests for the storage root (assets/core/storage.py) on a local folder and on a real S3 server (moto),
plus one ingestion end to end on S3, checked through boto3 rather than through Storage."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from assets.core.feeds import parse_feed
from assets.core.storage import Storage
from assets.ingestion.ingest import ingest_partitions, quarantine_path, raw_path


def _names(storage: Storage, prefix: str) -> list[str]:
    return [f.path for f in storage.list_files(prefix)]


def test_write_and_read_bytes(any_storage: Storage) -> None:
    payload = bytes(range(256)) * 3
    any_storage.write_bytes("a/b/blob.bin", payload)
    assert any_storage.read_bytes("a/b/blob.bin") == payload
    any_storage.write_bytes("a/b/blob.bin", b"second")
    assert any_storage.read_bytes("a/b/blob.bin") == b"second"
    # Writes leave no staging files visible to listings.
    assert _names(any_storage, "a") == ["a/b/blob.bin"]


def test_commit_file_consumes_local_file(any_storage: Storage, tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "out.parquet"
    local.write_bytes(payload)
    any_storage.commit_file(local, "raw/x/date=2024-01-02/data.parquet")
    assert not local.exists()
    assert any_storage.read_bytes("raw/x/date=2024-01-02/data.parquet") == payload
    (info,) = any_storage.list_files("raw/x")
    assert (info.path, info.size) == ("raw/x/date=2024-01-02/data.parquet", len(payload))


def test_put_immutable_never_overwrites(any_storage: Storage, tmp_path: Path) -> None:
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_bytes(b"a,b\n1,2\n")
    second.write_bytes(b"a,b\n3,4\n")
    assert any_storage.put_immutable(first, "landing/f/file.csv") is True
    assert first.exists(), "put_immutable copies; the caller's file stays"
    assert any_storage.put_immutable(second, "landing/f/file.csv") is False
    assert any_storage.read_bytes("landing/f/file.csv") == b"a,b\n1,2\n"


def test_list_files_sorted_relative_and_skips_hidden(any_storage: Storage) -> None:
    for rel in ("d/z.txt", "d/sub/y.txt", "d/a.txt", "d/.tmp-1-a.txt", "d/_meta.json"):
        any_storage.write_bytes(rel, rel.encode())
    any_storage.write_bytes("d/sub/_SUCCESS", b"")
    any_storage.write_bytes("other/a.txt", b"x")
    files = any_storage.list_files("d")
    assert [f.path for f in files] == ["d/a.txt", "d/sub/y.txt", "d/z.txt"]
    assert [f.size for f in files] == [len(f.path) for f in files]
    assert all(f.modified for f in files)
    assert any_storage.list_files("nothing/here") == []


def test_sha256_matches_hashlib(any_storage: Storage) -> None:
    payload = os.urandom(100_000)
    any_storage.write_bytes("h/file.bin", payload)
    assert any_storage.sha256("h/file.bin") == hashlib.sha256(payload).hexdigest()


def test_local_copy_is_readable(any_storage: Storage) -> None:
    any_storage.write_bytes("c/data.csv.gz", b"payload")
    with any_storage.local_copy("c/data.csv.gz") as local:
        assert local.read_bytes() == b"payload"
        assert local.name.endswith(".csv.gz"), "suffixes are kept for readers that sniff them"
    if any_storage.is_s3:
        assert not local.exists(), "the temporary download is removed on exit"
        assert not local.parent.exists()
    else:
        assert local.exists(), "locally the file itself is handed out"


def test_exists_and_delete(any_storage: Storage) -> None:
    any_storage.write_bytes("e/one.txt", b"1")
    any_storage.write_bytes("e/sub/two.txt", b"2")
    assert any_storage.exists("e/one.txt")
    assert not any_storage.exists("e/missing.txt")
    any_storage.delete("e/one.txt")
    assert not any_storage.exists("e/one.txt")
    assert any_storage.exists("e/sub/two.txt")
    any_storage.delete("e/missing.txt")  # no error
    any_storage.delete("e/sub")  # a prefix goes with everything below it
    assert not any_storage.exists("e/sub/two.txt")
    assert any_storage.list_files("e") == []


def test_sees_writes_of_another_instance(
    any_storage: Storage, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A long-lived Storage (a sensor's) must see files that another process landed after it
    listed: s3fs's listings cache once made ``exists`` say no, and ``put_immutable`` overwrite."""
    if any_storage.is_s3:
        other = Storage(
            any_storage.root,
            s3_endpoint_url=request.getfixturevalue("s3_server"),
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
    else:
        other = Storage(any_storage.root)
    any_storage.write_bytes("landing/f/one.csv", b"1")
    assert _names(any_storage, "landing") == ["landing/f/one.csv"]
    assert not any_storage.exists("landing/f/two.csv")

    other.write_bytes("landing/f/two.csv", b"original")
    assert any_storage.exists("landing/f/two.csv")
    assert _names(any_storage, "landing") == ["landing/f/one.csv", "landing/f/two.csv"]
    newer = tmp_path / "two.csv"
    newer.write_bytes(b"replacement")
    assert any_storage.put_immutable(newer, "landing/f/two.csv") is False
    assert other.read_bytes("landing/f/two.csv") == b"original"

    other.delete("landing/f/one.csv")
    assert not any_storage.exists("landing/f/one.csv")
    assert _names(any_storage, "landing") == ["landing/f/two.csv"]


# --------------------------------------------------------------------------------------------
# Ingestion end to end on S3
# --------------------------------------------------------------------------------------------
DAY = "2024-01-02"
TRADES_CSV = (
    b"time,id,px,qty,side\n"
    b"2024-01-02T09:30:00Z,1,100.5,2,buy\n"
    b"2024-01-02T09:30:01Z,2,100.25,0.5,SELL\n"
    b"2024-01-02T09:30:02Z,3,-1,1,buy\n"
    b"2024-01-02T23:59:59.5Z,4,101,3,s\n"
    b"2024-01-02T09:30:03Z,5,not-a-price,1,buy\n"
)


def test_ingest_trades_on_s3(s3_storage: Storage, s3_server: str, tmp_path: Path) -> None:
    feed = parse_feed(
        {
            "name": "acme",
            "kind": "trades",
            "format": "csv",
            "symbol": "BTC-USD",
            "columns": {
                "ts": "time",
                "trade_id": "id",
                "price": "px",
                "size": "qty",
                "side": "side",
            },
        }
    )
    local = tmp_path / "trades-2024-01-02.csv"
    local.write_bytes(TRADES_CSV)
    landed_rel = "landing/acme/trades-2024-01-02.csv"
    assert s3_storage.put_immutable(local, landed_rel)
    landed_hash = hashlib.sha256(TRADES_CSV).hexdigest()

    report = ingest_partitions(s3_storage, {"acme": feed}, "trades", [DAY])
    assert (report.rows_accepted, report.rows_quarantined) == (3, 2)
    assert report.reasons == {"price not positive and finite": 1, "unreadable line": 1}

    # Read back with a plain boto3 client, independent of Storage and s3fs.
    bucket, prefix = s3_storage.root[len("s3://") :].split("/", 1)
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )

    def read_table(rel: str):
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read()
        return pq.read_table(io.BytesIO(body))

    raw = read_table(raw_path("trades", DAY))
    assert raw.num_rows == 3
    rows = raw.to_pylist()
    assert [r["trade_id"] for r in rows] == [1, 2, 4]
    assert [r["price"] for r in rows] == [100.5, 100.25, 101.0]
    assert [r["size"] for r in rows] == [2.0, 0.5, 3.0]
    assert [r["side"] for r in rows] == ["buy", "sell", "sell"]
    assert [r["ts"] for r in rows] == [
        datetime(2024, 1, 2, 9, 30, 0, tzinfo=UTC),
        datetime(2024, 1, 2, 9, 30, 1, tzinfo=UTC),
        datetime(2024, 1, 2, 23, 59, 59, 500_000, tzinfo=UTC),
    ]
    assert {r["symbol"] for r in rows} == {"BTC-USD"}
    assert {r["feed"] for r in rows} == {"acme"}
    assert {r["source_file"] for r in rows} == {landed_rel}
    assert {r["source_hash"] for r in rows} == {landed_hash}

    bad, unparsed = read_table(quarantine_path("trades", DAY)).to_pylist()
    for row in (bad, unparsed):
        assert (row["feed"], row["source_file"], row["source_hash"]) == (
            "acme",
            landed_rel,
            landed_hash,
        )
    assert bad["reason"] == "price not positive and finite"
    record = json.loads(bad["record"])
    assert (record["trade_id"], record["price"]) == (3, -1.0)
    # A line the CSV reader could not type is kept verbatim with its line number.
    assert unparsed["reason"].startswith("unreadable line: ")
    assert unparsed["line"] == 6
    assert unparsed["record"] == "2024-01-02T09:30:03Z,5,not-a-price,1,buy"

    # The landed file is untouched and the Parquet hash in the report is the stored object's.
    landed = client.get_object(Bucket=bucket, Key=f"{prefix}/{landed_rel}")["Body"].read()
    assert landed == TRADES_CSV
    stored = client.get_object(Bucket=bucket, Key=f"{prefix}/{raw_path('trades', DAY)}")
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == report.data_hashes[DAY]
