"""Stateless runs, proven (issue 13): every Dagster run executes as a run pod would, in a fresh
process with an empty working directory, its own HOME, TMPDIR, model cache and training output
folder, all thrown away after it. The only shared state is what production shares:

- PostgreSQL: the Dagster instance's storage (the production deploy/dagster.yaml), the
  lakehouse's DuckLake catalog and the MLflow tracking server's backend, each its own database;
- an S3-compatible server (moto, on 127.0.0.1): the storage root (landed files, raw/, dataset
  exports, evaluation files), the lakehouse's Parquet data, the MLflow artifacts and the runs'
  compute logs (stdout/stderr, read back after the pod is gone);
- an ``mlflow server`` that proxies the artifacts to that bucket.

A first delivery of daily bars lands → the landing sensor's request → raw → every monthly
episode model → marts and dataset exports → SFT → DPO and PRM → evaluation → champion. Then a
second day lands and three runs go at once (a backfill of the episode months and the evaluation
reading the lakehouse, then, while both are seen running, the landing sensor's run of the new
day): they overlap and all succeed, none waits for another. Then the new day reaches SFT v2 and DPO v2 (started from
``models:/decision-data-sft/2`` through the registry), and the lineage CLI, in another fresh
process, names both landed files and their hashes.

Small on purpose (three symbols, fourteen months of daily bars, the 'tiny' model, 2 steps): the
point is where state lives, not how well a model learns.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from helpers.bars import bars_frame, regime_series
from helpers.servers import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    dagster_home,
    mlflow_server,
    production_instance_env,
)

from assets.core.feeds import load_feeds
from assets.core.materializations import latest_metadata
from assets.core.resources import FeedsResource, StorageResource
from assets.core.storage import Storage
from assets.ingestion.landing import land_file
from orchestration.demo import IN_PROCESS, MARTS_SELECTION, MONTHLY_SELECTION
from orchestration.polling import wait_until
from orchestration.sensors import landing_sensor

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
FEED = "desk-bars"
FEEDS_YAML = f"""
feeds:
  - name: {FEED}
    kind: bars
    format: csv
    columns: {{symbol: symbol, ts: ts, open: open, high: high, low: low, close: close,
              volume: volume}}
    interval: 1d
"""
# Fourteen months: the features' warm-up takes about four, the walk-forward split needs train
# episodes that matured before the validation start.
FIRST_DAY, LAST_DAY = date(2023, 7, 1), date(2024, 8, 31)
NEW_DAY = LAST_DAY.isoformat()  # the second delivery
MONTHS = [d.strftime("%Y-%m-%d") for d in pd.date_range(FIRST_DAY, LAST_DAY, freq="MS")]
EVALUATION = {"max_format_prompts": 2, "max_pairs": 8, "max_traces": 8, "max_new_tokens": 4}
TRAIN_CONFIG = {**IN_PROCESS, "ops": {"model_evaluation": {"config": EVALUATION}}}


def _bars_csv(path: Path, frame: pd.DataFrame) -> None:
    out = pd.DataFrame(
        {
            "symbol": frame["symbol"],
            "ts": frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "open": frame["close"] * 0.999,
            "high": frame["close"] * 1.01,
            "low": frame["close"] * 0.99,
            "close": frame["close"],
            "volume": frame["volume"],
        }
    )
    out.to_csv(path, index=False)


def _deliveries(tmp_path: Path) -> tuple[Path, Path]:
    """Fourteen months of daily bars of three symbols as two files: everything before NEW_DAY,
    then NEW_DAY alone."""
    rows = [
        row
        for s, symbol in enumerate(("AAA", "BBB", "CCC"))
        for row in regime_series(11, s, symbol, start=FIRST_DAY, end=LAST_DAY)
    ]
    bars = bars_frame(rows)
    day = bars["ts"].dt.strftime("%Y-%m-%d")
    history, new = tmp_path / "history.csv", tmp_path / f"bars-{NEW_DAY}.csv"
    _bars_csv(history, bars[day < NEW_DAY])
    _bars_csv(new, bars[day == NEW_DAY])
    assert (day == NEW_DAY).any()
    return history, new


class Pods:
    """Each command in a fresh 'pod': an empty working directory, its own HOME, TMPDIR,
    DAGSTER_HOME (only the instance's config file, as a mounted ConfigMap would give it), model
    cache and training output; removed after the command, after checking that the working
    directory is still empty."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base, self.env, self.count = base, env, 0

    def start(self, *command: str) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        pod = self.base / f"pod-{self.count:02d}"
        cwd, home, tmp = (pod / n for n in ("cwd", "home", "tmp"))
        for folder in (cwd, home, tmp):
            folder.mkdir(parents=True)
        instance_home = dagster_home(pod / "dagster", "dagster.yaml")
        env = self.env | {
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "DAGSTER_HOME": str(instance_home),
            "DD_MODEL_CACHE": str(tmp / "model-cache"),
            "DD_TRAINING_OUTPUT_ROOT": str(tmp / "training"),
        }
        log = open(pod / "output.log", "wb")  # noqa: SIM115 - closed by finish()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        proc.log = log  # type: ignore[attr-defined]
        return proc, pod

    def finish(self, proc: subprocess.Popen, pod: Path, timeout: float = 600) -> str:
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.log.close()  # type: ignore[attr-defined]
        output = (pod / "output.log").read_text()
        assert proc.returncode == 0, f"{proc.args}\n{output[-5000:]}"
        assert not list((pod / "cwd").iterdir()), "a run wrote into its working directory"
        shutil.rmtree(pod)  # the pod and its disk are gone
        return output

    def run(self, *command: str, timeout: float = 600) -> str:
        return self.finish(*self.start(*command), timeout=timeout)

    def start_dagster(self, *args: str) -> tuple[subprocess.Popen, Path]:
        kind, rest = args[:2], args[2:]
        return self.start(str(BIN / "dagster"), *kind, "-m", "orchestration.definitions", *rest)

    def dagster(self, *args: str, timeout: float = 600) -> str:
        return self.finish(*self.start_dagster(*args), timeout=timeout)


def _materialize(*args: str, config: dict | None = None) -> list[str]:
    return ["asset", "materialize", *args, "--config-json", json.dumps(config or IN_PROCESS)]


def _latest(instance: dg.DagsterInstance, name: str) -> dict:
    metadata = latest_metadata(instance, name)
    assert metadata, f"{name} was never materialized"
    return metadata


def _sensor_requests(
    instance, storage: Storage, endpoint: str, feeds_file: Path, cursor: str | None
):
    """The landing sensor's requests and cursor, evaluated here against the shared instance."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "storage": StorageResource(
                root=storage.root,
                s3_endpoint_url=endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ),
            "feeds": FeedsResource(path=str(feeds_file)),
        },
    )
    result = landing_sensor(context)
    return result.run_requests, result.cursor


def _partition_args(request: dg.RunRequest) -> list[str]:
    if request.partition_key:
        return ["--partition", request.partition_key]
    tags = request.tags
    first = tags["dagster/asset_partition_range_start"]
    return ["--partition-range", f"{first}...{tags['dagster/asset_partition_range_end']}"]


def _compute_logs(instance: dg.DagsterInstance, run_id: str) -> bytes:
    """Everything a run's steps wrote to stdout and stderr, as the UI reads it."""
    manager, out = instance.compute_log_manager, b""
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED):
        data = event.dagster_event.logs_captured_data  # type: ignore[union-attr]
        captured = manager.get_log_data(manager.build_log_key_for_run(run_id, data.file_key))
        out += (captured.stdout or b"") + (captured.stderr or b"")
    return out


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return max(a[0], b[0]) < min(a[1], b[1])


def _bucket_keys(s3_client, bucket: str, prefix: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_every_run_in_a_fresh_process_shares_only_postgres_s3_and_mlflow(
    tmp_path: Path,
    pg_databases,
    s3_storage: Storage,
    s3_server: str,
    s3_client,
    monkeypatch: pytest.MonkeyPatch,
):
    dagster_db, lake_db, mlflow_db = pg_databases(), pg_databases(), pg_databases()
    bucket = s3_storage.root.removeprefix("s3://").split("/", 1)[0]
    feeds_file = tmp_path / "feeds.yaml"  # configuration, as a ConfigMap would mount it
    feeds_file.write_text(FEEDS_YAML)
    feed = load_feeds(feeds_file)[FEED]
    history, new_day = _deliveries(tmp_path)

    with mlflow_server(
        f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{mlflow_db}",
        f"s3://{bucket}/mlflow",
        s3_server,
        tmp_path / "mlflow-server.log",
    ) as tracking_uri:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DD_", "DAGSTER_", "MLFLOW_", "AWS_"))
        }
        # The production instance file (deploy/dagster.yaml): Postgres storage, and the runs'
        # compute logs in the bucket, where the UI reads them after the pod is gone.
        env |= production_instance_env(dagster_db, bucket, "dagster-compute-logs")
        env |= {
            "DD_STORAGE_ROOT": s3_storage.root,
            "AWS_ENDPOINT_URL": s3_server,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "DD_FEEDS_FILE": str(feeds_file),
            "DD_LAKEHOUSE_CATALOG_DSN": (
                f"dbname={lake_db} host={PG_HOST} port={PG_PORT} user={PG_USER}"
            ),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "DD_TRAINING_BASE_MODEL": "tiny",
            "DD_TRAINING_MAX_STEPS": "2",
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        pods = Pods(tmp_path / "pods", env)
        # This process reads the same instance (Postgres) to check the runs' records.
        for key in ("AWS_ENDPOINT_URL", *production_instance_env(dagster_db, bucket, "-")):
            monkeypatch.setenv(key, env[key])
        observer_home = dagster_home(tmp_path / "observer", "dagster.yaml")
        instance = dg.DagsterInstance.from_config(str(observer_home))
        try:
            cursor = _first_delivery(pods, instance, s3_storage, feed, feeds_file, history)
            _second_day(pods, instance, s3_storage, feed, feeds_file, new_day, cursor)
            _lineage(pods, instance, tracking_uri, s3_storage, s3_client, bucket, history, new_day)
        finally:
            instance.dispose()


def _first_delivery(pods, instance, storage, feed, feeds_file, history) -> str:
    land_file(storage, feed, history)
    requests, cursor = _sensor_requests(
        instance, storage, pods.env["AWS_ENDPOINT_URL"], feeds_file, None
    )
    (request,) = requests
    assert request.asset_selection == [dg.AssetKey("raw_bars")]
    assert _partition_args(request) == ["--partition-range", f"{FIRST_DAY}...2024-08-30"]
    pods.dagster(*_materialize("--select", "raw_bars", *_partition_args(request)))
    every_month = f"{MONTHS[0]}...{MONTHS[-1]}"
    pods.dagster(*_materialize("--select", MONTHLY_SELECTION, "--partition-range", every_month))
    pods.dagster(*_materialize("--select", MARTS_SELECTION))
    # `dagster job execute` takes run config from a file (a ConfigMap, here beside the pods).
    run_config = pods.base.parent / "train_models.json"
    run_config.write_text(json.dumps(TRAIN_CONFIG))
    pods.dagster("job", "execute", "-j", "train_models", "--config", str(run_config))

    raw = _latest(instance, "raw_bars")
    assert raw["run_rows_accepted"] == len(pd.read_csv(history)) and raw["rows_quarantined"] == 0
    assert set(instance.get_materialized_partitions(dg.AssetKey("int_features"))) == set(MONTHS)
    _latest(instance, "fct_decision_episodes")
    # Every dataset was exported to the bucket with all three walk-forward splits.
    for name in ("sft", "dpo", "prm"):
        export = json.loads(storage.read_bytes(f"datasets/{name}/manifest.json"))
        splits = export["splits"]
        assert set(splits) == {"train", "validation", "test"}, (name, splits)
        assert all(s["uri"].startswith("s3://") and s["rows"] > 0 for s in splits.values())
    sft, dpo = _latest(instance, "sft_model"), _latest(instance, "dpo_model")
    assert sft["model_uri"] == "models:/decision-data-sft/1"
    assert dpo["base_model"] == "models:/decision-data-sft/1"
    champion = _latest(instance, "champion_model")
    assert champion["dpo_champion_version"] == "1"
    runs = instance.get_runs()
    assert len(runs) == 4 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    # The training run's stdout/stderr outlived its pod: read back from the bucket.
    (train_run,) = [r for r in runs if r.job_name == "train_models"]
    assert b"sft_model" in _compute_logs(instance, train_run.run_id)
    # The lakehouse's tables are Parquet files in the bucket, not on any pod's disk.
    lake_files = storage.list_files("lakehouse")
    assert any(f.path.endswith(".parquet") for f in lake_files)
    return cursor


def _second_day(pods, instance, storage, feed, feeds_file, new_day, cursor) -> None:
    """The new day lands; at once: the landing sensor's run, a backfill of the episode months,
    the evaluation reading the lakehouse. All succeed and overlap in time."""
    land_file(storage, feed, new_day)
    requests, _ = _sensor_requests(
        instance, storage, pods.env["AWS_ENDPOINT_URL"], feeds_file, cursor
    )
    (request,) = requests
    assert _partition_args(request) == ["--partition", NEW_DAY]
    before = {r.run_id for r in instance.get_runs()}
    backfill = f"{MONTHS[0]}...{MONTHS[-2]}"
    # A backfill of the history months (a lakehouse writer) and the evaluation (a lakehouse and
    # registry reader) start; once both are seen running, the sensor's run of the day joins.
    started = [
        pods.start_dagster(*args)
        for args in (
            _materialize("--select", MONTHLY_SELECTION, "--partition-range", backfill),
            _materialize("--select", "model_evaluation", config=TRAIN_CONFIG),
        )
    ]

    def both_running() -> bool:
        new = [r for r in instance.get_runs() if r.run_id not in before]
        ended = [r for r in new if r.is_finished]
        assert not ended, f"{ended[0].job_name} ended before the other run started"
        return len(new) == 2 and all(r.status == dg.DagsterRunStatus.STARTED for r in new)

    wait_until("the backfill and the evaluation running together", both_running, 300, poll=0.5)
    started.append(
        pods.start_dagster(*_materialize("--select", "raw_bars", "--partition", NEW_DAY))
    )
    for proc, pod in started:
        pods.finish(proc, pod)
    together = [r for r in instance.get_runs() if r.run_id not in before]
    assert len(together) == 3
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in together)
    # The day's raw run (seconds) ran while one of the long ones was still running: none waited
    # for a lock held by another.
    window = {}
    for run in together:
        stats = instance.get_run_stats(run.run_id)
        (key,) = {k.to_user_string() for k in run.asset_selection or []} & {
            "raw_bars", "int_features", "model_evaluation"
        }  # fmt: skip
        window[key] = (stats.start_time, stats.end_time)
    backfill_run, evaluation_run, raw_run = (
        window[k] for k in ("int_features", "model_evaluation", "raw_bars")
    )
    assert _overlap(backfill_run, evaluation_run), window
    assert _overlap(raw_run, backfill_run) or _overlap(raw_run, evaluation_run), window
    assert NEW_DAY in instance.get_materialized_partitions(dg.AssetKey("raw_bars"))

    # The new day's month, the marts, then SFT v2 and DPO v2 from it.
    pods.dagster(*_materialize("--select", MONTHLY_SELECTION, "--partition", MONTHS[-1]))
    pods.dagster(*_materialize("--select", MARTS_SELECTION))
    pods.dagster(*_materialize("--select", "sft_model,dpo_model"))
    sft, dpo = _latest(instance, "sft_model"), _latest(instance, "dpo_model")
    assert sft["model_uri"] == "models:/decision-data-sft/2"
    assert dpo["model_uri"] == "models:/decision-data-dpo/2"
    assert dpo["base_model"] == "models:/decision-data-sft/2"


def _lineage(pods, instance, tracking_uri, storage, s3_client, bucket, history, new_day) -> None:
    """SFT v2 names both landed files and their hashes, read back from the registry by a fresh
    process; every registered version's files are in the bucket."""
    from mlflow import MlflowClient

    output = pods.run(
        sys.executable, "-m", "orchestration.lineage", "models:/decision-data-sft/2",
        "--tracking-uri", tracking_uri,
    )  # fmt: skip
    for local in (history, new_day):
        rel = f"landing/{FEED}/{local.name}"
        assert rel in output, output
        assert storage.sha256(rel) in output, output
    client = MlflowClient(tracking_uri=tracking_uri)
    in_bucket = _bucket_keys(s3_client, bucket, "mlflow/")
    for name, versions in (("decision-data-sft", 2), ("decision-data-dpo", 2)):
        for version in range(1, versions + 1):
            mv = client.get_model_version(name, str(version))
            assert mv.source.startswith("mlflow-artifacts:"), mv.source
            files = [k for k in in_bucket if f"/{mv.run_id}/" in k]
            assert any(k.endswith("/lineage.json") for k in files), (name, version, files)
            assert any(k.endswith(".safetensors") for k in files), (name, version, files)
    assert client.get_model_version_by_alias("decision-data-dpo", "champion").version == "1"
