"""orchestration/reaper.py: which runs are dead, with real processes and real Dagster instances.

The killed ingestion run through ``dagster asset materialize`` (a day of a million trades, its
staging folder, the rerun) is in tests/ingestion/test_killed_run.py; here a tiny job holds a pool
slot until told to finish, so each state of a CLI run can be taken in turn."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
from dagster._core.events import EngineEventData
from helpers.servers import dagster_home

from orchestration.reaper import (
    WORKER_START_GRACE_S,
    instance_is_local,
    is_loopback_url,
    process_alive,
    reap_dead_runs,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "reaper_test_pool"
# One op in a pool: it holds the pool's slot until the file named by HOLD_UNTIL exists.
JOB = f"""
import os, time
import dagster as dg

@dg.op(pool="{POOL}")
def hold(context):
    context.log.info("holding")
    while not os.path.exists(os.environ["HOLD_UNTIL"]):
        time.sleep(0.05)

@dg.job
def holder():
    hold()
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_process_alive_tells_a_live_process_from_a_gone_zombie_or_later_one():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        created = psutil.Process(proc.pid).create_time()
        assert process_alive(proc.pid, recorded_at=time.time())
        # A record older than the process is of another process that had the pid before.
        assert not process_alive(proc.pid, recorded_at=created - 60)
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not process_alive(proc.pid, recorded_at=time.time())  # killed, not yet waited
    finally:
        proc.kill()
        proc.wait()
    assert not process_alive(proc.pid, recorded_at=time.time())


def test_loopback_urls():
    assert is_loopback_url("postgresql+psycopg2://postgres@127.0.0.1:5432/db")
    assert is_loopback_url("postgresql://u:p@localhost/db")
    assert is_loopback_url("postgresql://u@[::1]:5432/db")
    assert is_loopback_url("postgresql://u@/db")  # a Unix socket
    assert is_loopback_url("postgresql://u@/db?host=/var/run/postgresql")
    assert not is_loopback_url("postgresql://u@postgres:5432/db")  # the compose service
    assert not is_loopback_url("postgresql://u@10.0.0.5/db")
    assert not is_loopback_url("postgresql://u@/db?host=db.internal")


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.local.yaml", home / "dagster.yaml")
    return home


def _claimed(instance: dg.DagsterInstance) -> list[str]:
    return [s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots]


def _step_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return starts[0].dagster_event.pid if starts else None


def test_a_cli_run_is_reaped_only_when_its_run_and_step_processes_are_gone(tmp_path):
    """``dagster job execute`` runs the job in the CLI process, its step in a child process of
    the multiprocess executor. Killing the CLI process leaves the step process running (it
    finishes its step): the slot stays held until it is gone too."""
    home = _home(tmp_path)
    release = tmp_path / "release"
    (tmp_path / "job.py").write_text(JOB)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "DAGSTER_"))}
    env |= {"DAGSTER_HOME": str(home), "HOLD_UNTIL": str(release)}
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance_is_local(instance)
    log_path = tmp_path / "cli.log"
    with open(log_path, "wb") as log:
        cli = subprocess.Popen(
            [str(BIN / "dagster"), "job", "execute", "-f", "job.py", "-j", "holder"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    step_pid = None
    try:
        deadline = time.monotonic() + 120
        while not (instance.get_runs() and _claimed(instance) and step_pid):
            assert cli.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
            runs = instance.get_runs()
            step_pid = runs and _step_pid(instance, runs[0].run_id)
        (run,) = instance.get_runs()
        assert step_pid != cli.pid
        assert reap_dead_runs(instance) == []  # alive

        cli.send_signal(signal.SIGKILL)
        cli.wait()
        assert psutil.pid_exists(step_pid)
        # The run process is gone, its step process is still writing: not yet.
        assert reap_dead_runs(instance) == []
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        assert _claimed(instance) == [run.run_id]

        release.touch()  # the orphaned step finishes its step and exits
        deadline = time.monotonic() + 60
        while process_alive(step_pid, recorded_at=time.time()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        successes = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        assert [e.step_key for e in successes] == ["hold"]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        assert _claimed(instance) == [run.run_id]  # nothing else frees it

        (reaped,) = reap_dead_runs(instance)
        assert reaped.run_id == run.run_id
        assert [(p.what, p.pid) for p in reaped.processes] == [("run", cli.pid)]
        assert reaped.freed_slots == [f"{POOL} (hold)"]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert _claimed(instance) == []
        # The slot can be claimed again.
        claim = instance.event_log_storage.claim_concurrency_slot(POOL, "next-run", "hold")
        assert claim.is_claimed
        assert reap_dead_runs(instance) == []
    finally:
        release.touch()
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        instance.dispose()


def _started_run(instance: dg.DagsterInstance, pid: int) -> dg.DagsterRun:
    """A run as a CLI process records it: RUN_START written by the process ``pid``."""
    run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(name="g"))
    instance.report_dagster_event(
        dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="g", pid=pid), run.run_id
    )
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    return run


def test_a_step_being_launched_gets_a_grace_period(tmp_path):
    """The run process died right after launching a step process that has not reported its pid
    yet: that process may still come up and write, so the run is left alone for a while."""
    instance = dg.DagsterInstance.from_config(str(_home(tmp_path)))
    try:
        pid = _dead_pid()
        run = _started_run(instance, pid)
        instance.report_dagster_event(
            dg.DagsterEvent(
                dg.DagsterEventType.STEP_WORKER_STARTING.value,
                "g",
                event_specific_data=EngineEventData(),
                pid=pid,
                step_key="s",
            ),
            run.run_id,
        )
        assert reap_dead_runs(instance) == []
        (reaped,) = reap_dead_runs(instance, now=time.time() + WORKER_START_GRACE_S + 1)
        assert reaped.run_id == run.run_id
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    finally:
        instance.dispose()


def test_a_run_recorded_by_this_process_is_alive(tmp_path):
    instance = dg.DagsterInstance.from_config(str(_home(tmp_path)))
    try:
        run = _started_run(instance, os.getpid())
        assert reap_dead_runs(instance) == []
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        instance.dispose()


def test_a_postgres_instance_on_a_loopback_address_is_local(tmp_path, pg_database, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_DB", pg_database)
    instance = dg.DagsterInstance.from_config(str(dagster_home(tmp_path / "home")))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance_is_local(instance)
    finally:
        instance.dispose()
