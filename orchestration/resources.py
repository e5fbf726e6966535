"""Resources: *where* data lives. Chosen once from the environment in :func:`resources_from_env`.

| variable | meaning | default |
|---|---|---|
| ``DD_STORAGE_ROOT`` | storage root: a folder, or ``s3://bucket/prefix`` | ``./var`` |
| ``DD_FEEDS_FILE`` | the feeds file | ``./feeds.yaml`` |
| ``DD_WAREHOUSE_PATH`` | the DuckDB warehouse file (always local: DuckDB cannot keep it on S3) | ``./var/warehouse/warehouse.duckdb`` |
| ``AWS_ENDPOINT_URL`` | S3-compatible endpoint (MinIO, moto, …); unset for AWS | |
| ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` | S3 keys (secrets, passed as ``EnvVar``) | |
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

from assets.feeds import FeedSpec, load_feeds
from assets.storage import Storage
from orchestration.dbt import dbt_project

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE_ROOT = str(REPO_ROOT / "var")
DEFAULT_FEEDS_FILE = str(REPO_ROOT / "feeds.yaml")
DEFAULT_WAREHOUSE_PATH = str(REPO_ROOT / "var" / "warehouse" / "warehouse.duckdb")


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


def dbt_executable() -> str:
    """The dbt next to this interpreter (the project's venv), so dbt runs without an
    activated environment; plain ``dbt`` from PATH otherwise."""
    candidate = Path(sys.executable).parent / "dbt"
    return str(candidate) if candidate.exists() else "dbt"


def feeds_file_from_env(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("DD_FEEDS_FILE") or DEFAULT_FEEDS_FILE


def resources_from_env(env: Mapping[str, str] | None = None) -> dict[str, ConfigurableResource]:
    """The resources for this environment; the only place that reads the settings above."""
    env = os.environ if env is None else env
    secrets = {}
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
    }
