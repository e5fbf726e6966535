"""feature_drift (materialize() on a DuckDB warehouse), the retrain sensor (build_sensor_context
on a real ephemeral instance), the weekly schedule and the freshness checks' wiring.

The warehouse here holds only the two tables feature_drift reads (int_decision_points and
fct_decision_episodes, with the dbt models' column names), written from a seeded AR(1) market
whose mean and volatility shift at a chosen time: the drift statistics are tested in
tests/monitoring/test_drift_stats.py, the whole chain (landing -> dbt -> drift -> retrain) by the scenario.
"""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets.core.lakehouse import lakehouse_connection
from assets.core.resources import RetrainSettings, WarehouseResource
from assets.monitoring.drift_stats import DriftPolicy, WindowResult, compare_windows
from assets.monitoring.feature_drift import (
    DRIFT_KEY,
    DriftConfig,
    feature_drift,
    fold_window,
    merge_windows,
)
from orchestration.definitions import defs
from orchestration.retraining import (
    RETRAIN_DETAIL_TAG,
    RETRAIN_REASON_TAG,
    TRAIN_JOB,
    decide_retrain,
    retrain_sensor,
    weekly_retrain,
)

START = datetime(2026, 1, 5, tzinfo=UTC)
SYMBOLS = ("AAA", "BBB")


def market(n_per_symbol: int, shift_at: int | None, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decision points (one a minute per symbol) and their mature episodes' labels.

    From ``shift_at`` on, returns have a positive mean and twice the volatility, regimes turn
    volatile and good decisions become rarer: what a regime change does to the features."""
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for s, symbol in enumerate(SYMBOLS):
        ts = [START + timedelta(minutes=i) for i in range(n_per_symbol)]
        shifted = np.array([shift_at is not None and i >= shift_at for i in range(n_per_symbol)])
        scale = np.where(shifted, 2.0, 1.0)
        eps = rng.normal(size=n_per_symbol) * scale + np.where(shifted, 1.0, 0.0)
        ret_1 = np.empty(n_per_symbol)
        ret_1[0] = eps[0]
        for i in range(1, n_per_symbol):
            ret_1[i] = 0.3 * ret_1[i - 1] + eps[i]
        frame = pd.DataFrame(
            {
                "decision_point_id": [f"{symbol}-{i}" for i in range(n_per_symbol)],
                "symbol": symbol,
                "decision_ts": pd.to_datetime(ts, utc=True),
                "ret_1": ret_1 / 100,
                "ret_5": pd.Series(ret_1).rolling(5, min_periods=1).sum() / 100,
                "ret_20": pd.Series(ret_1).rolling(20, min_periods=1).sum() / 100,
                "vol_20": pd.Series(ret_1).rolling(20, min_periods=2).std().fillna(1.0) / 100,
                "volume_z_20": rng.normal(size=n_per_symbol),
                "range_pct": np.abs(rng.normal(size=n_per_symbol)) * scale / 100,
                "gap": rng.normal(size=n_per_symbol) / 1000,
                "trend_gap_50": pd.Series(ret_1).rolling(50, min_periods=1).mean() / 100,
                "vol_20_mean_100": np.full(n_per_symbol, 0.01) * np.where(shifted, 2.0, 1.0),
                "regime": np.where(
                    rng.random(n_per_symbol) < np.where(shifted, 0.8, 0.3),
                    "up_volatile",
                    "up_calm",
                ),
            }
        )
        points.append(frame)
        quality = np.where(
            rng.random(n_per_symbol) < np.where(shifted, 0.15, 0.4), "good", "neutral"
        )
        labels.append(
            pd.DataFrame(
                {
                    "episode_id": [f"{symbol}-{i}-ep" for i in range(n_per_symbol)],
                    "decision_point_id": frame["decision_point_id"],
                    "symbol": symbol,
                    "decision_ts": frame["decision_ts"],
                    "is_mature": True,
                    "decision_quality": quality,
                    "best_action_ex_ante": rng.choice(["buy", "sell", "hold"], n_per_symbol),
                    "all_steps_correct": rng.random(n_per_symbol) < 0.9,
                }
            )
        )
        del s
    return pd.concat(points, ignore_index=True), pd.concat(labels, ignore_index=True)


def write_warehouse(path, points: pd.DataFrame, labels: pd.DataFrame) -> None:
    with lakehouse_connection(path, read_only=False) as con:
        con.register("points_frame", points)
        con.register("labels_frame", labels)
        con.execute("create or replace table int_decision_points as select * from points_frame")
        con.execute("create or replace table fct_decision_episodes as select * from labels_frame")


def drift_config(**overrides) -> dict:
    return {"ops": {"feature_drift": {"config": {"window_rows": 600, **overrides}}}}


def materialize_drift(instance, warehouse_path, **overrides) -> dict:
    result = dg.materialize(
        [feature_drift],
        instance=instance,
        resources={"warehouse": WarehouseResource(path=str(warehouse_path))},
        run_config=drift_config(**overrides),
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def report_champion(
    instance, snapshot_until: str, data_until: str | None = None, version: str = "1"
) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="champion_model",
            metadata={
                "dpo_model_name": "decision-data-dpo",
                "dpo_champion_version": version,
                "snapshot_until": snapshot_until,
                "data_until": data_until or snapshot_until,
            },
        )
    )


def test_no_shift_measures_but_does_not_trigger(tmp_path):
    points, labels = market(1500, shift_at=None, seed=1)
    write_warehouse(tmp_path / "lakehouse.sqlite", points, labels)
    instance = dg.DagsterInstance.ephemeral()
    meta = materialize_drift(instance, tmp_path / "lakehouse.sqlite")
    assert meta["reference"] == "history"  # no champion yet
    assert meta["drift_triggered"] is False
    assert meta["n_current"] == 600.0
    assert meta["n_reference"] == 2400.0  # every point before the window
    assert meta["drifted_features"] == ""
    assert meta["ret_1/psi"] < 0.1
    assert "regime/js" in meta and "decision_quality/js" in meta
    # The keys the retrain sensor reads (and its tests fake with drift_event) are written.
    assert set(drift_event(False).metadata) <= set(meta)


def test_shift_after_the_champion_snapshot_triggers_once_after_two_windows(tmp_path):
    """Champion trained until minute 1000; the market shifts at minute 1200. Windows move
    forward as data arrives: drifted, drifted -> trigger; a third drifted window does not
    trigger again (hysteresis); re-materializing the same window changes nothing."""
    warehouse = tmp_path / "lakehouse.sqlite"
    snapshot = (START + timedelta(minutes=1000)).isoformat()
    data_until = (START + timedelta(minutes=1100)).isoformat()
    instance = dg.DagsterInstance.ephemeral()
    report_champion(instance, snapshot, data_until)
    seen = []
    for n in (1600, 1800, 1800, 2000):
        points, labels = market(n, shift_at=1200, seed=7)
        write_warehouse(warehouse, points, labels)
        seen.append(materialize_drift(instance, warehouse, window_rows=400))
    first, second, repeat, third = seen
    assert first["reference"] == "decision-data-dpo v1"
    assert first["snapshot_until"] == snapshot
    # The newest 400 points (200 per symbol) are all after the shift.
    assert first["window_start"] >= (START + timedelta(minutes=1200)).isoformat()
    assert "ret_1" in first["drifted_features"] and "regime" in first["drifted_features"]
    assert first["drift_triggered"] is False  # one drifted window is not enough
    assert second["drift_triggered"] is True
    assert "2 consecutive" in second["drift_reason"] or "trigger" in second["drift_reason"]
    assert repeat["drift_triggered"] is False
    assert repeat["drift_reason"].startswith("same window")
    assert third["drift_triggered"] is False  # disarmed until the drift clears
    assert json.loads(json.dumps(third["drift_state"]))["state"]["triggers"] == 1
    # New data: every mature episode after the newest decision of the champion's dataset.
    assert second["new_mature_episodes"] == 2 * (1800 - 1101)


def test_the_config_sets_the_policy_thresholds_it_names():
    assert DriftConfig().policy() == DriftPolicy()
    thresholds = {"psi_threshold": 0.3, "wasserstein_threshold": 0.7, "js_threshold": 0.1}
    thresholds |= {"fdr_q": 0.01, "min_rows": 50, "consecutive_windows": 3}
    policy = DriftConfig(**thresholds, window_rows=10).policy()
    assert policy == DriftPolicy(**thresholds)
    assert policy.clear_windows == DriftPolicy.clear_windows  # not a setting of the config


def test_a_new_champion_resets_the_detector():
    state = {"state": {"armed": False, "triggers": 1}, "window_key": {"reference": "v1"}}
    empty = WindowResult(features=(), n_reference=0, n_current=0, skipped_reason="x")
    record, triggered, _ = fold_window(
        state, empty, {"reference": "v2", "window_end": "t"}, DriftConfig().policy()
    )
    assert record["state"]["armed"] is True and record["state"]["triggers"] == 0
    assert triggered is False


def test_merge_windows_applies_one_fdr_correction():
    points, _ = market(1500, shift_at=1200, seed=5)
    policy = DriftConfig().policy()
    ref, cur = (
        points[points.decision_ts < points.decision_ts.min() + timedelta(minutes=1000)],
        (points[points.decision_ts >= points.decision_ts.min() + timedelta(minutes=1200)]),
    )
    a = compare_windows(ref, cur, ["ret_1", "gap"], [], policy)
    b = compare_windows(ref, cur, [], ["regime"], policy)
    merged = merge_windows([a, b], policy)
    assert [f.feature for f in merged.features] == ["ret_1", "gap", "regime"]
    # BH over three p-values: every q is at least its p and at most 3p.
    for f in merged.features:
        assert f.p_value <= f.q_value <= min(1.0, 3 * f.p_value) + 1e-12
    assert {f.feature for f in merged.drifted_features} >= {"ret_1", "regime"}


# ---------------------------------------------------------------- the retrain sensor


def drift_event(triggered: bool, **extra) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        asset_key=DRIFT_KEY,
        metadata={
            "drift_triggered": triggered,
            "drift_reason": "2 consecutive drifted windows" if triggered else "armed: clean",
            "drifted_features": "ret_1, regime" if triggered else "",
            "reference": "decision-data-dpo v1",
            "snapshot_until": extra.pop("snapshot_until", "2026-01-05T16:40:00+00:00"),
            "window_end": "2026-01-06T00:00:00+00:00",
            "new_mature_episodes": extra.pop("new_mature_episodes", 10),
            **extra,
        },
    )


def evaluate(instance, cursor=None, min_new=8000, paused=False):
    settings = RetrainSettings(min_new_mature_episodes=min_new, paused=paused)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        resources={"retrain_settings": settings},
    )
    result = retrain_sensor(context)
    return result, context


def test_retrain_sensor_launches_once_on_a_drift_trigger_with_its_reason():
    instance = dg.DagsterInstance.ephemeral()
    result, _ = evaluate(instance)
    assert isinstance(result, dg.SkipReason)  # nothing measured yet

    instance.report_runless_asset_event(drift_event(False))
    result, _ = evaluate(instance)
    assert not result.run_requests and "no trigger" in result.skip_reason.skip_message
    cursor = result.cursor

    instance.report_runless_asset_event(drift_event(True))
    result, _ = evaluate(instance, cursor)
    (request,) = result.run_requests
    assert request.tags[RETRAIN_REASON_TAG] == "drift"
    assert "ret_1, regime" in request.tags[RETRAIN_DETAIL_TAG]
    assert request.run_key.startswith("drift-")
    cursor = result.cursor

    # Re-evaluated with the same cursor: nothing new, no second launch.
    result, _ = evaluate(instance, cursor)
    assert isinstance(result, dg.SkipReason)

    # The same records read again from an old cursor (a restarted daemon whose cursor
    # was lost) give the same run key, which Dagster launches only once.
    again, _ = evaluate(instance, None)
    assert again.run_requests[0].run_key == request.run_key


def test_a_paused_retrain_sensor_consumes_triggers_without_launching():
    """The demo's daemon runs paused: its triggers are read, and do not fire once it resumes."""
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(drift_event(True))
    result, _ = evaluate(instance, paused=True)
    assert not result.run_requests
    assert "paused" in result.skip_reason.skip_message
    assert "would retrain for drift" in result.skip_reason.skip_message
    resumed, _ = evaluate(instance, result.cursor)
    assert isinstance(resumed, dg.SkipReason)  # nothing new since: no late launch
    instance.report_runless_asset_event(drift_event(True))
    (request,) = evaluate(instance, result.cursor)[0].run_requests  # a new trigger fires
    assert request.tags[RETRAIN_REASON_TAG] == "drift"


def test_retrain_sensor_does_not_launch_while_training_is_in_flight():
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def(TRAIN_JOB)
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
    instance.report_runless_asset_event(drift_event(True))
    result, _ = evaluate(instance)
    assert not result.run_requests
    assert "in flight" in result.skip_reason.skip_message
    assert json.loads(result.cursor)["last_drift_record"] > 0  # handled, not re-fired


def test_retrain_sensor_new_data_trigger_fires_once_per_snapshot():
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(drift_event(False, new_mature_episodes=9000))
    result, _ = evaluate(instance, min_new=8000)
    (request,) = result.run_requests
    assert request.tags[RETRAIN_REASON_TAG] == "new_data"
    assert "9000 mature episodes" in request.tags[RETRAIN_DETAIL_TAG]
    instance.report_runless_asset_event(drift_event(False, new_mature_episodes=9500))
    result, _ = evaluate(instance, result.cursor, min_new=8000)
    assert not result.run_requests  # same snapshot: already retrained for it
    instance.report_runless_asset_event(
        drift_event(False, new_mature_episodes=9000, snapshot_until="2026-02-01T00:00:00")
    )
    result, _ = evaluate(instance, result.cursor, min_new=8000)
    assert result.run_requests[0].tags[RETRAIN_REASON_TAG] == "new_data"


def test_decide_retrain_prefers_a_drift_trigger_among_several_records():
    records = [
        (5, {"drift_triggered": True, "reference": "v1", "drifted_features": "gap"}),
        (6, {"drift_triggered": False, "new_mature_episodes": 99999}),
    ]
    cursor, decision = decide_retrain(records, {}, 100)
    assert decision[0] == "drift" and decision[2] == "drift-5"
    assert cursor["last_drift_record"] == 6


def test_weekly_schedule_tags_its_reason_and_skips_while_training_runs(tmp_path):
    # A persistent instance (the schedule context needs an instance ref). Instances are not
    # used as context managers in this module: entering one makes it the process's current
    # defs-state storage, which outlives the block and breaks Definitions built by later tests.
    instance = dg.DagsterInstance.local_temp(str(tmp_path))
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 29, 3, tzinfo=UTC)
    )
    request = weekly_retrain(context)
    assert request.tags[RETRAIN_REASON_TAG] == "schedule"
    assert weekly_retrain._cron_schedule == "0 3 * * 0"
    instance.create_run_for_job(
        defs.resolve_job_def(TRAIN_JOB), status=dg.DagsterRunStatus.STARTING
    )
    assert isinstance(weekly_retrain(context), dg.SkipReason)


def test_definitions_wire_monitoring_freshness_and_retraining():
    graph = defs.resolve_asset_graph()
    drift = graph.get(DRIFT_KEY)
    assert drift.group_name == "monitoring"
    assert {"int_decision_points", "fct_decision_episodes", "champion_model"} <= {
        k.to_user_string() for k in drift.parent_keys
    }
    assert drift.automation_condition is not None
    checks = {
        (k.asset_key.to_user_string(), k.name)
        for k in graph.asset_check_keys
        if "freshness" in k.name
    }
    assert ("raw_trades", "freshness_check") in checks
    assert ("fct_decision_episodes", "freshness_check") in checks
    assert defs.resolve_sensor_def("freshness_checks_sensor") is not None
    assert defs.resolve_sensor_def("retrain_sensor").job_name == TRAIN_JOB


def test_accuracy_drop_test_against_a_hand_computed_z():
    from assets.monitoring.feature_drift import accuracy_drop_test

    # 30/100 recent vs 60/100 on test: pooled 0.45, se = sqrt(.45 * .55 * .02) = 0.07036,
    # z = 0.30 / 0.07036 = 4.264, one-sided p = 1.0e-5.
    drop, p = accuracy_drop_test(30, 100, 60, 100)
    assert drop == pytest.approx(0.30)
    assert p == pytest.approx(1.004e-5, rel=0.01)
    # Better recently: no evidence of a drop.
    assert accuracy_drop_test(70, 100, 60, 100)[1] > 0.9
