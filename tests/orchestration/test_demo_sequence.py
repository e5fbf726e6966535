"""The demo owns its sequence: its daemon ingests with the episodes automation stopped, and the
demo builds the months its raw data spans in one ranged run."""

from __future__ import annotations

import dagster as dg

from orchestration.demo import _data_months
from orchestration.sensors import episodes_automation_sensor


def test_automation_sensor_default_status_follows_the_setting():
    assert episodes_automation_sensor().default_status == dg.DefaultSensorStatus.RUNNING
    paused = episodes_automation_sensor(running=False)
    assert paused.default_status == dg.DefaultSensorStatus.STOPPED


def test_definitions_stop_the_automation_sensor_when_paused(monkeypatch):
    from orchestration.definitions import build_definitions

    monkeypatch.setenv("DD_AUTOMATION_PAUSED", "1")
    sensor = build_definitions().get_sensor_def("episodes_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.delenv("DD_AUTOMATION_PAUSED")
    sensor = build_definitions().get_sensor_def("episodes_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_data_months_span_the_raw_days_the_monthly_models_read():
    with dg.DagsterInstance.ephemeral() as instance:
        assert _data_months(instance) == []
        for table, day in (
            ("raw_bars", "2000-03-01"),
            ("raw_bars", "2000-05-31"),
            ("raw_decisions", "2000-04-15"),
            # Feedback is read whole by stg_feedback: a rating of today adds no month.
            ("raw_feedback", "2026-01-15"),
        ):
            instance.report_runless_asset_event(dg.AssetMaterialization(table, partition=day))
        assert _data_months(instance) == ["2000-03-01", "2000-04-01", "2000-05-01"]
