"""Watching a Dagster instance from a command-line tool (the demo, the drift scenario): the
daemon as a child process, runs in flight, and waiting until a condition holds or goes quiet.

Imports Dagster lazily, inside the functions that need it: the scenario's ``--help`` and its
argument parsing stay fast."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Runs that hold the instance busy: waiting for, or on, a worker.
IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def start_process(
    cmd: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """``cmd`` in its own session (stopped with its children by :func:`stop_process`), output
    appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=None if env is None else dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_daemon(log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """The Dagster daemon (sensors, automation, run queue) of ``orchestration.definitions``."""
    daemon = str(Path(sys.executable).parent / "dagster-daemon")
    return start_process([daemon, "run", "-m", "orchestration.definitions"], log, env)


def stop_process(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM to the process group, SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def runs_in_flight(instance: Any) -> int:
    """Runs queued or running, plus backfills still requested."""
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    statuses = [dg.DagsterRunStatus[name] for name in IN_FLIGHT]
    runs = instance.get_runs_count(dg.RunsFilter(statuses=statuses))
    return runs + len(instance.get_backfills(status=BulkActionStatus.REQUESTED))


class Quiet:
    """True once a condition has held for ``seconds`` without interruption."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.since: float | None = None

    def reset(self) -> None:
        self.since = None

    def holds(self, condition: bool) -> bool:
        if not condition:
            self.reset()
            return False
        self.since = self.since or time.monotonic()
        return time.monotonic() - self.since >= self.seconds


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    timeout: float,
    poll: float = 3.0,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` (after ``on_tick``) every ``poll`` seconds until it is true; raise
    TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if on_tick is not None:
            on_tick()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
