"""The lakehouse: DuckLake tables that dbt builds and every reader reads, without Dagster.

A DuckLake is a catalog database (which tables exist, their columns, files and snapshots) plus
table data as Parquet files under a data path:

- **Embedded default**: the catalog in a local SQLite file (``DD_LAKEHOUSE_CATALOG``,
  ``var/warehouse/lakehouse.sqlite``), which several local processes attach at once: a dbt
  build, the dataset exports, training, evaluation and drift read and write side by side
  instead of waiting for one DuckDB file's lock.
- **Production**: the catalog in PostgreSQL (``DD_LAKEHOUSE_CATALOG_DSN``, a libpq DSN) and the
  data under ``s3://`` (``DD_LAKEHOUSE_DATA_PATH``, by default ``<storage root>/lakehouse/``).

Every connection, the dbt profile's included (``assets.core.lakehouse_dbt``), goes through
:func:`prepare_connection`: the extensions are loaded from the pinned ``duckdb-extension-*``
packages (never installed from the network; autoinstall is off), DuckDB's S3 access gets a
secret built from the same settings as s3fs (endpoint, path-style URLs, ``USE_SSL false`` for an
``http://`` endpoint, keys), and the DuckLake is attached as ``lake`` and made the default
database. Readers attach it read-only, optionally at a snapshot: every commit to a DuckLake is a
numbered snapshot, and a dataset export records the snapshot it read (``snapshot_id`` in its
manifest), so the same rows can be read again later (``AT (VERSION => n)``) after newer data
landed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb

ALIAS = "lake"
# Connection config of every lakehouse connection: nothing is ever downloaded.
CONNECTION_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
# How long a SQLite catalog's connection waits for another process's lock.
SQLITE_BUSY_TIMEOUT_MS = 60_000
# The package of each extension and the name DuckDB expects of its file (the file's entry point
# is named after it: the sqlite and postgres packages ship ``<name>.duckdb_extension`` files of
# the ``*_scanner`` extensions).
EXTENSIONS = {
    "ducklake": "ducklake",
    "httpfs": "httpfs",
    "sqlite": "sqlite_scanner",
    "postgres": "postgres_scanner",
}


@dataclass(frozen=True)
class S3Access:
    """DuckDB's S3 access, from the same settings as the storage's s3fs."""

    endpoint_url: str | None = None
    key_id: str | None = None
    secret: str | None = field(default=None, repr=False)
    region: str | None = None

    @classmethod
    def of(cls, settings: Any) -> S3Access:
        """From anything that names the S3 settings as assets.core.settings.Settings does
        (``s3_endpoint_url``, ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_region``):
        the settings themselves, or the warehouse resource."""
        return cls(
            endpoint_url=settings.s3_endpoint_url,
            key_id=settings.aws_access_key_id,
            secret=settings.aws_secret_access_key,
            region=settings.aws_region,
        )

    def secret_sql(self, name: str = "dd_s3") -> str:
        """``CREATE OR REPLACE SECRET``: keys when given; a custom endpoint gets path-style
        URLs, and ``USE_SSL false`` when it is ``http://`` (DuckDB ignores
        ``AWS_ENDPOINT_URL``)."""
        options = ["TYPE s3", f"REGION {_quote(self.region or 'us-east-1')}"]
        if self.key_id:
            options.append(f"KEY_ID {_quote(self.key_id)}")
        if self.secret:
            options.append(f"SECRET {_quote(self.secret)}")
        if self.endpoint_url:
            parsed = urlparse(
                self.endpoint_url if "://" in self.endpoint_url else f"https://{self.endpoint_url}"
            )
            options += [
                f"ENDPOINT {_quote(parsed.netloc)}",
                "URL_STYLE 'path'",
                f"USE_SSL {'false' if parsed.scheme == 'http' else 'true'}",
            ]
        return f"CREATE OR REPLACE SECRET {name} ({', '.join(options)})"


@dataclass(frozen=True)
class Lakehouse:
    """Where the lakehouse is: the catalog (a SQLite file, or PostgreSQL when ``catalog_dsn``
    is set), the table data (a folder or ``s3://…``; default: next to a SQLite catalog,
    ``<catalog>.files/``) and the S3 access of DuckDB."""

    catalog: str
    data_path: str | None = None
    catalog_dsn: str | None = field(default=None, repr=False)
    s3: S3Access = S3Access()

    @property
    def uses_postgres(self) -> bool:
        return bool(self.catalog_dsn)

    def resolved_data_path(self) -> str:
        path = self.data_path or f"{self.catalog}.files"
        if not path.startswith("s3://"):
            path = str(Path(path).resolve())
        return path.rstrip("/") + "/"

    def catalog_uri(self) -> str:
        if self.catalog_dsn:
            return f"ducklake:postgres:{self.catalog_dsn}"
        return f"ducklake:sqlite:{Path(self.catalog).resolve()}"

    def describe(self) -> str:
        """Where it is, without secrets (for logs and metadata)."""
        where = "postgres catalog" if self.uses_postgres else f"sqlite catalog {self.catalog}"
        return f"{where}, data {self.resolved_data_path()}"


def as_lakehouse(where: Lakehouse | str | Path) -> Lakehouse:
    """A :class:`Lakehouse`; a path stands for a SQLite catalog with its data beside it."""
    return where if isinstance(where, Lakehouse) else Lakehouse(catalog=str(where))


def lakehouse_from_settings(settings) -> Lakehouse:  # settings: assets.core.settings.Settings
    return Lakehouse(
        catalog=settings.lakehouse_catalog,
        data_path=settings.lakehouse_data_path,
        catalog_dsn=settings.lakehouse_catalog_dsn,
        s3=S3Access.of(settings),
    )


def lakehouse_from_env(env: Mapping[str, str] | None = None) -> Lakehouse:
    from assets.core.settings import settings_from_env

    return lakehouse_from_settings(settings_from_env(env))


# ---------------------------------------------------------------- connections


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def extension_file(name: str) -> Path:
    """The extension's file as DuckDB must see it: from the pinned package, copied once under
    the name of its entry point where the package names it differently."""
    package = importlib.import_module(f"duckdb_extension_{name}")
    version = duckdb.__version__
    source = (
        Path(package.__file__).parent / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
    )
    if not source.is_file():
        raise FileNotFoundError(f"{source}: duckdb-extension-{name}=={version} is not installed")
    real = EXTENSIONS[name]
    if real == name:
        return source
    cache = Path(tempfile.gettempdir()) / f"dd-duckdb-extensions-{os.getuid()}" / f"v{version}"
    target = cache / f"{real}.duckdb_extension"
    if not target.is_file() or target.stat().st_size != source.stat().st_size:
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{real}.{os.getpid()}.partial"
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    return target


def load_extensions(con: duckdb.DuckDBPyConnection, lake: Lakehouse | None = None) -> None:
    """Load ducklake, httpfs and the catalog's scanner from the pinned packages."""
    names = ["ducklake", "httpfs"]
    if lake is None or not lake.uses_postgres:
        names.append("sqlite")
    if lake is None or lake.uses_postgres:
        names.append("postgres")
    for name in names:
        con.execute(f"LOAD {_quote(str(extension_file(name)))}")


def ensure_sqlite_wal(path: str | Path) -> None:
    """Put a SQLite catalog in WAL mode (kept by the file): readers then never block a writer's
    commit, nor a writer a reader (in the default rollback journal, an open reader made every
    commit fail with "database is locked")."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        if con.execute("pragma journal_mode").fetchone()[0].lower() != "wal":
            con.execute("pragma journal_mode=wal")
    finally:
        con.close()


def prepare_connection(
    con: duckdb.DuckDBPyConnection,
    lake: Lakehouse,
    *,
    read_only: bool = False,
    snapshot: int | None = None,
    alias: str = ALIAS,
) -> None:
    """Extensions, the S3 secret and the DuckLake attached as ``alias`` (the default database).
    ``snapshot`` attaches it as of that snapshot (read-only)."""
    load_extensions(con, lake)
    if not lake.uses_postgres:
        ensure_sqlite_wal(lake.catalog)
    con.execute(lake.s3.secret_sql())
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        attach_sql(
            lake, read_only=read_only or snapshot is not None, snapshot=snapshot, alias=alias
        )
    )
    con.execute(f"USE {alias}")


def attach_sql(
    lake: Lakehouse, *, read_only: bool = False, snapshot: int | None = None, alias: str = ALIAS
) -> str:
    if read_only:
        options = ["READ_ONLY"]
        if snapshot is not None:
            options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    else:
        if not lake.uses_postgres:
            Path(lake.catalog).resolve().parent.mkdir(parents=True, exist_ok=True)
        data_path = lake.resolved_data_path()
        if not data_path.startswith("s3://"):
            Path(data_path).mkdir(parents=True, exist_ok=True)
        # Every row as Parquet under the data path (no rows inlined into the catalog).
        options = [f"DATA_PATH {_quote(data_path)}", "DATA_INLINING_ROW_LIMIT 0"]
    if not lake.uses_postgres:
        # Where SQLite can wait for another process's write lock, wait (its default is to fail
        # at once). A commit whose transaction began before another one committed still fails
        # with "database is locked" (WAL mode, and DuckLake does not retry it): writers of a
        # SQLite catalog run one at a time (the dbt runs' pool; dbt with one thread).
        options.append(f"METADATA_PARAMETERS MAP {{'busy_timeout': {SQLITE_BUSY_TIMEOUT_MS}}}")
    return f"ATTACH IF NOT EXISTS {_quote(lake.catalog_uri())} AS {alias} ({', '.join(options)})"


def connect(
    where: Lakehouse | str | Path,
    *,
    read_only: bool = True,
    snapshot: int | str | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the lakehouse attached as its default database.

    ``snapshot``: ``None`` reads whatever is committed when each query runs; a snapshot id
    reads the lakehouse as of that snapshot; ``"pin"`` pins the newest snapshot at connection
    time, so that every query of the connection reads the same data while writers commit."""
    lake = as_lakehouse(where)
    con = duckdb.connect(config=dict(CONNECTION_CONFIG))
    try:
        pinned = None if snapshot == "pin" else snapshot
        prepare_connection(con, lake, read_only=read_only, snapshot=pinned)
        if snapshot == "pin":
            newest = current_snapshot(con)
            con.execute("USE memory")
            con.execute(f"DETACH {ALIAS}")
            con.execute(attach_sql(lake, read_only=True, snapshot=newest))
            con.execute(f"USE {ALIAS}")
        con.execute("SET enable_progress_bar = false")
    except BaseException:
        con.close()
        raise
    return con


@contextlib.contextmanager
def lakehouse_connection(
    where: Lakehouse | str | Path, *, read_only: bool = True, snapshot: int | str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`connect`, closed afterwards: the one way every reader reads the lakehouse."""
    con = connect(where, read_only=read_only, snapshot=snapshot)
    try:
        yield con
    finally:
        con.close()


def current_snapshot(con: duckdb.DuckDBPyConnection, alias: str = ALIAS) -> int:
    """The snapshot a connection reads (its attach-time version, or the newest commit)."""
    return int(con.execute(f"select id from {alias}.current_snapshot()").fetchone()[0])
