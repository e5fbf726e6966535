"""orchestration/polling.py, what the demo and the drift scenario wait with: a real child process
group, a real (ephemeral) Dagster instance, real clocks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from orchestration.polling import Quiet, runs_in_flight, start_process, stop_process, wait_until


def test_quiet_holds_only_after_the_condition_held_without_a_break() -> None:
    quiet = Quiet(0.2)
    assert not quiet.holds(True)  # just started holding
    time.sleep(0.25)
    assert quiet.holds(True)
    assert not quiet.holds(False)  # a break starts the count again
    assert not quiet.holds(True)
    quiet.reset()
    assert not quiet.holds(True)


def test_wait_until_ticks_then_returns_or_times_out() -> None:
    ticks: list[float] = []
    wait_until(
        "three ticks",
        lambda: len(ticks) >= 3,
        timeout=5,
        poll=0.01,
        on_tick=lambda: ticks.append(1),
    )
    assert len(ticks) == 3
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="waiting for never"):
        wait_until("never", lambda: False, timeout=0.2, poll=0.05)
    assert 0.2 <= time.monotonic() - started < 2


def test_a_started_process_and_its_children_are_stopped(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    # The child starts a grandchild and reports its pid: stopping the group ends both.
    script = (
        "import subprocess, sys, time; "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(g.pid, flush=True); time.sleep(60)"
    )
    proc = start_process([sys.executable, "-c", script], log)
    wait_until("the grandchild's pid", lambda: log.read_text().strip() != "", timeout=30, poll=0.05)
    grandchild = int(log.read_text().split()[0])
    stop_process(proc, timeout=10)
    assert proc.returncode is not None
    wait_until("the grandchild to end", lambda: not _alive(grandchild), timeout=10, poll=0.05)
    stop_process(proc)  # stopping a stopped process is a no-op


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended; only its entry is left
        return stat.read().split()[2] != "Z"


def test_runs_in_flight_counts_starting_and_started_runs_not_finished_ones() -> None:
    @dg.op
    def noop() -> None:
        pass

    @dg.job
    def job() -> None:
        noop()

    with dg.instance_for_test() as instance:
        assert runs_in_flight(instance) == 0
        job.execute_in_process(instance=instance)
        assert runs_in_flight(instance) == 0
        for status in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
            instance.create_run_for_job(job, status=status)
        assert runs_in_flight(instance) == 2
