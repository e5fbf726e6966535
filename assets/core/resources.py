"""Resources: *where* data lives, built once from the settings of the environment
(assets/core/settings.py, which lists the variables) in :func:`resources_from_env`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import Config, ConfigurableResource, EnvVar
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
    DEFAULT_TRAINING_K8S_SCRATCH,
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
TRAINING_LAUNCHES = ("in_process", "pipes", "k8s")
# dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY: K8sRunLauncher reads the run pod's extra
# Kubernetes config from this run tag (a JSON string).
K8S_CONFIG_TAG = "dagster-k8s/config"
# The run queue limits runs with this tag to one at a time (deploy/dagster.yaml, Helm values).
RESOURCE_TAG = "decision_data/resource"
GPU = "nvidia.com/gpu"
TRAINING_CONTAINER = "training"


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


class TrainingPod(Config):
    """Where a training stage runs on Kubernetes and what it gets there.

    With ``DD_TRAINING_LAUNCH=k8s`` each stage runs in its own pod through ``PipesK8sClient``
    (:meth:`base_pod_spec`: image, namespace, service account, secrets as environment,
    resources, node selector, tolerations, a scratch ``emptyDir``). With the other launches the
    stage trains in the run's own process, so the same resources and scheduling go to the run
    pod instead, as the ``dagster-k8s/config`` run tag of the training job (:meth:`run_tags`,
    read by ``K8sRunLauncher``; ignored by the laptop's ``DefaultRunLauncher``). Nothing is set
    by default: no tag, no GPU. A field of :class:`TrainingResource` (``training.pod``)."""

    image: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    env_secrets: list[str] = []
    image_pull_policy: str = "IfNotPresent"
    scratch: str = DEFAULT_TRAINING_K8S_SCRATCH
    gpus: int = 0
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []

    def container_resources(self) -> dict[str, dict[str, str]]:
        """Requests and limits: the GPUs in both (Kubernetes demands it for extended
        resources), memory request = limit, CPU requested only (no throttling)."""
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        if self.cpu:
            requests["cpu"] = self.cpu
        if self.memory:
            requests["memory"] = limits["memory"] = self.memory
        if self.gpus:
            requests[GPU] = limits[GPU] = str(self.gpus)
        return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}

    def scheduling(self) -> dict[str, Any]:
        """Pod spec fields (snake case, as dagster-k8s takes them): node selector, tolerations."""
        out: dict[str, Any] = {}
        if self.node_selector:
            out["node_selector"] = dict(self.node_selector)
        if self.tolerations:
            out["tolerations"] = [dict(t) for t in self.tolerations]
        return out

    def run_tags(self) -> dict[str, str]:
        """The run tags that give a run pod these resources (empty when none are set)."""
        resources, scheduling = self.container_resources(), self.scheduling()
        config: dict[str, Any] = {}
        if resources:
            config["container_config"] = {"resources": resources}
        if scheduling:
            config["pod_spec_config"] = scheduling
        tags = {K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)} if config else {}
        if self.gpus:
            tags[RESOURCE_TAG] = "gpu"
        return tags

    def base_pod_spec(self) -> dict[str, Any]:
        """The training pod's spec before dagster-k8s adds the image, command and environment
        (``dagster_k8s.pipes.build_pod_body``). Scratch and ``/dev/shm`` are ``emptyDir``s:
        the container's own layer is small, and PyTorch's data loader workers and NCCL need a
        larger shared memory than the runtime's 64 MB default."""
        container: dict[str, Any] = {
            "name": TRAINING_CONTAINER,
            "image_pull_policy": self.image_pull_policy,
            "volume_mounts": [
                {"name": "scratch", "mount_path": self.scratch},
                {"name": "dshm", "mount_path": "/dev/shm"},
            ],
        }
        if resources := self.container_resources():
            container["resources"] = resources
        if self.env_secrets:
            container["env_from"] = [{"secret_ref": {"name": name}} for name in self.env_secrets]
        spec: dict[str, Any] = {
            "containers": [container],
            "restart_policy": "Never",
            "volumes": [
                {"name": "scratch", "empty_dir": {}},
                {"name": "dshm", "empty_dir": {"medium": "Memory"}},
            ],
            **self.scheduling(),
        }
        if self.service_account:
            spec["service_account_name"] = self.service_account
        return spec


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
    pod: TrainingPod = TrainingPod()

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

    def run_tags(self) -> dict[str, str]:
        """The training job's Kubernetes run tags: the pod settings go to the run pod when the
        stages train in it (``in_process``, ``pipes``), not with the ``k8s`` launch, whose own
        pods get them (a GPU on the run pod would sit idle)."""
        return {} if self.validate_launch() == "k8s" else self.pod.run_tags()


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
            ),
            pod=TrainingPod(
                **_section(
                    settings,
                    "training_k8s_",
                    *("image", "namespace", "service_account", "env_secrets", "scratch"),
                ),
                **_section(
                    settings, "training_", "gpus", "cpu", "memory", "node_selector", "tolerations"
                ),
            ),
        ),
        "retrain_settings": RetrainSettings(
            **_section(settings, "retrain_", "min_new_mature_episodes", "paused")
        ),
    }


def _section(settings: Settings, prefix: str, *names: str) -> dict[str, Any]:
    """A resource's fields from the settings named ``<prefix><field>``: {field: value}."""
    return {name: getattr(settings, prefix + name) for name in names}
