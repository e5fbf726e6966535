"""The lakehouse (assets/core/lakehouse.py) with real parts only: DuckLake on a SQLite catalog
and on the machine's PostgreSQL, table data in a local folder and on the moto S3 server, the
extensions from the pinned packages, dbt building into it through the Dagster assets, readers
beside a writer, and a dataset export rebuilt from the snapshot it recorded after newer data
landed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
from helpers import dbt
from helpers.bars import regime_bars, write_raw_bars
from helpers.resources import dbt_resource

from assets.core.lakehouse import (
    Lakehouse,
    S3Access,
    connect,
    current_snapshot,
    lakehouse_connection,
    lakehouse_from_env,
)
from assets.core.resources import (
    StorageResource,
    WarehouseResource,
    resources_from_env,
)
from assets.core.storage import Storage
from assets.episodes import datasets
from assets.episodes.datasets import dataset_files
from assets.episodes.dbt_assets import dataset_models, episode_models

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- connections


def _loaded_extensions(con) -> set[str]:
    rows = con.execute("select extension_name from duckdb_extensions() where loaded").fetchall()
    return {row[0] for row in rows}


def test_extensions_load_from_the_pinned_packages_and_data_is_parquet(tmp_path: Path) -> None:
    catalog = tmp_path / "lake.sqlite"
    with lakehouse_connection(catalog, read_only=False) as con:
        loaded = _loaded_extensions(con)
        assert {"ducklake", "httpfs", "sqlite_scanner"} <= loaded
        # nothing may be fetched from the network: autoinstall and autoload are off
        assert (
            con.execute("select current_setting('autoinstall_known_extensions')").fetchone()[0]
            is False
        )
        con.execute("create table t as select range as i from range(3)")
        first = current_snapshot(con)
        con.execute("insert into t values (3)")
        assert current_snapshot(con) == first + 1
    # Every row went to Parquet under the data path (none inlined into the catalog).
    assert len(list(Path(f"{catalog}.files").rglob("*.parquet"))) == 2
    with lakehouse_connection(catalog, snapshot=first) as con:
        assert con.execute("select count(*) from t").fetchone() == (3,)
    with lakehouse_connection(catalog) as con:
        assert con.execute(f"select count(*) from t AT (VERSION => {first})").fetchone() == (3,)
        assert con.execute("select count(*) from t").fetchone() == (4,)
        with pytest.raises(Exception, match=r"(?i)read.only"):
            con.execute("insert into t values (5)")


def test_s3_secret_follows_the_storage_settings() -> None:
    local = S3Access("http://127.0.0.1:9000", "key", "se'cret").secret_sql()
    assert "ENDPOINT '127.0.0.1:9000'" in local and "URL_STYLE 'path'" in local
    assert "USE_SSL false" in local and "SECRET 'se''cret'" in local and "KEY_ID 'key'" in local
    assert "USE_SSL true" in S3Access("https://minio.example:9000").secret_sql()
    aws = S3Access(key_id="k", secret="s", region="eu-west-1").secret_sql()
    assert "ENDPOINT" not in aws and "REGION 'eu-west-1'" in aws


def test_resources_from_env_pass_the_catalog_dsn_and_keys_as_env_vars() -> None:
    env = {
        "DD_STORAGE_ROOT": "s3://bucket/dd",
        "DD_LAKEHOUSE_CATALOG_DSN": "dbname=lake host=db user=dd password=secret",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    warehouse = resources_from_env(env)["warehouse"]
    assert isinstance(warehouse.catalog_dsn, dg.EnvVar)
    assert isinstance(warehouse.aws_secret_access_key, dg.EnvVar)
    assert warehouse.data_path == "s3://bucket/dd/lakehouse"
    assert warehouse.s3_endpoint_url == "http://127.0.0.1:9000"
    default = resources_from_env({})["warehouse"]
    assert default.catalog_dsn is None
    assert default.path.endswith("var/warehouse/lakehouse.sqlite")
    assert default.data_path == str(REPO / "var" / "lakehouse")


def test_the_warehouse_resource_and_the_settings_describe_one_lakehouse() -> None:
    env = {
        "DD_STORAGE_ROOT": "s3://bucket/dd",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_REGION": "eu-west-1",
    }
    lake = resources_from_env(env)["warehouse"].lakehouse()
    assert lake == lakehouse_from_env(env)
    assert lake.s3 == S3Access("http://127.0.0.1:9000", region="eu-west-1")
    assert lake.data_path == "s3://bucket/dd/lakehouse"


WRITER = """
import sys, time
from assets.core.lakehouse import connect
con = connect(sys.argv[1], read_only=False)
con.execute("begin")
con.execute("insert into t select range from range(100, 200)")
print("writing", flush=True)
time.sleep(3)
con.execute("commit")
print("committed", flush=True)
"""


def test_readers_read_beside_a_writer_without_waiting(tmp_path: Path) -> None:
    """The single-writer DuckDB file made readers wait up to 30 minutes for a dbt run's lock:
    on the lakehouse a reader in another process reads the last commit at once while a write
    is open, a pinned reader keeps its snapshot, and the writer's commit is not blocked by the
    open readers (the SQLite catalog runs in WAL mode)."""
    catalog = tmp_path / "lake.sqlite"
    with lakehouse_connection(catalog, read_only=False) as con:
        con.execute("create table t as select range as i from range(100)")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(catalog)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        started = time.monotonic()
        pinned = connect(catalog, snapshot="pin")
        with lakehouse_connection(catalog) as reader:
            assert reader.execute("select count(*) from t").fetchone() == (100,)
        assert pinned.execute("select count(*) from t").fetchone() == (100,)
        assert time.monotonic() - started < 2.5  # read while the write is still open
        assert writer.stdout.readline().strip() == "committed"
        assert pinned.execute("select count(*) from t").fetchone() == (100,)
        pinned.close()
        with lakehouse_connection(catalog) as reader:
            assert reader.execute("select count(*) from t").fetchone() == (200,)
    finally:
        _, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err


def test_postgres_catalog(tmp_path: Path, pg_database: str) -> None:
    lake = Lakehouse(
        catalog="unused",
        catalog_dsn=f"dbname={pg_database} host=127.0.0.1 port=5432 user=postgres",
        data_path=str(tmp_path / "data"),
    )
    with lakehouse_connection(lake, read_only=False) as con:
        loaded = _loaded_extensions(con)
        assert "postgres_scanner" in loaded
        con.execute("create table t as select range as i from range(3)")
        first = current_snapshot(con)
        con.execute("delete from t where i = 0")
    with lakehouse_connection(lake) as con:
        assert con.execute("select count(*) from t").fetchone() == (2,)
        assert con.execute(f"select count(*) from t AT (VERSION => {first})").fetchone() == (3,)
    assert list((tmp_path / "data").rglob("*.parquet"))
    assert lake.describe() == f"postgres catalog, data {tmp_path / 'data'}/"


# ---------------------------------------------------------------- production shape, end to end

FIRST_END = date(2023, 9, 30)
SYMBOLS = ("AAA", "BBB")


def _upload_raw(
    storage: Storage, local_root: Path, files: dict[str, Path], after: date, upto: date
) -> int:
    """Put the raw partitions of the days in (after, upto] on the storage; how many."""
    days = [d for d in files if after < date.fromisoformat(d) <= upto]
    for day in days:
        storage.commit_file(files[day], str(files[day].relative_to(local_root)))
    return len(days)


def _range_tags(first: str, last: str) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


def _manifests(storage: Storage) -> dict[str, dict]:
    return {
        name: json.loads(storage.read_bytes(f"datasets/{name}/manifest.json"))
        for name in datasets.DATASETS
    }


def test_dbt_on_s3_with_a_postgres_catalog_and_exports_replay_from_their_snapshot(
    tmp_path: Path, s3_server: str, s3_storage: Storage, pg_database: str
) -> None:
    """Production shape: raw partitions on s3://, the lakehouse catalog in PostgreSQL and its
    data on s3://, dbt building through the Dagster assets, exports to s3://. Then newer raw
    days land and everything is rebuilt (the table models of the marts re-run on DuckLake);
    the first exports are rebuilt from the snapshot their manifest recorded and give the same
    digests."""
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    local_root = tmp_path / "raw_local"
    files = write_raw_bars(local_root, regime_bars(3, SYMBOLS))
    resources = {
        "storage": StorageResource(root=s3_storage.root, s3_endpoint_url=s3_server, **keys),
        "warehouse": WarehouseResource(
            catalog_dsn=f"dbname={pg_database} host=127.0.0.1 user=postgres",
            data_path=f"{s3_storage.root}/lakehouse",
            s3_endpoint_url=s3_server,
            **keys,
        ),
        "dbt": dbt_resource(),
    }
    marts_and_exports = [dataset_models, *dataset_files]

    # 2023 lands on S3 and is built: monthly models as one run, then the marts and exports.
    assert _upload_raw(s3_storage, local_root, files, date(2022, 12, 31), FIRST_END) > 240
    first_run = dg.materialize(
        [episode_models], resources=resources, tags=_range_tags("2023-01-01", "2023-09-01")
    )
    assert first_run.success
    assert dg.materialize(marts_and_exports, resources=resources).success
    first = _manifests(s3_storage)
    snapshot = first["sft"]["snapshot_id"]
    assert all(m["splits"] for m in first.values())
    for manifest in first.values():
        for entry in manifest["splits"].values():
            assert entry["uri"].startswith("s3://")
    # The lakehouse's tables are Parquet files on S3; nothing of it is local.
    lake_files = s3_storage.list_files("lakehouse")
    assert any(f.path.endswith(".parquet") for f in lake_files)

    # Newer days land; their months (and the one before, whose outcomes they complete) are
    # rebuilt, then the marts (table models, re-run on DuckLake) and the exports.
    assert _upload_raw(s3_storage, local_root, files, FIRST_END, date(2023, 11, 30)) > 50
    assert dg.materialize(
        [episode_models], resources=resources, tags=_range_tags("2023-09-01", "2023-11-01")
    ).success
    assert dg.materialize(marts_and_exports, resources=resources).success
    second = _manifests(s3_storage)
    assert second["sft"]["snapshot_id"] > snapshot
    assert any(second[n]["splits"] != first[n]["splits"] for n in datasets.DATASETS), (
        "the newer days changed no dataset"
    )

    # Time travel: the first exports again, from the snapshot each recorded.
    replay = Storage(str(tmp_path / "replay"))
    lake = resources["warehouse"].lakehouse()
    with lakehouse_connection(lake) as con:
        for name, manifest in first.items():
            again = datasets.export_dataset(con, replay, name, snapshot=manifest["snapshot_id"])
            assert again == {**manifest, "splits": {
                s: {**e, "uri": replay.uri(e["path"])} for s, e in manifest["splits"].items()
            }}  # fmt: skip
        rows = con.execute(f"select count(*) from ds_sft AT (VERSION => {snapshot})").fetchone()[0]
        assert rows == sum(e["rows"] for e in first["sft"]["splits"].values())


def test_reads_complete_while_dbt_rebuilds(tmp_path: Path) -> None:
    """A training or evaluation read during a dbt run: every read succeeds at once (no lock to
    wait for) and sees a whole committed table, while dbt rebuilds it from scratch."""
    root, catalog = tmp_path / "root", tmp_path / "lake.sqlite"
    write_raw_bars(root, regime_bars(5, SYMBOLS))
    select = ("build", "--select", "+int_bars", "--exclude-resource-type", "test")
    dbt.run(tmp_path, catalog, root, *select)
    with lakehouse_connection(catalog) as con:
        (expected,) = con.execute("select count(*) from int_bars").fetchone()
    assert expected > 1000
    rebuild = dbt.start_plan(
        tmp_path,
        "rebuild",
        [dbt.step(catalog, *select, "--full-refresh", vars={"storage_root": str(root)})],
    )
    reads, slowest = 0, 0.0
    while rebuild.poll() is None:
        started = time.monotonic()
        with lakehouse_connection(catalog) as con:
            assert con.execute("select count(*) from int_bars").fetchone() == (expected,)
        slowest = max(slowest, time.monotonic() - started)
        reads += 1
        time.sleep(0.3)  # a reader now and then (a tight loop of reads halves dbt's CPU)
    dbt.wait(rebuild)
    assert reads >= 3, reads
    assert slowest < 5.0, slowest
    with lakehouse_connection(catalog) as con:
        assert con.execute("select count(*) from int_bars").fetchone() == (expected,)
