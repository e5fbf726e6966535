"""The Dagster resources of a test's local build: a storage root, the lakehouse (given by the
path of its SQLite catalog) and dbt on the project."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from assets.core.dbt import dbt_project
from assets.core.resources import (
    DbtCliResource,
    StorageResource,
    WarehouseResource,
    dbt_executable,
)


def dbt_resource() -> DbtCliResource:
    """dbt on the project, with the venv's dbt."""
    return DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable())


def local_resources(
    root: Path | str, warehouse: Path | str, **more: ConfigurableResource
) -> dict[str, ConfigurableResource]:
    """``storage`` on the folder ``root``, ``warehouse`` on the catalog ``warehouse``, ``dbt``,
    and any ``more``."""
    return {
        "storage": StorageResource(root=str(root)),
        "warehouse": WarehouseResource(path=str(warehouse)),
        "dbt": dbt_resource(),
        **more,
    }
