"""Settings read from the environment: the one place that reads them, without Dagster.

The resources (:func:`assets.core.resources.resources_from_env`) and the small long-running
processes (the live collector and the replay server, which must not pay Dagster's seconds of
import) both take their settings from :func:`settings_from_env`, so they always agree.

| variable | meaning | default |
|---|---|---|
| ``DD_STORAGE_ROOT`` | storage root: a folder, or ``s3://bucket/prefix`` | ``./var`` |
| ``DD_FEEDS_FILE`` | the feeds file | ``./feeds.yaml`` |
| ``DD_LAKEHOUSE_CATALOG`` | the lakehouse's DuckLake catalog as a local SQLite file (the embedded default; several local processes use it at once) | ``./var/warehouse/lakehouse.sqlite`` |
| ``DD_LAKEHOUSE_CATALOG_DSN`` | the catalog in PostgreSQL instead (a libpq DSN, ``dbname=lake host=… user=… password=…``; a secret: the resources pass it as ``EnvVar``) | |
| ``DD_LAKEHOUSE_DATA_PATH`` | where the lakehouse's tables keep their Parquet files (a folder or ``s3://…``) | ``<storage root>/lakehouse`` |
| ``AWS_ENDPOINT_URL`` | S3-compatible endpoint (MinIO, moto, …) of s3fs and DuckDB; unset for AWS | |
| ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` | S3 keys of s3fs and DuckDB (secrets: the resources pass them as ``EnvVar``) | |
| ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` | S3 region of DuckDB's secret (s3fs is given none: see KNOWN_GOOD) | ``us-east-1`` |
| ``MLFLOW_TRACKING_URI`` | MLflow tracking store (``sqlite:///…``, ``postgresql://…``, ``http://…``); kept local, never under the storage root | ``sqlite:///./var/mlflow/mlflow.db`` |
| ``MLFLOW_REGISTRY_URI`` | model registry store, if not the tracking store | the tracking URI |
| ``MLFLOW_ARTIFACT_LOCATION`` | artifact root of a newly created experiment: checkpoints are logged there and registered versions point at them | with an ``http(s)://`` tracking server: the server's own (proxied ``mlflow-artifacts:/`` or its store); with an ``s3://`` storage root: ``<storage root>/mlflow-artifacts``; else ``./var/mlflow/artifacts`` |
| ``DD_MODEL_CACHE`` | local folder where registry / artifact checkpoints are downloaded once per version (``assets/core/model_store.py``) | ``./var/model-cache`` |
| ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` | MLflow server credentials (secrets, ``EnvVar``) | |
| ``DD_TRAINING_BASE_MODEL`` | base model of SFT and PRM | ``smollm2-135m-instruct`` |
| ``DD_TRAINING_PROFILE`` | ``cpu-small`` (few steps, short sequences) or ``gpu`` (``training/configs/*_gpu.yaml``) | ``cpu-small`` |
| ``DD_TRAINING_LAUNCH`` | ``in_process``, ``pipes`` (a subprocess through Dagster Pipes) or ``k8s`` (a Kubernetes pod through Dagster Pipes, ``PipesK8sClient``) | ``in_process`` |
| ``DD_TRAINING_K8S_IMAGE`` | image of the training pod (``k8s`` launch): the project's image, its CUDA build for GPUs | ``DAGSTER_CURRENT_IMAGE`` (the code server's image, set by Dagster's chart) |
| ``DD_TRAINING_K8S_NAMESPACE`` | namespace of the training pod | the run pod's own, else ``default`` |
| ``DD_TRAINING_K8S_SERVICE_ACCOUNT`` | service account of the training pod | the namespace's default |
| ``DD_TRAINING_K8S_ENV_SECRETS`` | comma-separated Kubernetes secrets whose keys become the training pod's environment (S3 keys, MLflow credentials) | |
| ``DD_TRAINING_K8S_SCRATCH`` | the training pod's local scratch (an ``emptyDir``): downloaded inputs, the checkpoint before it is logged, the model cache | ``/scratch`` |
| ``DD_TRAINING_GPUS`` | ``nvidia.com/gpu`` requested and limited for the process that trains (the ``k8s`` launch's pod, else the run pod through the ``dagster-k8s/config`` run tag); 0: none | ``0`` |
| ``DD_TRAINING_CPU`` / ``DD_TRAINING_MEMORY`` | CPU request and memory request = limit of that process (Kubernetes quantities) | |
| ``DD_TRAINING_NODE_SELECTOR`` | node selector of that pod, a JSON object (``{"nvidia.com/gpu.present": "true"}``) | |
| ``DD_TRAINING_TOLERATIONS`` | tolerations of that pod, a JSON list (``[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]``) | |
| ``DD_TRAINING_MAX_STEPS`` | optimizer steps per stage (overrides the profile) | profile's |
| ``DD_TRAINING_OUTPUT_ROOT`` | where a run writes its checkpoint before logging it to MLflow (local scratch; later stages and the evaluation load from the registry) | ``./var/training`` |
| ``DD_RETRAIN_MIN_NEW_MATURE_EPISODES`` | new mature episodes that trigger a retrain | 8000 |
| ``DD_RETRAIN_PAUSED`` | ``1``: the retrain sensor reads drift records but launches nothing (the demo's own daemon) | ``0`` |
| ``DD_AUTOMATION_PAUSED`` | ``1``: the episodes automation sensor starts stopped (the demo's own daemon: the demo builds episodes, datasets and drift itself, one ranged run per layer group) | ``0`` |
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STORAGE_ROOT = str(REPO_ROOT / "var")
DEFAULT_FEEDS_FILE = str(REPO_ROOT / "feeds.yaml")
DEFAULT_LAKEHOUSE_CATALOG = str(REPO_ROOT / "var" / "warehouse" / "lakehouse.sqlite")
LAKEHOUSE_DATA_DIR = "lakehouse"  # the default data path, under the storage root
DEFAULT_TRAINING_ROOT = str(REPO_ROOT / "var" / "training")
DEFAULT_MLFLOW_DIR = REPO_ROOT / "var" / "mlflow"
DEFAULT_TRACKING_URI = f"sqlite:///{DEFAULT_MLFLOW_DIR / 'mlflow.db'}"
DEFAULT_ARTIFACT_LOCATION = str(DEFAULT_MLFLOW_DIR / "artifacts")
MLFLOW_ARTIFACTS_DIR = "mlflow-artifacts"  # under an object-store storage root
DEFAULT_MODEL_CACHE = str(REPO_ROOT / "var" / "model-cache")
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_TRAINING_PROFILE = "cpu-small"
DEFAULT_TRAINING_LAUNCH = "in_process"
DEFAULT_TRAINING_K8S_SCRATCH = "/scratch"
# 2 x the default drift window (4 policies' episodes per decision point): enough fresh evidence
# that a refit is worth its cost even without measured drift.
DEFAULT_MIN_NEW_MATURE_EPISODES = 8000


@dataclass(frozen=True)
class Settings:
    """Every setting of the platform; empty variables count as unset."""

    storage_root: str
    s3_endpoint_url: str | None
    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    aws_region: str | None
    feeds_file: str
    lakehouse_catalog: str
    lakehouse_catalog_dsn: str | None
    lakehouse_data_path: str
    mlflow_tracking_uri: str
    mlflow_registry_uri: str | None
    mlflow_artifact_location: str | None
    mlflow_username: str | None
    mlflow_password: str | None
    training_base_model: str
    training_profile: str
    training_launch: str
    training_max_steps: int | None
    training_output_root: str
    model_cache: str
    retrain_min_new_mature_episodes: int
    retrain_paused: bool
    automation_paused: bool
    training_k8s_image: str | None = None
    training_k8s_namespace: str | None = None
    training_k8s_service_account: str | None = None
    training_k8s_env_secrets: list[str] = field(default_factory=list)
    training_k8s_scratch: str = DEFAULT_TRAINING_K8S_SCRATCH
    training_gpus: int = 0
    training_cpu: str | None = None
    training_memory: str | None = None
    training_node_selector: dict[str, str] = field(default_factory=dict)
    training_tolerations: list[dict[str, Any]] = field(default_factory=list)


def default_artifact_location(storage_root: str, tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts when ``MLFLOW_ARTIFACT_LOCATION`` is unset:
    None (the tracking server's own artifact root, e.g. its proxied ``mlflow-artifacts:/``)
    with an ``http(s)://`` server; ``<storage root>/mlflow-artifacts`` on an object-store
    root (``s3://``); else the local folder next to the SQLite store."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    if "://" in storage_root and not storage_root.startswith("file://"):
        return f"{storage_root.rstrip('/')}/{MLFLOW_ARTIFACTS_DIR}"
    return DEFAULT_ARTIFACT_LOCATION


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env

    def get(name: str, default: str | None = None) -> str | None:
        return env.get(name) or default

    max_steps = get("DD_TRAINING_MAX_STEPS")
    min_new_mature = get("DD_RETRAIN_MIN_NEW_MATURE_EPISODES")
    storage_root = get("DD_STORAGE_ROOT", DEFAULT_STORAGE_ROOT)
    tracking_uri = get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    return Settings(
        storage_root=storage_root,
        s3_endpoint_url=get("AWS_ENDPOINT_URL"),
        aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
        aws_region=get("AWS_REGION", get("AWS_DEFAULT_REGION")),
        feeds_file=get("DD_FEEDS_FILE", DEFAULT_FEEDS_FILE),
        lakehouse_catalog=get("DD_LAKEHOUSE_CATALOG", DEFAULT_LAKEHOUSE_CATALOG),
        lakehouse_catalog_dsn=get("DD_LAKEHOUSE_CATALOG_DSN"),
        lakehouse_data_path=get(
            "DD_LAKEHOUSE_DATA_PATH", f"{storage_root.rstrip('/')}/{LAKEHOUSE_DATA_DIR}"
        ),
        mlflow_tracking_uri=tracking_uri,
        mlflow_registry_uri=get("MLFLOW_REGISTRY_URI"),
        mlflow_artifact_location=get(
            "MLFLOW_ARTIFACT_LOCATION", default_artifact_location(storage_root, tracking_uri)
        ),
        mlflow_username=get("MLFLOW_TRACKING_USERNAME"),
        mlflow_password=get("MLFLOW_TRACKING_PASSWORD"),
        training_base_model=get("DD_TRAINING_BASE_MODEL", DEFAULT_BASE_MODEL),
        training_profile=get("DD_TRAINING_PROFILE", DEFAULT_TRAINING_PROFILE),
        training_launch=get("DD_TRAINING_LAUNCH", DEFAULT_TRAINING_LAUNCH),
        training_max_steps=int(max_steps) if max_steps else None,
        training_output_root=get("DD_TRAINING_OUTPUT_ROOT", DEFAULT_TRAINING_ROOT),
        model_cache=get("DD_MODEL_CACHE", DEFAULT_MODEL_CACHE),
        retrain_min_new_mature_episodes=int(min_new_mature)
        if min_new_mature
        else DEFAULT_MIN_NEW_MATURE_EPISODES,
        retrain_paused=_flag(get("DD_RETRAIN_PAUSED", "0")),
        automation_paused=_flag(get("DD_AUTOMATION_PAUSED", "0")),
        # The chart sets DAGSTER_CURRENT_IMAGE on the code server: the project's own image.
        training_k8s_image=get("DD_TRAINING_K8S_IMAGE", get("DAGSTER_CURRENT_IMAGE")),
        training_k8s_namespace=get("DD_TRAINING_K8S_NAMESPACE"),
        training_k8s_service_account=get("DD_TRAINING_K8S_SERVICE_ACCOUNT"),
        training_k8s_env_secrets=[
            name.strip()
            for name in (get("DD_TRAINING_K8S_ENV_SECRETS") or "").split(",")
            if name.strip()
        ],
        training_k8s_scratch=get("DD_TRAINING_K8S_SCRATCH", DEFAULT_TRAINING_K8S_SCRATCH),
        training_gpus=int(get("DD_TRAINING_GPUS", "0")),
        training_cpu=get("DD_TRAINING_CPU"),
        training_memory=get("DD_TRAINING_MEMORY"),
        training_node_selector=_json(get, "DD_TRAINING_NODE_SELECTOR", dict),
        training_tolerations=_json(get, "DD_TRAINING_TOLERATIONS", list),
    )


def _json(get: Any, name: str, kind: type) -> Any:
    """A JSON object or list from the variable ``name`` (empty: an empty one)."""
    text = get(name)
    value = json.loads(text) if text else kind()
    if not isinstance(value, kind):
        raise ValueError(f"{name}: expected a JSON {kind.__name__}, got {text!r}")
    return value


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def storage_settings_from_env(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Keyword arguments of ``Storage``: root and S3 settings."""
    settings = settings_from_env(env)
    return {
        "root": settings.storage_root,
        "s3_endpoint_url": settings.s3_endpoint_url,
        "aws_access_key_id": settings.aws_access_key_id,
        "aws_secret_access_key": settings.aws_secret_access_key,
    }


def feeds_file_from_env(env: Mapping[str, str] | None = None) -> str:
    """``DD_FEEDS_FILE``, else the repository's feeds.yaml."""
    return settings_from_env(env).feeds_file
