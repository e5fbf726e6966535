"""The one entry point: ``dagster dev -m orchestration.definitions``.

Settings are read once, here (through orchestration.resources.resources_from_env)."""

from __future__ import annotations

import dagster as dg

from assets.datasets import dataset_checks, dataset_files
from assets.episodes import dataset_models, episode_models
from assets.evaluation import evaluation_assets, evaluation_checks
from assets.feeds import load_feeds
from assets.ingestion import build_ingestion_definitions
from assets.training import training_assets
from orchestration.resources import feeds_file_from_env, resources_from_env
from orchestration.sensors import episodes_automation_sensor, landing_sensor

# Trains SFT -> DPO and PRM on the current dataset exports, evaluates them on the test split and
# promotes them when they beat the champion (no automation yet: retraining triggers come later).
# Launch it from the UI or `dagster job launch -j train_models`.
train_models = dg.define_asset_job(
    "train_models",
    selection=dg.AssetSelection.groups("training"),
    description=(
        "Train sft_model, then dpo_model from it, and prm_model (one MLflow run each); evaluate "
        "them (model_evaluation) and move the registry alias champion (champion_model) only if "
        "the blocking check beats_champion passes."
    ),
)


def build_definitions() -> dg.Definitions:
    resources = resources_from_env()
    feeds = load_feeds(feeds_file_from_env())
    landing_specs, raw_assets = build_ingestion_definitions(feeds)
    return dg.Definitions(
        assets=[
            *landing_specs,
            *raw_assets,
            episode_models,
            dataset_models,
            *dataset_files,
            *training_assets,
            *evaluation_assets,
        ],
        asset_checks=[*dataset_checks, *evaluation_checks],
        jobs=[train_models],
        sensors=[landing_sensor, episodes_automation_sensor],
        resources=resources,
    )


defs = build_definitions()
