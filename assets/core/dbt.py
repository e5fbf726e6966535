"""The one cached dbt project. Kept in its own module: importing @dbt_assets needs the manifest
(``dbt_project/target/manifest.json``), which ``make install``/``make test`` prepare with
``dbt parse``; nothing parses at import time."""

from pathlib import Path

from dagster_dbt import DbtProject

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
