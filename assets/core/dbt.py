"""The one cached dbt project. Kept in its own module: importing @dbt_assets needs the manifest
(``dbt_project/target/manifest.json``), which ``make install``/``make test`` prepare with
``dbt parse``; nothing parses at import time."""

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from dagster_dbt import DbtProject

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def project_vars(project_dir: Path = DBT_PROJECT_DIR) -> dict[str, Any]:
    """The vars of dbt_project.yml (defaults of every build)."""
    return (yaml.safe_load((project_dir / "dbt_project.yml").read_text()) or {}).get("vars", {})


def build_vars(start: datetime, end: datetime, storage_root: str) -> dict[str, str]:
    """The vars of a build over the partition window [start, end): inclusive UTC dates."""
    return {
        "min_date": start.date().isoformat(),
        "max_date": (end - timedelta(days=1)).date().isoformat(),
        "storage_root": storage_root,
    }
