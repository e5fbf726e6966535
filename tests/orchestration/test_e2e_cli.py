"""End to end through the ``dagster`` CLI and a real daemon, against real instances:
Postgres-backed (as in production) for the CLI, SQLite (the embedded default) for the daemon."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from helpers.servers import dagster_home

from assets.core.feeds import load_feeds
from assets.core.storage import Storage
from assets.ingestion.landing import default_feed_file, land_file
from orchestration.polling import start_daemon, stop_process, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(home: Path, root: Path, feeds_file: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "DAGSTER_"))}
    env |= {"DAGSTER_HOME": str(home), "DD_STORAGE_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    if feeds_file:
        env["DD_FEEDS_FILE"] = str(feeds_file)
    return env | extra


def _dagster(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / "dagster"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _open_instance(home: Path, env: dict[str, str], monkeypatch) -> dg.DagsterInstance:
    for key, value in env.items():
        if key.startswith(("DAGSTER_", "DD_")):
            monkeypatch.setenv(key, value)
    return dg.DagsterInstance.from_config(str(home))


def test_cli_materializes_default_feed_on_postgres_instance(tmp_path, pg_database, monkeypatch):
    home, root = dagster_home(tmp_path / "dagster_home"), tmp_path / "var"
    env = _env(home, root, DAGSTER_PG_DB=pg_database)
    storage = Storage(str(root))
    land_file(storage, load_feeds(REPO / "feeds.yaml")["bokeh-stocks"], default_feed_file())

    _dagster(env, "definitions", "validate", "-m", "orchestration.definitions")
    materialize = ("asset", "materialize", "-m", "orchestration.definitions", "--select")
    _dagster(env, *materialize, "raw_bars", "--partition", "2000-03-01")
    # A backfill of a range runs as one run (BackfillPolicy.single_run).
    _dagster(env, *materialize, "raw_bars", "--partition-range", "2000-03-06...2000-03-10")

    instance = _open_instance(home, env, monkeypatch)
    try:
        key = dg.AssetKey("raw_bars")
        parts = instance.get_materialized_partitions(key)
        assert parts == {"2000-03-01", *(f"2000-03-{d:02d}" for d in range(6, 11))}
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=["2000-03-01"]), limit=1
        ).records
        meta = records[0].asset_materialization.metadata
        assert meta["dagster/row_count"].value == 3  # AAPL, IBM, MSFT
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, n) for n in ("contract", "nothing_lost")]
        )
        assert {c.status.value for c in checks.values()} == {"SUCCEEDED"}
    finally:
        instance.dispose()
    table = pq.read_table(root / "raw/bars/date=2000-03-01/data.parquet")
    assert sorted(table.column("symbol").to_pylist()) == ["AAPL", "IBM", "MSFT"]
    assert set(table.column("source_hash").to_pylist()) == {
        storage.sha256("landing/bokeh-stocks/stocks.csv.gz")
    }


def test_daemon_sensor_ingests_a_landed_file(tmp_path, monkeypatch):
    """A file lands; the real daemon's landing sensor requests its partition; the run ingests
    it. This is the production path of every micro-batch."""
    home, root = tmp_path / "dagster_home", tmp_path / "var"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.local.yaml", home / "dagster.yaml")
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(
        "feeds:\n  - name: desk\n    kind: trades\n    format: csv\n"
        "    columns: {symbol: sym, ts: time, trade_id: id, price: px, size: qty}\n"
    )
    env = _env(home, root, feeds_file)
    local = tmp_path / "fills.csv"
    local.write_text(
        "sym,time,id,px,qty\nBTC,2024-05-02T09:00:00Z,1,60000,0.5\n"
        "BTC,2024-05-02T09:00:01Z,2,60010,0\nBTC,2024-05-02T09:00:02Z,3,0,1\n"
    )
    land_file(Storage(str(root)), load_feeds(feeds_file)["desk"], local)

    # The instance first: it creates the SQLite storages the daemon would otherwise create at the
    # same moment (two processes creating one schema race: "table ... already exists").
    instance = _open_instance(home, env, monkeypatch)
    daemon = start_daemon(tmp_path / "daemon.log", env)
    try:
        runs = []

        def finished() -> bool:
            # Only the landing sensor's runs: the freshness sensor also evaluates its checks.
            runs[:] = [
                r
                for r in instance.get_runs()
                if r.tags.get("dagster/sensor_name") == "landing_sensor"
            ]
            return bool(runs) and runs[0].status in (
                dg.DagsterRunStatus.SUCCESS,
                dg.DagsterRunStatus.FAILURE,
            )

        with contextlib.suppress(TimeoutError):
            # Generous: on a busy 2-core machine the run alone has taken minutes.
            wait_until("the landing sensor's run", finished, timeout=300, poll=2)
        assert runs, (tmp_path / "daemon.log").read_text()[-3000:]
        (run,) = runs
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/sensor_name"] == "landing_sensor"
        assert run.tags["dagster/partition"] == "2024-05-02"
        landing = instance.get_latest_materialization_event(dg.AssetKey(["landing", "desk"]))
        assert landing.asset_materialization.metadata["path"].value == "landing/desk/fills.csv"
    finally:
        stop_process(daemon)
        instance.dispose()
    table = pq.read_table(root / "raw/trades/date=2024-05-02/data.parquet")
    assert table.column("trade_id").to_pylist() == [1, 2]  # price 0 quarantined
    quarantine = pq.read_table(root / "quarantine/trades/date=2024-05-02/data.parquet")
    assert quarantine.column("reason").to_pylist() == ["price not positive and finite"]
