"""When models retrain: the ``train_models`` job, the retrain sensor and the weekly schedule.

Three reasons to retrain, each carried by the run as the tag ``decision_data/retrain_reason``
(and into the checkpoint's lineage.json and the training assets' metadata):

- ``drift``: a ``feature_drift`` materialization says ``drift_triggered`` (its hysteresis
  already demanded that the drift persist and fires once per drift episode);
- ``new_data``: at least ``min_new_mature_episodes`` mature episodes exist after the champion's
  training snapshot (or in all, before the first champion); once per snapshot;
- ``schedule``: the weekly cron, whatever the data says (a model also ages without drift).

The sensor reads only the Dagster instance (feature_drift's metadata), never the warehouse,
so it stays cheap and never contends with a dbt writer. Its cursor holds the last
feature_drift record it handled and the snapshots it already retrained for: restart-safe, and
run keys make a re-evaluated tick request nothing twice. No launch while a train_models run is
queued or in flight: the drift it would react to is already being handled.
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

from assets.core.automation import RETRAIN_DETAIL_TAG, RETRAIN_REASON_TAG
from assets.core.materializations import plain_metadata
from assets.core.resources import RetrainSettings

TRAIN_JOB = "train_models"
DRIFT_KEY = dg.AssetKey("feature_drift")

# Sunday 03:00 UTC: markets closed, the week's data landed.
DEFAULT_RETRAIN_CRON = "0 3 * * 0"

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def train_models_job(tags: dict[str, str] | None = None) -> Any:
    """The ``train_models`` job. ``tags``: its runs' tags, here the Kubernetes resources of a
    training run pod (``TrainingResource.run_tags``: ``dagster-k8s/config`` with GPU requests
    and limits, node selector and tolerations), which orchestration.definitions passes from
    the settings; none on the laptop."""
    return dg.define_asset_job(
        TRAIN_JOB,
        selection=dg.AssetSelection.groups("training"),
        tags=tags or None,
        description=(
            "Train sft_model, then dpo_model from it, and prm_model (one MLflow run each); "
            "evaluate them (model_evaluation) and move the registry alias champion "
            "(champion_model) only if the blocking check beats_champion passes. Launched by "
            "retrain_sensor (drift, new data), weekly_retrain, or by hand."
        ),
    )


def training_in_flight(instance: dg.DagsterInstance) -> list[str]:
    runs = instance.get_runs(dg.RunsFilter(job_name=TRAIN_JOB, statuses=IN_FLIGHT), limit=5)
    return [r.run_id for r in runs]


def retrain_request(reason: str, detail: str, run_key: str | None) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        tags={RETRAIN_REASON_TAG: reason, RETRAIN_DETAIL_TAG: detail[:4000]},
    )


def decide_retrain(
    drift_records: list[tuple[int, dict[str, Any]]],
    cursor: dict[str, Any],
    min_new_mature_episodes: int,
) -> tuple[dict[str, Any], tuple[str, str, str] | None]:
    """Pure: fold new feature_drift records (storage id, metadata) into the cursor and say
    whether to retrain: (new cursor, (reason, detail, run key) or None).

    A drift trigger wins over new data; among several new records the latest decides (an
    earlier trigger is not lost: triggered records are checked first)."""
    cursor = dict(cursor)
    retrained_for = list(cursor.get("new_data_snapshots", []))
    decision = None
    for storage_id, meta in drift_records:
        cursor["last_drift_record"] = max(storage_id, cursor.get("last_drift_record", 0))
        if meta.get("drift_triggered", False):
            detail = (
                f"feature_drift vs {meta.get('reference', '?')}: "
                f"{meta.get('drifted_features', '') or 'labels'} "
                f"(window to {meta.get('window_end', '?')}); {meta.get('drift_reason', '')}"
            )
            decision = ("drift", detail, f"drift-{storage_id}")
    if decision is None and drift_records:
        storage_id, meta = drift_records[-1]
        snapshot = str(meta.get("snapshot_until", "") or "none")
        new_mature = int(meta.get("new_mature_episodes", 0) or 0)
        if new_mature >= min_new_mature_episodes and snapshot not in retrained_for:
            detail = (
                f"{new_mature} mature episodes since the champion's snapshot {snapshot} "
                f"(threshold {min_new_mature_episodes})"
            )
            decision = ("new_data", detail, f"new-data-{snapshot}")
            retrained_for.append(snapshot)
    cursor["new_data_snapshots"] = retrained_for[-20:]
    return cursor, decision


@dg.sensor(
    job_name=TRAIN_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Launches train_models when feature_drift triggers (persistent drift, FDR-controlled, "
        "with hysteresis) or when enough new mature episodes exist since the champion's "
        "snapshot. One run at a time; the reason is in the run's tags."
    ),
)
def retrain_sensor(
    context: dg.SensorEvaluationContext, retrain_settings: RetrainSettings
) -> dg.SensorResult | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {}
    after = int(cursor.get("last_drift_record", 0))
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRIFT_KEY, after_storage_id=after or None),
        limit=100,
        ascending=True,
    )
    records = [
        (r.storage_id, plain_metadata(r.asset_materialization.metadata))
        for r in result.records
        if r.asset_materialization is not None
    ]
    if not records:
        return dg.SkipReason("no new feature_drift materialization")
    new_cursor, decision = decide_retrain(records, cursor, retrain_settings.min_new_mature_episodes)
    if decision is None:
        return dg.SensorResult(
            skip_reason=f"{len(records)} new drift record(s): no trigger, "
            f"{records[-1][1].get('drift_reason', '')}",
            cursor=json.dumps(new_cursor, sort_keys=True),
        )
    reason, detail, run_key = decision
    if retrain_settings.paused:
        # Consumed, not deferred: a paused period's triggers must not fire once it ends.
        return dg.SensorResult(
            skip_reason=f"paused (DD_RETRAIN_PAUSED): would retrain for {reason}: {detail}",
            cursor=json.dumps(new_cursor, sort_keys=True),
        )
    in_flight = training_in_flight(context.instance)
    if in_flight:
        # The run in flight already answers this drift; the next champion resets the detector.
        return dg.SensorResult(
            skip_reason=f"{reason} trigger while train_models {in_flight[0]} is in flight: "
            f"not launching a second run ({detail})",
            cursor=json.dumps(new_cursor, sort_keys=True),
        )
    context.log.info(f"retrain ({reason}): {detail}")
    return dg.SensorResult(
        run_requests=[retrain_request(reason, detail, run_key)],
        cursor=json.dumps(new_cursor, sort_keys=True),
    )


@dg.schedule(
    job_name=TRAIN_JOB,
    cron_schedule=DEFAULT_RETRAIN_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly retrain (Sunday 03:00 UTC) whatever the drift says; skipped while a "
    "train_models run is in flight.",
)
def weekly_retrain(context: dg.ScheduleEvaluationContext):
    in_flight = training_in_flight(context.instance)
    if in_flight:
        return dg.SkipReason(f"train_models {in_flight[0]} is in flight")
    when = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else ""
    return retrain_request("schedule", f"weekly schedule tick {when}", None)
