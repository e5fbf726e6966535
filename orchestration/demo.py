"""The main job on embedded defaults (``make demo``): land the default feed, let the real
Dagster daemon's landing sensor ingest it, and report what was built.

Runs the same path as production: landed file → landing sensor → single-run backfill of the raw
partitions → blocking checks. Nothing is materialized behind Dagster's back, so the UI started
afterwards shows the runs, the lineage from the landed file (with its hash) and the checks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from dagster import AssetCheckKey, AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.execution.backfill import BulkActionStatus

from assets.episodes import episode_models
from assets.ingest import TABLE_OF_KIND, scan_landing
from assets.land import land_default
from orchestration.resources import resources_from_env
from orchestration.sensors import REASON_TAG

TIMEOUT_S = int(os.environ.get("DD_DEMO_TIMEOUT_S", "900"))
QUIET_S = 70
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def _open_backfills(instance: DagsterInstance) -> list:
    return instance.get_backfills(status=BulkActionStatus.REQUESTED)


def _run_daemon_until_settled(instance: DagsterInstance, expected: dict[str, str]) -> None:
    """Run the daemon until the raw tables hold their last landed day and everything that
    followed (episode models through their automation sensor) has finished: no run or backfill
    in flight and nothing new for QUIET_S seconds (two sensor intervals)."""
    log_path = os.path.join(instance.root_directory, "demo-daemon.log")
    print(f"  daemon and run logs: {log_path}")
    log = open(log_path, "ab")  # noqa: SIM115 - open for the daemon's lifetime
    daemon = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "dagster-daemon"),
            "run",
            "-m",
            "orchestration.definitions",
        ],
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    reported: set[str] = set()
    deadline = time.monotonic() + TIMEOUT_S
    last_change = time.monotonic()
    try:
        while time.monotonic() < deadline:
            time.sleep(3)
            runs = instance.get_runs()
            for run in reversed(runs):
                line = f"{run.run_id[:8]} {run.status.value}"
                if line not in reported:
                    reported.add(line)
                    last_change = time.monotonic()
                    why = run.tags.get(REASON_TAG) or run.tags.get("dagster/sensor_name", "")
                    print(f"  run {line} {run.job_name} ({why})", flush=True)
            raw_done = all(
                day in instance.get_materialized_partitions(AssetKey(table))
                for table, day in expected.items()
            )
            busy = any(r.status not in FINISHED for r in runs) or _open_backfills(instance)
            if raw_done and not busy and time.monotonic() - last_change > QUIET_S:
                return
            if daemon.poll() is not None:
                raise SystemExit(f"dagster-daemon exited with {daemon.returncode}")
        raise SystemExit(f"the demo's runs did not settle within {TIMEOUT_S} s")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()


def _summary(instance: DagsterInstance) -> bool:
    ok = True
    for table in TABLE_OF_KIND.values():
        key = AssetKey(table)
        event = instance.get_latest_materialization_event(key)
        if event is None:
            continue
        parts = instance.get_materialized_partitions(key)
        meta = event.asset_materialization.metadata
        print(
            f"  {table}: {len(parts)} daily partitions; last run "
            f"{meta['dagster/row_count'].value} rows accepted, "
            f"{meta['rows_quarantined'].value} quarantined"
        )
        for check in ("contract", "nothing_lost", "quarantine_rate", "landed_files_readable"):
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [AssetCheckKey(key, check)]
            )
            for execution in record.values():
                status = execution.status.value
                ok &= status == "SUCCEEDED" or check in ("quarantine_rate", "landed_files_readable")
                print(f"    check {check}: {status}")
    models = sorted(episode_models.keys, key=lambda k: k.to_user_string())
    built = {k.to_user_string(): len(instance.get_materialized_partitions(k)) for k in models}
    if any(built.values()):
        print(
            "  episode models (monthly partitions built): "
            + ", ".join(f"{name} {n}" for name, n in built.items())
        )
    failed = _failed_dbt_checks(instance, episode_models)
    for name in failed:
        print(f"    dbt test failed: {name}")
    return ok and not failed


def _failed_dbt_checks(instance: DagsterInstance, assets_def) -> list[str]:
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        list(assets_def.check_keys)
    )
    return [
        key.to_user_string()
        for key, execution in latest.items()
        if execution.status.value == "FAILED"
    ]


def main() -> int:
    resources = resources_from_env()
    storage, feeds = resources["storage"].get(), resources["feeds"].load()
    rel, new = land_default(storage, feeds)
    print(f"{'landed' if new else 'already landed'}: {storage.uri(rel)}")
    landed = [f for f in scan_landing(storage, feeds) if f.dates]
    expected = {
        TABLE_OF_KIND[feeds[f.feed].kind]: f.dates[-1]
        for f in landed
        if feeds[f.feed].kind in TABLE_OF_KIND
    }
    instance = DagsterInstance.get()
    pending = {
        table: day
        for table, day in expected.items()
        if day not in instance.get_materialized_partitions(AssetKey(table))
    }
    if pending:
        print(f"starting the Dagster daemon; the landing sensor will ingest {sorted(pending)}")
        started = time.monotonic()
        _run_daemon_until_settled(instance, pending)
        print(f"ingested in {time.monotonic() - started:.0f} s")
    else:
        print("raw partitions already built for everything landed")
    ok = _summary(instance)
    print(f"storage root: {storage.root}\nDagster home: {os.environ.get('DAGSTER_HOME')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
