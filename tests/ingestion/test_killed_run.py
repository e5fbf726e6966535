"""A killed ingestion run frees its pool slot without manual steps, and a run cleans the staging
folders of killed processes (issue 11).

The kill is real: ``kill -9`` of the run worker and its step process under a real daemon on the
embedded instance (deploy/dagster.local.yaml), in the middle of ingesting a day of a million
trades, while the run holds the ``raw_trades_writer`` slot."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import psutil
import pytest

from assets.core.feeds import load_feeds
from assets.core.storage import Storage, scratch_prefix
from assets.ingestion.ingest import ingest_partitions
from assets.ingestion.landing import land_file
from orchestration.polling import start_daemon, stop_process

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "raw_trades_writer"
DAY = "2024-05-02"
TRADES = 1_000_000
FEEDS_YAML = (
    "feeds:\n  - name: desk\n    kind: trades\n    format: csv\n"
    "    columns: {symbol: sym, ts: time, trade_id: id, price: px, size: qty}\n"
)


def _env(home: Path, root: Path, feeds_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "DAGSTER_"))}
    return env | {
        "DAGSTER_HOME": str(home),
        "DD_STORAGE_ROOT": str(root),
        "DD_FEEDS_FILE": str(feeds_file),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(REPO),
    }


def _wait(what: str, predicate, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def _claimed(instance: dg.DagsterInstance) -> list:
    return list(instance.event_log_storage.get_concurrency_info(POOL).claimed_slots)


def _run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        match = re.search(r"Started process for run \(pid: (\d+)\)", record.message or "")
        if match:
            return int(match.group(1))
    return None


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants, children first seen, all at once."""
    parent = psutil.Process(pid)
    procs = [parent, *parent.children(recursive=True)]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


@pytest.mark.e2e
def test_killed_run_frees_its_pool_slot_and_a_rerun_completes(tmp_path, monkeypatch):
    home, root = tmp_path / "dagster_home", tmp_path / "var"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.local.yaml", home / "dagster.yaml")
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(FEEDS_YAML)
    env = _env(home, root, feeds_file)
    for key, value in env.items():
        if key.startswith(("DAGSTER_", "DD_")):
            monkeypatch.setenv(key, value)
    fills = tmp_path / "fills.csv"
    duckdb.sql(
        f"COPY (SELECT 'BTC' AS sym, TIMESTAMP '{DAY}' + to_milliseconds(i // 40) AS time, i AS id, "
        f"100 + i % 7 AS px, 1 AS qty FROM range({TRADES}) AS t(i)) TO '{fills}' (HEADER)"
    )
    land_file(Storage(str(root)), load_feeds(feeds_file)["desk"], fills)

    # The instance's SQLite storage is created here, before the daemon starts: two processes
    # creating it at once can leave two alembic heads.
    instance = dg.DagsterInstance.from_config(str(home))
    log_path = tmp_path / "daemon.log"
    daemon = start_daemon(log_path, env)
    try:
        # The landing sensor requests the day; wait until its raw_trades step holds the pool
        # slot (starting the step process and parsing a million rows take seconds).
        def ingesting():
            runs = [
                r
                for r in instance.get_runs()
                if r.tags.get("dagster/sensor_name") == "landing_sensor"
                and r.status == dg.DagsterRunStatus.STARTED
            ]
            return runs[0] if runs and _claimed(instance) else None

        run = _wait("the ingestion run to hold its slot", ingesting, 240, log_path)
        assert [s.run_id for s in _claimed(instance)] == [run.run_id]
        pid = _wait(
            "the run worker's pid", lambda: _run_worker_pid(instance, run.run_id), 30, log_path
        )
        killed = _kill_tree(pid)
        assert pid in killed

        failed = _wait(
            "the dead run to be marked failed",
            lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE,
            60,
            log_path,
        )
        assert failed
        _wait("its pool slot to be freed", lambda: not _claimed(instance), 60, log_path)

        # A rerun completes without anyone deleting the dead run: the CLI run claims the slot.
        rerun = subprocess.run(
            [
                str(BIN / "dagster"),
                "asset",
                "materialize",
                "-m",
                "orchestration.definitions",
                "--select",
                "raw_trades",
                "--partition",
                DAY,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        (cli_run,) = [
            r
            for r in instance.get_runs()
            if r.run_id != run.run_id and r.asset_selection == {dg.AssetKey("raw_trades")}
        ]
        assert cli_run.status == dg.DagsterRunStatus.SUCCESS
        record = instance.get_latest_materialization_event(dg.AssetKey("raw_trades"))
        assert record.asset_materialization.metadata["dagster/row_count"].value == TRADES
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not _claimed(instance)
        # The killed processes' staging folders were removed by the rerun.
        staging = root / ".staging"
        leftovers = [p.name for p in staging.iterdir()] if staging.exists() else []
        assert not [n for n in leftovers if any(f"-{k}-" in n for k in killed)], leftovers
    finally:
        stop_process(daemon, timeout=60)
        instance.dispose()


def test_a_run_removes_staging_folders_of_dead_processes_only(local_storage, tmp_path):
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(
        "feeds:\n  - name: desk\n    kind: trades\n    format: csv\n"
        "    columns: {symbol: sym, ts: time, trade_id: id, price: px, size: qty}\n"
    )
    staging = Path(local_storage.root) / ".staging"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    left_by_dead = staging / scratch_prefix("dd-stage").replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    left_by_dead = left_by_dead.with_name(left_by_dead.name + "abcd1234")
    (left_by_dead / "sub").mkdir(parents=True)
    for i in range(50):
        (left_by_dead / "sub" / f"{i}.parquet").write_bytes(b"x")
    live = staging / (scratch_prefix("dd-stage") + "live0001")
    live.mkdir()
    other_host = staging / f"dd-stage-{dead_pid}-0badc0de-xyz"
    other_host.mkdir()
    unrelated = staging / "someone-elses"
    unrelated.mkdir()

    ingest_partitions(local_storage, load_feeds(feeds_file), "trades", ["2024-05-02"])
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [live.name, other_host.name, unrelated.name]
    )
