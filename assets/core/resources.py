"""Resources: *where* data lives, built once from the settings of the environment
(assets/core/settings.py, which lists the variables) in :func:`resources_from_env`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, EnvVar
from dagster_dbt import DbtCliResource
from pydantic import PrivateAttr

from assets.core.dbt import dbt_project
from assets.core.feeds import FeedSpec, load_feeds
from assets.core.lakehouse import Lakehouse, S3Access
from assets.core.model_store import ResolvedModel, resolve_model, s3_env
from assets.core.settings import (
    DEFAULT_ARTIFACT_LOCATION,
    DEFAULT_BASE_MODEL,
    DEFAULT_FEEDS_FILE,
    DEFAULT_LAKEHOUSE_CATALOG,
    DEFAULT_MIN_NEW_MATURE_EPISODES,
    DEFAULT_MODEL_CACHE,
    DEFAULT_STORAGE_ROOT,
    DEFAULT_TRACKING_URI,
    DEFAULT_TRAINING_LAUNCH,
    DEFAULT_TRAINING_PROFILE,
    DEFAULT_TRAINING_ROOT,
    REPO_ROOT,
    Settings,
    settings_from_env,
)
from assets.core.storage import Storage
from assets.core.training_run import EXPERIMENT, Tracker
from training.config import FEATURE_CACHE_DIR

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
    """The lakehouse (assets/core/lakehouse.py) dbt builds into and every reader reads: a
    DuckLake whose catalog is the SQLite file ``path`` (embedded default), or PostgreSQL when
    ``catalog_dsn`` is set; table data under ``data_path`` (a folder or ``s3://…``; default
    ``<path>.files``), reached with the same S3 settings as the storage's s3fs.

    Readers run beside a writer (snapshots; the SQLite catalog in WAL mode); the dbt runs that
    write it still run one at a time (pool ``duckdb_warehouse``, see deploy/README.md)."""

    path: str = DEFAULT_LAKEHOUSE_CATALOG
    catalog_dsn: str | None = None
    data_path: str | None = None
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_region: str | None = None

    def lakehouse(self) -> Lakehouse:
        return Lakehouse(
            catalog=self.path,
            data_path=self.data_path,
            catalog_dsn=self.catalog_dsn,
            s3=S3Access.of(self),
        )

    def dbt_env_vars(self) -> dict[str, str]:
        """The settings dbt's plugin (assets/core/lakehouse_dbt.py) reads, as variables."""
        lake = self.lakehouse()
        names = {
            "DD_LAKEHOUSE_CATALOG": self.path,
            "DD_LAKEHOUSE_CATALOG_DSN": self.catalog_dsn,
            "DD_LAKEHOUSE_DATA_PATH": lake.resolved_data_path(),
            "AWS_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
            "AWS_REGION": self.aws_region,
        }
        return {name: value for name, value in names.items() if value}

    @contextlib.contextmanager
    def dbt_env(self) -> Iterator[None]:
        """dagster-dbt passes the process environment to dbt, so the lakehouse's settings are
        set for the invocation and restored after."""
        updates = self.dbt_env_vars()
        previous = {name: os.environ.get(name) for name in updates}
        os.environ.update(updates)
        try:
            yield
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class MlflowResource(ConfigurableResource):
    """Where training runs, metrics, checkpoints and registered model versions are tracked.

    The tracking store is local by default (a SQLite file next to the repo, not under the
    storage root, which may be S3); any MLflow URI works (``postgresql://…``, ``http://…``).
    Checkpoints are artifacts of the runs, on the experiment's ``artifact_location``
    (settings.default_artifact_location: the server's own with an ``http(s)://`` server,
    ``<storage root>/mlflow-artifacts`` on S3, else a local folder); :meth:`local_model` brings a
    registered version back as a local folder (assets/core/model_store.py), cached in
    ``model_cache``. ``s3_endpoint_url``: the S3-compatible endpoint of those artifacts (path-style
    addressing), the storage's; S3 keys come from the environment (``AWS_*``), as for s3fs."""

    tracking_uri: str = DEFAULT_TRACKING_URI
    registry_uri: str | None = None
    artifact_location: str | None = DEFAULT_ARTIFACT_LOCATION
    experiment: str = EXPERIMENT
    username: str | None = None
    password: str | None = None
    s3_endpoint_url: str | None = None
    model_cache: str = DEFAULT_MODEL_CACHE

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

    def process_env(self) -> dict[str, str]:
        """Everything MLflow reads from the environment: the credentials and, with an S3
        endpoint, ``MLFLOW_S3_ENDPOINT_URL`` and path-style addressing (a MinIO / moto host
        name cannot take the bucket as a subdomain)."""
        return {**self.secret_env(), **s3_env(self.s3_endpoint_url)}

    def apply_env(self) -> None:
        """Set :meth:`process_env` in this process (MLflow reads it from there)."""
        os.environ.update(self.process_env())

    def tracker(self) -> Tracker:
        self.apply_env()
        return Tracker(**self.settings())

    def local_model(self, uri: str) -> ResolvedModel:
        """A local folder with the checkpoint of ``uri`` (``models:/<name>/<version>``,
        ``models:/<name>@<alias>``, a run or artifact URI, or a local folder), downloaded once
        into ``model_cache``."""
        self.apply_env()
        return resolve_model(
            uri,
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry_uri,
            cache_dir=self.model_cache,
        )


class TrainingResource(ConfigurableResource):
    """How the training assets train: base model, profile, launch and where checkpoints go."""

    base_model: str = DEFAULT_BASE_MODEL
    profile: str = DEFAULT_TRAINING_PROFILE
    launch: str = DEFAULT_TRAINING_LAUNCH
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

    def feature_cache(self) -> str:
        """Where head-mode stages and the evaluation keep the frozen backbone's states."""
        return f"{self.output_root.rstrip('/')}/{FEATURE_CACHE_DIR}"

    def profile_overrides(self, method: str = "trainer") -> list[str]:
        """The profile's overrides, then max_steps (dotted k=v). cpu-small shortens trainer runs
        only: head mode (``method: head``) takes no optimiser steps and must read whole traces;
        its cost is set by the config's ``head.samples_per_action``."""
        out: list[str] = []
        if self.profile == "cpu-small" and method == "trainer":
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


class RetrainSettings(ConfigurableResource):
    """Thresholds of the retrain triggers (orchestration/retraining.py)."""

    min_new_mature_episodes: int = DEFAULT_MIN_NEW_MATURE_EPISODES
    paused: bool = False  # read drift records, launch nothing (a demo that owns its sequence)


def resources_from_env(env: Mapping[str, str] | None = None) -> dict[str, ConfigurableResource]:
    """The resources for this environment (see assets/core/settings.py). Secrets are passed as
    ``EnvVar`` so that their values never show in the resources' config."""
    settings = settings_from_env(env)
    secrets: dict[str, EnvVar] = {}
    if settings.aws_access_key_id:
        secrets["aws_access_key_id"] = EnvVar("AWS_ACCESS_KEY_ID")
    if settings.aws_secret_access_key:
        secrets["aws_secret_access_key"] = EnvVar("AWS_SECRET_ACCESS_KEY")
    lakehouse_secrets: dict[str, EnvVar] = {}
    if settings.lakehouse_catalog_dsn:
        lakehouse_secrets["catalog_dsn"] = EnvVar("DD_LAKEHOUSE_CATALOG_DSN")
    mlflow_secrets: dict[str, EnvVar] = {}
    if settings.mlflow_username:
        mlflow_secrets["username"] = EnvVar("MLFLOW_TRACKING_USERNAME")
    if settings.mlflow_password:
        mlflow_secrets["password"] = EnvVar("MLFLOW_TRACKING_PASSWORD")
    return {
        "storage": StorageResource(
            root=settings.storage_root, s3_endpoint_url=settings.s3_endpoint_url, **secrets
        ),
        "feeds": FeedsResource(path=settings.feeds_file),
        "warehouse": WarehouseResource(
            path=settings.lakehouse_catalog,
            data_path=settings.lakehouse_data_path,
            s3_endpoint_url=settings.s3_endpoint_url,
            aws_region=settings.aws_region,
            **secrets,
            **lakehouse_secrets,
        ),
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable()),
        "mlflow": MlflowResource(
            **_section(settings, "mlflow_", "tracking_uri", "registry_uri", "artifact_location"),
            s3_endpoint_url=settings.s3_endpoint_url,
            model_cache=settings.model_cache,
            **mlflow_secrets,
        ),
        "training": TrainingResource(
            **_section(
                settings, "training_", "base_model", "profile", "launch", "output_root", "max_steps"
            )
        ),
        "retrain_settings": RetrainSettings(
            **_section(settings, "retrain_", "min_new_mature_episodes", "paused")
        ),
    }


def _section(settings: Settings, prefix: str, *names: str) -> dict[str, Any]:
    """A resource's fields from the settings named ``<prefix><field>``: {field: value}."""
    return {name: getattr(settings, prefix + name) for name in names}
