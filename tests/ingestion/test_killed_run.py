"""A killed ingestion run frees its pool slot without manual steps, and a run cleans the staging
folders of killed processes (issue 11).

The kills are real, in the middle of ingesting a day of a million trades while the run holds the
``raw_trades_writer`` slot on the embedded instance (deploy/dagster.local.yaml): ``kill -9`` of
the run worker and its step process under a real daemon, and ``kill -9`` of a ``dagster asset
materialize`` run, which executes in the CLI process (no daemon: the run reaper finds it)."""

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
from assets.core.resources import StorageResource
from assets.core.storage import SCRATCH_NAME, Storage, scratch_prefix
from assets.ingestion.ingest import ingest_partitions
from assets.ingestion.landing import land_file
from orchestration.polling import start_daemon, stop_process
from orchestration.reaper import run_reaper

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "raw_trades_writer"
DAY = "2024-05-02"
TRADES = 1_000_000
MATERIALIZE = ["asset", "materialize", "-m", "orchestration.definitions", "--select", "raw_trades"]
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


def _landed_day(tmp_path: Path, monkeypatch) -> tuple[Path, Path, dict[str, str]]:
    """An embedded instance's folder (DAGSTER_HOME) and a storage root with a day of TRADES
    trades landed, and the environment of the commands (also set in this process)."""
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
    return home, root, env


def _rerun_completes(instance: dg.DagsterInstance, env: dict[str, str], dead_run_id: str) -> None:
    """A CLI run of the day claims the slot the dead run held and ingests every trade, and the
    dead run stays failed."""
    rerun = subprocess.run(
        [str(BIN / "dagster"), *MATERIALIZE, "--partition", DAY],
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
        if r.run_id != dead_run_id and r.asset_selection == {dg.AssetKey("raw_trades")}
    ]
    assert cli_run.status == dg.DagsterRunStatus.SUCCESS
    record = instance.get_latest_materialization_event(dg.AssetKey("raw_trades"))
    assert record.run_id == cli_run.run_id
    assert record.asset_materialization.metadata["dagster/row_count"].value == TRADES
    assert instance.get_run_by_id(dead_run_id).status == dg.DagsterRunStatus.FAILURE
    assert not _claimed(instance)


@pytest.mark.e2e
def test_killed_run_frees_its_pool_slot_and_a_rerun_completes(tmp_path, monkeypatch):
    home, root, env = _landed_day(tmp_path, monkeypatch)
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
        _rerun_completes(instance, env, run.run_id)
        # The killed processes' staging folders were removed by the rerun.
        staging = root / ".staging"
        leftovers = [p.name for p in staging.iterdir()] if staging.exists() else []
        assert not [n for n in leftovers if any(f"-{k}-" in n for k in killed)], leftovers
    finally:
        stop_process(daemon, timeout=60)
        instance.dispose()


def _staging_folders(root: Path) -> list[str]:
    staging = root / ".staging"
    if not staging.exists():
        return []
    return [p.name for p in staging.iterdir() if SCRATCH_NAME.match(p.name)]


@pytest.mark.e2e
def test_a_killed_cli_run_is_failed_by_the_reaper_and_its_slot_freed(tmp_path, monkeypatch):
    """``dagster asset materialize`` executes the run in the CLI process: killed with SIGKILL, no
    code server or monitoring sees it die. The run reaper (the sensor the daemon ticks) fails it,
    frees its slot and removes its staging folder; then the day can be built again."""
    home, root, env = _landed_day(tmp_path, monkeypatch)
    instance = dg.DagsterInstance.from_config(str(home))
    log_path = tmp_path / "cli.log"
    with open(log_path, "wb") as log:
        cli = subprocess.Popen(
            [str(BIN / "dagster"), *MATERIALIZE, "--partition", DAY],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Killed in the middle of writing: it holds the slot and its staging folder exists.
        def writing():
            if cli.poll() is not None:
                raise AssertionError(f"the run ended before the kill\n{log_path.read_text()}")
            return _claimed(instance) and _staging_folders(root)

        def frozen_while_writing():
            """Stop the run (SIGSTOP) where it was seen writing, so the kill cannot land after
            its staging folder was removed (a write of a few hundred milliseconds). Only the
            folder is checked again while it is stopped: it may hold the SQLite lock."""
            if not writing():
                return False
            os.killpg(cli.pid, signal.SIGSTOP)
            if _staging_folders(root):
                return True
            os.killpg(cli.pid, signal.SIGCONT)
            return False

        deadline = time.monotonic() + 300
        while not frozen_while_writing():
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.02)
        killed = _kill_tree(cli.pid)
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait()
    (run,) = instance.get_runs()
    assert [s.run_id for s in _claimed(instance)] == [run.run_id]
    left = _staging_folders(root)
    assert left and all(int(SCRATCH_NAME.match(n)["pid"]) in killed for n in left), left
    # Nothing else will ever end it.
    time.sleep(2)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

    context = dg.build_sensor_context(
        instance=instance, resources={"storage": StorageResource(root=str(root))}
    )
    result = run_reaper(context)
    assert "failed 1 dead run" in result.skip_message, result.skip_message

    dead = instance.get_run_by_id(run.run_id)
    assert dead.status == dg.DagsterRunStatus.FAILURE
    (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"run process {cli.pid}" in failure.dagster_event.message
    assert "raw_trades_writer (raw_trades)" in failure.dagster_event.message
    assert not _claimed(instance)
    assert _staging_folders(root) == []
    # A second tick finds nothing to do.
    assert run_reaper(context).skip_message == "no dead runs"
    _rerun_completes(instance, env, run.run_id)
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
