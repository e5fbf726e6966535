"""Declarative automation: episode partitions follow their upstream raw partitions, historical
ones included."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from assets.core.feeds import load_feeds
from assets.core.resources import resources_from_env
from assets.episodes.dbt_assets import episode_models
from assets.ingestion.ingest import day_range
from assets.ingestion.raw_assets import build_ingestion_definitions

REPO = Path(__file__).resolve().parents[2]


def _defs() -> dg.Definitions:
    _, raw_assets = build_ingestion_definitions(load_feeds(REPO / "feeds.yaml"))
    return dg.Definitions(assets=[*raw_assets, episode_models], resources=resources_from_env({}))


def _requested(result, key: str) -> set[str]:
    return {
        partition
        for request in result.results
        if request.key == dg.AssetKey(key)
        for partition in request.true_subset.expensively_compute_partition_keys()
    }


def _ingested(
    instance: dg.DagsterInstance,
    first: str,
    last: str,
    contract_passed=True,
    tables=("raw_bars",),
):
    """What a raw run records: a materialization per day, then its checks' results."""
    for table in tables:
        for day in day_range(first, last):
            instance.report_runless_asset_event(dg.AssetMaterialization(table, partition=day))
        for check in ("contract", "nothing_lost"):
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=dg.AssetKey(table),
                    check_name=check,
                    passed=contract_passed or check != "contract",
                )
            )


def test_historical_month_follows_its_raw_days():
    defs = _defs()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert not _requested(result, "int_bars")  # nothing upstream yet

        # A late-arriving history: every day of September 2004 (far from the latest month).
        # No trades feed at all: raw_trades stays missing and must not hold the month back.
        _ingested(instance, "2004-09-01", "2004-09-30")
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        # July and August too: September's bars complete their outcome horizons.
        assert _requested(result, "stg_bars") == {"2004-07-01", "2004-08-01", "2004-09-01"}
        assert not _requested(result, "stg_trades")  # nothing upstream ever arrived

        # The models downstream of staging are requested in the same tick: one run, one
        # dbt build of the whole chain for those months.
        assert _requested(result, "int_bars") == {"2004-07-01", "2004-08-01", "2004-09-01"}
        assert _requested(result, "int_features") == _requested(result, "int_bars")

        # Built: nothing more is requested until upstream changes again.
        for model in ("stg_bars", "int_bars", "int_features"):
            for month in ("2004-07-01", "2004-08-01", "2004-09-01"):
                instance.report_runless_asset_event(dg.AssetMaterialization(model, partition=month))
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert not _requested(result, "stg_bars")
        assert not _requested(result, "int_bars")


def test_failed_blocking_check_holds_the_month_back():
    defs = _defs()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        _ingested(instance, "2004-09-01", "2004-09-30", contract_passed=False)
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert not _requested(result, "stg_bars")


def test_a_later_raw_day_belongs_to_the_previous_month_too():
    """Outcomes mature when later bars land: a month's staging depends on the raw days of the
    next two months as well, so an October file rebuilds August, September and October."""
    defs = _defs()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        _ingested(instance, "2004-09-01", "2004-09-30")
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert _requested(result, "stg_bars") == {"2004-07-01", "2004-08-01", "2004-09-01"}
        for month in ("2004-07-01", "2004-08-01", "2004-09-01"):
            instance.report_runless_asset_event(
                dg.AssetMaterialization("stg_bars", partition=month)
            )
        result = dg.evaluate_automation_conditions(  # the builds are seen as handled
            defs=defs, instance=instance, cursor=result.cursor
        )
        _ingested(instance, "2004-10-01", "2004-10-01")
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert _requested(result, "stg_bars") == {"2004-08-01", "2004-09-01", "2004-10-01"}


def test_first_tick_on_a_built_instance_requests_nothing():
    """``make demo`` builds the months its data spans itself (one ranged run) with the
    automation sensor stopped, and leaves the other months unbuilt; a later ``dagster dev``
    starts the sensor on that instance. Its first tick must not request the unbuilt months
    (nothing is newly missing or newly updated before a first tick), and a later raw day must
    still rebuild its months."""
    defs = _defs()
    months = ("2004-07-01", "2004-08-01", "2004-09-01")
    with dg.DagsterInstance.ephemeral() as instance:
        _ingested(instance, "2004-09-01", "2004-09-30")
        for key in episode_models.keys:
            for month in months:
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=month))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.total_requested == 0

        _ingested(instance, "2004-10-01", "2004-10-01")
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert _requested(result, "stg_bars") == {"2004-08-01", "2004-09-01", "2004-10-01"}
