"""The dbt project as Dagster assets: partition window → dbt vars, one dbt build per run, dbt
tests as asset checks, lineage from the raw assets."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from helpers.resources import local_resources

from assets.core.feeds import load_feeds
from assets.core.lakehouse import lakehouse_connection
from assets.episodes.dbt_assets import episode_models
from assets.ingestion.ingest import day_range, ingest_partitions
from assets.ingestion.landing import default_feed_file, land_file

REPO = Path(__file__).resolve().parents[2]


def test_asset_graph_links_raw_to_dbt_models():
    specs = {spec.key: spec for spec in episode_models.specs}
    stg_bars = specs[dg.AssetKey("stg_bars")]
    assert {dep.asset_key for dep in stg_bars.deps} == {dg.AssetKey("raw_bars")}
    assert dg.AssetKey("stg_bars") in {d.asset_key for d in specs[dg.AssetKey("int_bars")].deps}
    assert stg_bars.group_name == "episodes"
    assert stg_bars.automation_condition.get_label() == "follow_upstream"
    assert episode_models.partitions_def.get_partition_keys()[0] == "2000-01-01"
    assert episode_models.backfill_policy == dg.BackfillPolicy.single_run()


def test_month_of_default_feed_builds_bars(local_storage, tmp_path):
    feeds = load_feeds(REPO / "feeds.yaml")
    land_file(local_storage, feeds["bokeh-stocks"], default_feed_file())
    ingest_partitions(local_storage, feeds, "bars", day_range("2004-08-01", "2004-09-30"))
    warehouse = tmp_path / "wh.duckdb"

    result = dg.materialize(
        [episode_models],
        resources=local_resources(local_storage.root, warehouse),
        partition_key="2004-09-01",
    )
    assert result.success
    built = {
        e.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }
    assert {"stg_bars", "stg_trades", "int_bars"} <= built
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)

    source = pd.read_csv(default_feed_file())
    expected = source[(source["Date"] >= "2004-09-01") & (source["Date"] <= "2004-09-30")]
    with lakehouse_connection(warehouse) as con:
        rows = con.execute("select symbol, count(*) from int_bars group by 1 order by 1").fetchall()
        closes = dict(
            con.execute(
                "select symbol, close from int_bars where bar_date = date '2004-09-01'"
            ).fetchall()
        )
    assert dict(rows) == expected.groupby("Ticker").size().to_dict()
    # The feed delivers an adjusted close: bars carry it (stg_bars adjusts for splits/dividends).
    first_day = expected[expected["Date"] == "2004-09-01"].set_index("Ticker")["Adj Close"]
    # (GOOG's adjusted close equals its close to an ulp: the factor rounds to 1, the bar stays.)
    assert closes == pytest.approx(first_day.to_dict(), rel=1e-12)


def test_subset_run_refreshes_staging_views_for_its_window(local_storage, tmp_path):
    """The automation sensor requests layer by layer; a run of int_bars alone must read the
    days of its own window (the staging views are refreshed for it)."""
    feeds = load_feeds(REPO / "feeds.yaml")
    land_file(local_storage, feeds["bokeh-stocks"], default_feed_file())
    ingest_partitions(local_storage, feeds, "bars", day_range("2004-09-01", "2004-10-31"))
    warehouse = tmp_path / "wh.duckdb"
    resources = local_resources(local_storage.root, warehouse)
    for month in ("2004-09-01", "2004-10-01"):
        result = dg.materialize(
            [episode_models], resources=resources, partition_key=month, selection=["int_bars"]
        )
        assert result.success
        assert {
            e.materialization.asset_key.to_user_string()
            for e in result.get_asset_materialization_events()
        } == {"int_bars"}
    with lakehouse_connection(warehouse) as con:
        months = con.execute(
            "select strftime(bar_date, '%Y-%m') as m, count(*) from int_bars group by 1 order by 1"
        ).fetchall()
    assert [m for m, _ in months] == ["2004-09", "2004-10"]
