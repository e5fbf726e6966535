"""The one entry point: ``dagster dev -m orchestration.definitions``.

Settings are read once, here (through assets.core.resources.resources_from_env)."""

from __future__ import annotations

import dagster as dg

from assets.core.feeds import load_feeds
from assets.core.resources import resources_from_env
from assets.core.settings import settings_from_env
from assets.episodes.datasets import dataset_checks, dataset_files
from assets.episodes.dbt_assets import dataset_models, episode_models, seed_specs
from assets.ingestion.raw_assets import build_ingestion_definitions
from assets.models.evaluation import evaluation_assets, evaluation_checks
from assets.models.training import training_assets
from assets.monitoring.feature_drift import monitoring_assets
from orchestration.freshness import freshness_checks, freshness_sensor
from orchestration.reaper import run_reaper
from orchestration.retraining import retrain_sensor, train_models_job, weekly_retrain
from orchestration.sensors import episodes_automation_sensor, landing_sensor


def build_definitions() -> dg.Definitions:
    settings = settings_from_env()
    resources = resources_from_env()
    feeds = load_feeds(settings.feeds_file)
    landing_specs, raw_assets = build_ingestion_definitions(feeds)
    return dg.Definitions(
        assets=[
            *landing_specs,
            *raw_assets,
            *seed_specs,
            episode_models,
            dataset_models,
            *dataset_files,
            *training_assets,
            *evaluation_assets,
            *monitoring_assets,
        ],
        asset_checks=[*dataset_checks, *evaluation_checks, *freshness_checks],
        # The training runs' Kubernetes resources (GPU) as run tags, from the settings.
        jobs=[train_models_job(resources["training"].run_tags())],
        schedules=[weekly_retrain],
        sensors=[
            landing_sensor,
            episodes_automation_sensor(running=not settings.automation_paused),
            retrain_sensor,
            freshness_sensor,
            run_reaper,
        ],
        resources=resources,
    )


defs = build_definitions()
