"""Resources: *where* data lives. Chosen once from the environment in :func:`resources_from_env`.

| variable | meaning | default |
|---|---|---|
| ``DD_STORAGE_ROOT`` | storage root: a folder, or ``s3://bucket/prefix`` | ``./var`` |
| ``DD_FEEDS_FILE`` | the feeds file | ``./feeds.yaml`` |
| ``DD_WAREHOUSE_PATH`` | the DuckDB warehouse file (always local: DuckDB cannot keep it on S3) | ``./var/warehouse/warehouse.duckdb`` |
| ``AWS_ENDPOINT_URL`` | S3-compatible endpoint (MinIO, moto, …); unset for AWS | |
| ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` | S3 keys (secrets, passed as ``EnvVar``) | |
| ``MLFLOW_TRACKING_URI`` | MLflow tracking store (``sqlite:///…``, ``postgresql://…``, ``http://…``); kept local, never under the storage root | ``sqlite:///./var/mlflow/mlflow.db`` |
| ``MLFLOW_REGISTRY_URI`` | model registry store, if not the tracking store | the tracking URI |
| ``MLFLOW_ARTIFACT_LOCATION`` | artifact root of a newly created experiment | ``./var/mlflow/artifacts`` |
| ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` | MLflow server credentials (secrets, ``EnvVar``) | |
| ``DD_TRAINING_BASE_MODEL`` | base model of SFT and PRM | ``smollm2-135m-instruct`` |
| ``DD_TRAINING_PROFILE`` | ``cpu-small`` (few steps, short sequences) or ``gpu`` (``training/configs/*_gpu.yaml``) | ``cpu-small`` |
| ``DD_TRAINING_LAUNCH`` | ``in_process`` or ``pipes`` (a subprocess through Dagster Pipes) | ``in_process`` |
| ``DD_TRAINING_MAX_STEPS`` | optimizer steps per stage (overrides the profile) | profile's |
| ``DD_TRAINING_OUTPUT_ROOT`` | where checkpoints are written (local) | ``./var/training`` |
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from dagster_dbt import DbtCliResource
from pydantic import PrivateAttr

from assets.core.dbt import dbt_project
from assets.core.feeds import FeedSpec, load_feeds
from assets.core.settings import (
    DEFAULT_ARTIFACT_LOCATION,
    DEFAULT_FEEDS_FILE,
    DEFAULT_STORAGE_ROOT,
    DEFAULT_TRACKING_URI,
    DEFAULT_TRAINING_ROOT,
    DEFAULT_WAREHOUSE_PATH,
    REPO_ROOT,
    feeds_file_from_env,
)
from assets.core.storage import Storage
from assets.core.training_run import EXPERIMENT, Tracker

TRAINING_CONFIGS = REPO_ROOT / "training" / "configs"
TRAINING_PROFILES = ("cpu-small", "gpu")
TRAINING_LAUNCHES = ("in_process", "pipes")


class StorageResource(ConfigurableResource):
    """The platform's one storage root (landing, raw, quarantine, warehouse, datasets, …)."""

    root: str = DEFAULT_STORAGE_ROOT
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None

    _storage: Storage | None = PrivateAttr(default=None)

    def get(self) -> Storage:
        if self._storage is None:
            self._storage = Storage(
                self.root,
                s3_endpoint_url=self.s3_endpoint_url,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
            )
        return self._storage


class FeedsResource(ConfigurableResource):
    """The declared feeds (see feeds.yaml)."""

    path: str = DEFAULT_FEEDS_FILE

    _feeds: dict[str, FeedSpec] | None = PrivateAttr(default=None)

    def load(self) -> dict[str, FeedSpec]:
        if self._feeds is None:
            self._feeds = load_feeds(self.path)
        return self._feeds


class WarehouseResource(ConfigurableResource):
    """The DuckDB warehouse dbt builds into. One writer at a time (pool ``duckdb_warehouse``)."""

    path: str = DEFAULT_WAREHOUSE_PATH

    @contextlib.contextmanager
    def dbt_env(self) -> Iterator[None]:
        """dbt's profile reads the path from DD_WAREHOUSE_PATH; dagster-dbt passes the process
        environment to dbt, so the variable is set for the invocation and restored after."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        previous = os.environ.get("DD_WAREHOUSE_PATH")
        os.environ["DD_WAREHOUSE_PATH"] = self.path
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("DD_WAREHOUSE_PATH", None)
            else:
                os.environ["DD_WAREHOUSE_PATH"] = previous


class MlflowResource(ConfigurableResource):
    """Where training runs, metrics, checkpoints and registered model versions are tracked.

    The tracking store is local by default (a SQLite file next to the repo, not under the
    storage root, which may be S3); any MLflow URI works (``postgresql://…``, ``http://…``)."""

    tracking_uri: str = DEFAULT_TRACKING_URI
    registry_uri: str | None = None
    artifact_location: str = DEFAULT_ARTIFACT_LOCATION
    experiment: str = EXPERIMENT
    username: str | None = None
    password: str | None = None

    def settings(self) -> dict[str, str | None]:
        """Keyword arguments of assets.core.training_run.Tracker (also sent to a Pipes child)."""
        return {
            "tracking_uri": self.tracking_uri,
            "artifact_location": self.artifact_location,
            "experiment": self.experiment,
            "registry_uri": self.registry_uri,
        }

    def secret_env(self) -> dict[str, str]:
        """Credentials as the environment MLflow reads (for this process and a child)."""
        env = {}
        if self.username:
            env["MLFLOW_TRACKING_USERNAME"] = self.username
        if self.password:
            env["MLFLOW_TRACKING_PASSWORD"] = self.password
        return env

    def tracker(self) -> Tracker:
        os.environ.update(self.secret_env())
        return Tracker(**self.settings())


class TrainingResource(ConfigurableResource):
    """How the training assets train: base model, profile, launch and where checkpoints go."""

    base_model: str = "smollm2-135m-instruct"
    profile: str = "cpu-small"
    launch: str = "in_process"
    output_root: str = DEFAULT_TRAINING_ROOT
    max_steps: int | None = None
    cpu_small_max_length: int = 512  # prompts of the marts are about 300 tokens
    cpu_small_max_steps: int = 10
    sft_overrides: dict[str, str] = {}
    dpo_overrides: dict[str, str] = {}
    prm_overrides: dict[str, str] = {}

    def config_file(self, stage: str) -> Path:
        if self.profile not in TRAINING_PROFILES:
            raise ValueError(f"training profile {self.profile!r}: expected {TRAINING_PROFILES}")
        suffix = "_gpu" if self.profile == "gpu" else ""
        return TRAINING_CONFIGS / f"{stage}{suffix}.yaml"

    def profile_overrides(self) -> list[str]:
        """The profile's overrides, then max_steps (dotted k=v)."""
        out: list[str] = []
        if self.profile == "cpu-small":
            out += [
                f"train.max_length={self.cpu_small_max_length}",
                f"train.max_steps={self.cpu_small_max_steps}",
                "train.logging_steps=1",
            ]
        if self.max_steps is not None:
            out.append(f"train.max_steps={self.max_steps}")
        return out

    def extra_overrides(self, stage: str) -> list[str]:
        """The stage's extra overrides (dotted k=v), applied last."""
        extra = {"sft": self.sft_overrides, "dpo": self.dpo_overrides, "prm": self.prm_overrides}
        return [f"{k}={v}" for k, v in extra[stage].items()]

    def validate_launch(self) -> str:
        if self.launch not in TRAINING_LAUNCHES:
            raise ValueError(f"training launch {self.launch!r}: expected {TRAINING_LAUNCHES}")
        return self.launch


def dbt_executable() -> str:
    """The dbt next to this interpreter (the project's venv), so dbt runs without an
    activated environment; plain ``dbt`` from PATH otherwise."""
    candidate = Path(sys.executable).parent / "dbt"
    return str(candidate) if candidate.exists() else "dbt"


# 2 x the default drift window (4 policies' episodes per decision point): enough fresh evidence
# that a refit is worth its cost even without measured drift.
DEFAULT_MIN_NEW_MATURE_EPISODES = 8000


class RetrainSettings(ConfigurableResource):
    """Thresholds of the retrain triggers (orchestration/retraining.py)."""

    min_new_mature_episodes: int = DEFAULT_MIN_NEW_MATURE_EPISODES


def resources_from_env(env: Mapping[str, str] | None = None) -> dict[str, ConfigurableResource]:
    """The resources for this environment; the only place that reads the settings above."""
    env = os.environ if env is None else env
    secrets: dict[str, EnvVar] = {}
    mlflow_secrets: dict[str, EnvVar] = {}
    if env.get("MLFLOW_TRACKING_USERNAME"):
        mlflow_secrets["username"] = EnvVar("MLFLOW_TRACKING_USERNAME")
    if env.get("MLFLOW_TRACKING_PASSWORD"):
        mlflow_secrets["password"] = EnvVar("MLFLOW_TRACKING_PASSWORD")
    max_steps = env.get("DD_TRAINING_MAX_STEPS")
    min_new_mature = env.get("DD_RETRAIN_MIN_NEW_MATURE_EPISODES")
    if env.get("AWS_ACCESS_KEY_ID"):
        secrets["aws_access_key_id"] = EnvVar("AWS_ACCESS_KEY_ID")
    if env.get("AWS_SECRET_ACCESS_KEY"):
        secrets["aws_secret_access_key"] = EnvVar("AWS_SECRET_ACCESS_KEY")
    return {
        "storage": StorageResource(
            root=env.get("DD_STORAGE_ROOT") or DEFAULT_STORAGE_ROOT,
            s3_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            **secrets,
        ),
        "feeds": FeedsResource(path=feeds_file_from_env(env)),
        "warehouse": WarehouseResource(path=env.get("DD_WAREHOUSE_PATH") or DEFAULT_WAREHOUSE_PATH),
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable()),
        "mlflow": MlflowResource(
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
            registry_uri=env.get("MLFLOW_REGISTRY_URI") or None,
            artifact_location=env.get("MLFLOW_ARTIFACT_LOCATION") or DEFAULT_ARTIFACT_LOCATION,
            **mlflow_secrets,
        ),
        "training": TrainingResource(
            base_model=env.get("DD_TRAINING_BASE_MODEL") or "smollm2-135m-instruct",
            profile=env.get("DD_TRAINING_PROFILE") or "cpu-small",
            launch=env.get("DD_TRAINING_LAUNCH") or "in_process",
            output_root=env.get("DD_TRAINING_OUTPUT_ROOT") or DEFAULT_TRAINING_ROOT,
            max_steps=int(max_steps) if max_steps else None,
        ),
        "retrain_settings": RetrainSettings(
            min_new_mature_episodes=int(min_new_mature)
            if min_new_mature
            else DEFAULT_MIN_NEW_MATURE_EPISODES
        ),
    }
