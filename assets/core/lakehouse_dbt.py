"""The dbt-duckdb plugin of dbt_project/profiles.yml: dbt's connection is prepared like every
other lakehouse connection (:func:`assets.core.lakehouse.prepare_connection`: extensions from the
pinned packages, the S3 secret, the DuckLake attached as ``lake``), from the settings of the
environment the dbt process runs in (``WarehouseResource.dbt_env`` sets them for a Dagster run).
"""

from __future__ import annotations

from dbt.adapters.duckdb.plugins import BasePlugin

from assets.core.lakehouse import lakehouse_from_env, prepare_connection


class Plugin(BasePlugin):
    def configure_connection(self, conn) -> None:
        prepare_connection(conn, lakehouse_from_env())
