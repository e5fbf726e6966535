"""Settings read from the environment: the one place, without Dagster.

The resources (assets.core.resources) and the small long-running processes (the live collector
and replay server, which must not pay Dagster's seconds of import) both choose storage root,
feeds file and tracking store here, so they always agree. The variables are listed in
assets/core/resources.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STORAGE_ROOT = str(REPO_ROOT / "var")
DEFAULT_FEEDS_FILE = str(REPO_ROOT / "feeds.yaml")
DEFAULT_WAREHOUSE_PATH = str(REPO_ROOT / "var" / "warehouse" / "warehouse.duckdb")
DEFAULT_TRAINING_ROOT = str(REPO_ROOT / "var" / "training")
DEFAULT_MLFLOW_DIR = REPO_ROOT / "var" / "mlflow"
DEFAULT_TRACKING_URI = f"sqlite:///{DEFAULT_MLFLOW_DIR / 'mlflow.db'}"
DEFAULT_ARTIFACT_LOCATION = str(DEFAULT_MLFLOW_DIR / "artifacts")


def storage_settings_from_env(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Storage root (``DD_STORAGE_ROOT``, default ``./var`` of the repository) and S3 settings
    (``AWS_ENDPOINT_URL`` and the AWS keys): keyword arguments of ``Storage``."""
    env = os.environ if env is None else env
    return {
        "root": env.get("DD_STORAGE_ROOT") or DEFAULT_STORAGE_ROOT,
        "s3_endpoint_url": env.get("AWS_ENDPOINT_URL") or None,
        "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID") or None,
        "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY") or None,
    }


def feeds_file_from_env(env: Mapping[str, str] | None = None) -> str:
    """``DD_FEEDS_FILE``, else the repository's feeds.yaml."""
    env = os.environ if env is None else env
    return env.get("DD_FEEDS_FILE") or DEFAULT_FEEDS_FILE
