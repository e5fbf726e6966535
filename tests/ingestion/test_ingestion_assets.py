"""Raw assets through Dagster: ``materialize()`` on temp storage (local and S3) and the landing
sensor through ``build_sensor_context``."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

import assets.ingestion.ingest as ingest
from assets.core.feeds import load_feeds, parse_feed
from assets.core.resources import FeedsResource, StorageResource
from assets.core.storage import Storage
from assets.ingestion.landing import default_feed_file, land_file
from assets.ingestion.raw_assets import build_ingestion_definitions
from orchestration.sensors import landing_sensor

REPO = Path(__file__).resolve().parents[2]
FEEDS_FILE = REPO / "feeds.yaml"

TRADES_FEED = {
    "name": "acme",
    "kind": "trades",
    "format": "csv",
    "columns": {"symbol": "sym", "ts": "time", "trade_id": "id", "price": "px", "size": "qty"},
    "symbols": ["BTC", "ETH"],
}


def _resources(storage: Storage, feeds_file: Path) -> dict:
    return {
        "storage": StorageResource(
            root=storage.root,
            s3_endpoint_url=storage.fs.client_kwargs.get("endpoint_url") if storage.is_s3 else None,
            aws_access_key_id="testing" if storage.is_s3 else None,
            aws_secret_access_key="testing" if storage.is_s3 else None,
        ),
        "feeds": FeedsResource(path=str(feeds_file)),
    }


def _feeds_file(tmp_path: Path) -> Path:
    path = tmp_path / "feeds.yaml"
    default = FEEDS_FILE.read_text()
    path.write_text(default + "\n  - " + json.dumps(TRADES_FEED) + "\n")
    return path


def _raw_asset(feeds_file: Path, name: str) -> dg.AssetsDefinition:
    _, raw_assets = build_ingestion_definitions(load_feeds(feeds_file))
    return next(a for a in raw_assets if a.key == dg.AssetKey(name))


def _land_trades(storage: Storage, tmp_path: Path, name: str, lines: list[str]) -> str:
    local = tmp_path / name
    local.write_text("sym,time,id,px,qty\n" + "\n".join(lines) + "\n")
    rel, _ = land_file(storage, parse_feed(TRADES_FEED), local)
    return rel


def _check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.mark.parametrize("storage_fixture", ["local_storage", "s3_storage"])
def test_materialize_raw_trades_partition(request, tmp_path, storage_fixture):
    storage: Storage = request.getfixturevalue(storage_fixture)
    feeds_file = _feeds_file(tmp_path)
    _land_trades(
        storage,
        tmp_path,
        "a.csv",
        [
            "BTC,2024-03-01T10:00:00Z,1,100.5,0.1",
            "BTC,2024-03-01T10:00:01Z,2,-1,0.1",  # quarantined: price
            "DOGE,2024-03-01T10:00:02Z,3,1.0,5",  # quarantined: unknown symbol
            "ETH,2024-03-01T11:00:00Z,1,50,2",
        ],
    )
    result = _materialize(storage, feeds_file, "raw_trades", "2024-03-01")
    assert result.success
    (mat,) = result.asset_materializations_for_node("raw_trades")
    assert mat.partition == "2024-03-01"
    assert mat.metadata["dagster/row_count"].value == 2
    assert mat.metadata["rows_quarantined"].value == 2
    assert mat.metadata["quarantine_reasons"].value == {
        "price not positive and finite": 1,
        "unknown symbol": 1,
    }
    checks = _check_results(result)
    assert checks["contract"].passed and checks["nothing_lost"].passed
    assert not checks["quarantine_rate"].passed  # 50% quarantined: a warning, not a blocker
    assert checks["quarantine_rate"].severity == dg.AssetCheckSeverity.WARN
    with storage.local_copy("raw/trades/date=2024-03-01/data.parquet") as local:
        table = pq.read_table(local)
    assert table.column("symbol").to_pylist() == ["BTC", "ETH"]
    assert table.column("price").to_pylist() == [100.5, 50.0]
    # The data version is the partition file's content hash.
    assert (
        mat.tags["dagster/data_version"] == ingest.file_sha256(local) if not storage.is_s3 else True
    )


def _materialize(storage, feeds_file, table: str, day: str, **options) -> dg.ExecuteInProcessResult:
    """One daily partition of the raw table ``table``."""
    return dg.materialize(
        [_raw_asset(feeds_file, table)],
        resources=_resources(storage, feeds_file),
        partition_key=day,
        **options,
    )


def _contract_without_rule(monkeypatch, storage, feeds_file, table: str, day: str, dropped) -> dict:
    """One partition built with the ingestion rules that ``dropped`` picks taken out (a seeded
    bug in the SQL rules): the blocking contract check fails while nothing_lost passes; the
    contract check's metadata."""
    real_rules = ingest._rules
    monkeypatch.setattr(
        ingest,
        "_rules",
        lambda kind, feed, sym: [r for r in real_rules(kind, feed, sym) if not dropped(r)],
    )
    result = _materialize(storage, feeds_file, table, day, raise_on_error=False)
    checks = _check_results(result)
    assert not checks["contract"].passed
    assert checks["nothing_lost"].passed
    return checks["contract"].metadata


def test_blocking_contract_check_catches_a_rule_bug(monkeypatch, local_storage, tmp_path):
    """A seeded bug in the SQL rules (negative prices let through) is caught by the pandera
    contract, and the blocking check fails the run."""
    feeds_file = _feeds_file(tmp_path)
    _land_trades(local_storage, tmp_path, "a.csv", ["BTC,2024-03-01T10:00:00Z,1,-5,0.1"])
    contract = _contract_without_rule(
        monkeypatch,
        local_storage,
        feeds_file,
        "raw_trades",
        "2024-03-01",
        lambda r: "price" in r[0],
    )
    assert contract["failures"].value >= 1


def test_single_run_backfill_of_default_feed(local_storage, tmp_path):
    land_file(local_storage, load_feeds(FEEDS_FILE)["bokeh-stocks"], default_feed_file())
    result = dg.materialize(
        [_raw_asset(FEEDS_FILE, "raw_bars")],
        resources=_resources(local_storage, FEEDS_FILE),
        tags={
            ASSET_PARTITION_RANGE_START_TAG: "2004-08-16",
            ASSET_PARTITION_RANGE_END_TAG: "2004-08-22",
        },
    )
    assert result.success
    mats = result.asset_materializations_for_node("raw_bars")
    assert sorted(m.partition for m in mats) == [f"2004-08-{d}" for d in range(16, 23)]
    # AAPL, IBM, MSFT trade all week; GOOG listed on Thursday 2004-08-19; weekend days empty.
    rows = {
        d: pq.read_metadata(local_storage.uri(f"raw/bars/date=2004-08-{d}/data.parquet")).num_rows
        for d in range(16, 23)
    }
    assert rows == {16: 3, 17: 3, 18: 3, 19: 4, 20: 4, 21: 0, 22: 0}
    assert all(e.passed for e in result.get_asset_check_evaluations())


# ------------------------------------------------------------------------------------------
# Landing sensor
# ------------------------------------------------------------------------------------------
def _tick(storage: Storage, feeds_file: Path, cursor: str | None):
    context = dg.build_sensor_context(
        cursor=cursor,
        resources=_resources(storage, feeds_file),
    )
    return landing_sensor(context)


def test_sensor_requests_each_file_content_once(local_storage, tmp_path):
    feeds_file = _feeds_file(tmp_path)
    rel = _land_trades(local_storage, tmp_path, "a.csv", ["BTC,2024-03-01T10:00:00Z,1,100,1"])

    first = _tick(local_storage, feeds_file, None)
    assert len(first.run_requests) == 1
    (request,) = first.run_requests
    assert request.partition_key == "2024-03-01"
    assert request.asset_selection == [dg.AssetKey("raw_trades")]
    (event,) = first.asset_events
    assert event.asset_key == dg.AssetKey(["landing", "acme"])
    assert event.metadata["sha256"].value == local_storage.sha256(rel)

    again = _tick(local_storage, feeds_file, first.cursor)
    assert again.run_requests in (None, []) and again.skip_reason

    # Same path, new bytes (a vendor re-delivered the file): new content, new request.
    (Path(local_storage.root) / rel).write_text(
        "sym,time,id,px,qty\nBTC,2024-03-01T10:00:00Z,1,101,1\n"
    )
    changed = _tick(local_storage, feeds_file, again.cursor or first.cursor)
    assert len(changed.run_requests) == 1
    assert changed.run_requests[0].run_key != request.run_key

    # A second file for the same day re-requests that day; one request for two files.
    _land_trades(local_storage, tmp_path, "b.csv", ["ETH,2024-03-01T12:00:00Z,9,50,1"])
    _land_trades(local_storage, tmp_path, "c.csv", ["ETH,2024-03-02T12:00:00Z,10,50,1"])
    more = _tick(local_storage, feeds_file, changed.cursor)
    assert len(more.run_requests) == 1
    tags = more.run_requests[0].tags
    assert (tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG]) == (
        "2024-03-01",
        "2024-03-02",
    )


def test_sensor_turns_a_history_file_into_one_range_run(local_storage, tmp_path):
    land_file(local_storage, load_feeds(FEEDS_FILE)["bokeh-stocks"], default_feed_file())
    result = _tick(local_storage, FEEDS_FILE, None)
    (request,) = result.run_requests
    assert request.asset_selection == [dg.AssetKey("raw_bars")]
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == "2000-03-01"
    assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == "2013-03-01"


def test_sensor_reports_unreadable_files_without_requesting(local_storage, tmp_path):
    feeds_file = _feeds_file(tmp_path)
    local = tmp_path / "empty.csv"
    local.write_bytes(b"")
    land_file(local_storage, parse_feed(TRADES_FEED), local)
    result = _tick(local_storage, feeds_file, None)
    assert not result.run_requests
    (event,) = result.asset_events
    assert event.metadata["readable"].value is False
    assert "empty" in event.metadata["error"].value


# ------------------------------------------------------------------------------------------
# Decisions and feedback: the example feeds of feeds.yaml
# ------------------------------------------------------------------------------------------
DECISIONS_CSV = (
    "decision_id,agent,ticker,decided_at,action,size,why\n"
    "d-0001,alice,AAPL,2024-01-02T14:31:05Z,BUY,0.25,breakout above the 20-day high\n"
    "d-0002,alice,MSFT,2024-01-02T14:32:00Z,hold,0,\n"
    "d-0003,bob,IBM,2024-01-02T15:00:00Z,sell,1.5,too big\n"  # quarantined: size
    "d-0001,bob,IBM,2024-01-02T15:01:00Z,sell,0.5,\n"  # quarantined: duplicate decision_id
    "d-0004,bob,IBM,2024-01-03T09:00:00Z,sell,0.5,\n"  # another day
)
FEEDBACK_CSV = (
    "episode_id,step,rating,rater,rated_at,comment\n"
    "ep-0001,1,1,expert-7,2024-02-01 10:00:00,sound use of the 20-day range\n"
    "ep-0001,2,-1,expert-7,2024-02-01 10:00:30,ignores the earnings date\n"
    "ep-0001,3,0,expert-7,2024-02-01 10:01:00,\n"
    "ep-0001,4,2,expert-7,2024-02-01 10:01:30,\n"  # quarantined: rating
)


def _land_text(storage: Storage, tmp_path: Path, feed: str, name: str, text: str) -> str:
    local = tmp_path / name
    local.write_text(text)
    rel, _ = land_file(storage, load_feeds(FEEDS_FILE)[feed], local)
    return rel


def test_definitions_have_a_raw_asset_per_kind():
    _, raw_assets = build_ingestion_definitions(load_feeds(FEEDS_FILE))
    by_key = {a.key.to_user_string(): a for a in raw_assets}
    assert sorted(by_key) == ["raw_bars", "raw_decisions", "raw_feedback", "raw_trades"]
    for name, feed in (
        ("raw_decisions", "recorded-decisions"),
        ("raw_feedback", "expert-feedback"),
    ):
        asset = by_key[name]
        assert asset.backfill_policy == dg.BackfillPolicy.single_run()
        assert asset.partitions_def == by_key["raw_bars"].partitions_def
        assert asset.op.pool == f"{name}_writer"
        assert {c.name for c in asset.check_specs} == {
            "contract",
            "nothing_lost",
            "quarantine_rate",
            "landed_files_readable",
        }
        assert {d.asset_key for d in asset.specs_by_key[asset.key].deps} == {
            dg.AssetKey(["landing", feed])
        }
    assert (
        "Recorded decisions"
        in by_key["raw_decisions"].descriptions_by_key[dg.AssetKey("raw_decisions")]
    )
    assert "rating" in by_key["raw_feedback"].descriptions_by_key[dg.AssetKey("raw_feedback")]
    contract = next(c for c in by_key["raw_feedback"].check_specs if c.name == "contract")
    assert "step_index >= 1" in contract.description and "OHLC" not in contract.description


def test_materialize_raw_decisions_partition(local_storage, tmp_path):
    _land_text(local_storage, tmp_path, "recorded-decisions", "journal.csv", DECISIONS_CSV)
    result = _materialize(local_storage, FEEDS_FILE, "raw_decisions", "2024-01-02")
    assert result.success
    (mat,) = result.asset_materializations_for_node("raw_decisions")
    assert mat.partition == "2024-01-02"
    assert mat.metadata["dagster/row_count"].value == 2
    assert mat.metadata["rows_read"].value == 4  # the row of 2024-01-03 is not this partition's
    assert mat.metadata["quarantine_reasons"].value == {
        "size not finite or outside [0, 1]": 1,
        "duplicate decision_id": 1,
    }
    checks = _check_results(result)
    assert checks["contract"].passed and checks["nothing_lost"].passed
    assert checks["landed_files_readable"].passed
    table = pq.read_table(local_storage.uri("raw/decisions/date=2024-01-02/data.parquet"))
    assert table.schema.remove_metadata() == ingest.RAW_SCHEMAS["decisions"]
    assert table.select(["decision_id", "action", "size", "rationale"]).to_pylist() == [
        {
            "decision_id": "d-0001",
            "action": "buy",
            "size": 0.25,
            "rationale": "breakout above the 20-day high",
        },
        {"decision_id": "d-0002", "action": "hold", "size": 0.0, "rationale": None},
    ]
    assert mat.tags["dagster/data_version"] == ingest.file_sha256(
        Path(local_storage.uri("raw/decisions/date=2024-01-02/data.parquet"))
    )


def test_materialize_raw_feedback_partition(local_storage, tmp_path):
    _land_text(local_storage, tmp_path, "expert-feedback", "ratings.csv", FEEDBACK_CSV)
    result = _materialize(local_storage, FEEDS_FILE, "raw_feedback", "2024-02-01")
    assert result.success
    (mat,) = result.asset_materializations_for_node("raw_feedback")
    assert mat.metadata["dagster/row_count"].value == 3
    assert mat.metadata["quarantine_reasons"].value == {"rating not -1, 0 or 1": 1}
    checks = _check_results(result)
    assert checks["contract"].passed and checks["nothing_lost"].passed
    table = pq.read_table(local_storage.uri("raw/feedback/date=2024-02-01/data.parquet"))
    assert table.schema.remove_metadata() == ingest.RAW_SCHEMAS["feedback"]
    assert table.select(["episode_id", "step_index", "rating", "rater_id"]).to_pylist() == [
        {"episode_id": "ep-0001", "step_index": 1, "rating": 1, "rater_id": "expert-7"},
        {"episode_id": "ep-0001", "step_index": 2, "rating": -1, "rater_id": "expert-7"},
        {"episode_id": "ep-0001", "step_index": 3, "rating": 0, "rater_id": "expert-7"},
    ]
    with local_storage.local_copy("quarantine/feedback/date=2024-02-01/data.parquet") as local:
        (bad,) = pq.read_table(local).to_pylist()
    assert (bad["reason"], json.loads(bad["record"])["rating"]) == ("rating not -1, 0 or 1", 2)


def test_blocking_contract_check_catches_a_feedback_rule_bug(monkeypatch, local_storage, tmp_path):
    """A seeded bug (the rating rule dropped) lets a rating of 2 through the SQL rules; the
    pandera contract catches it and the blocking check fails."""
    _land_text(local_storage, tmp_path, "expert-feedback", "ratings.csv", FEEDBACK_CSV)
    contract = _contract_without_rule(
        monkeypatch,
        local_storage,
        FEEDS_FILE,
        "raw_feedback",
        "2024-02-01",
        lambda r: "rating" in r[1],
    )
    assert contract["failures_by_check"].value == {"isin([-1, 0, 1])": 1}


def test_sensor_routes_decisions_and_feedback_to_their_tables(local_storage, tmp_path):
    decisions = _land_text(
        local_storage, tmp_path, "recorded-decisions", "journal.csv", DECISIONS_CSV
    )
    result = _tick(local_storage, FEEDS_FILE, None)
    (request,) = result.run_requests
    assert request.asset_selection == [dg.AssetKey("raw_decisions")]
    assert (
        request.tags[ASSET_PARTITION_RANGE_START_TAG],
        request.tags[ASSET_PARTITION_RANGE_END_TAG],
    ) == ("2024-01-02", "2024-01-03")
    (event,) = result.asset_events
    assert event.asset_key == dg.AssetKey(["landing", "recorded-decisions"])
    assert event.metadata["path"].value == decisions

    _land_text(local_storage, tmp_path, "expert-feedback", "ratings.csv", FEEDBACK_CSV)
    more = _tick(local_storage, FEEDS_FILE, result.cursor)
    (request,) = more.run_requests
    assert request.asset_selection == [dg.AssetKey("raw_feedback")]
    assert request.partition_key == "2024-02-01"


def test_sparse_days_are_one_run_and_distant_ones_two() -> None:
    from orchestration.sensors import _spans

    weekly = [f"2010-01-{d:02d}" for d in (4, 15, 29)] + ["2010-03-30"]
    assert _spans(weekly) == [("2010-01-04", "2010-03-30")]
    assert _spans(["2010-01-04", "2010-06-30", "2010-07-01"]) == [
        ("2010-01-04", "2010-01-04"),
        ("2010-06-30", "2010-07-01"),
    ]
