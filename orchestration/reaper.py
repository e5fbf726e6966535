"""The run reaper: a run whose processes were killed is marked failed and its pool slots freed.

Runs the daemon launches are watched: their code server marks one FAILURE as soon as its process
is gone, and run monitoring frees the slots of finished runs (``deploy/dagster.local.yaml``). A
run started from the command line (``dagster asset materialize``, ``dagster job execute``)
executes inside the CLI process, and nothing watches it: killed with SIGKILL it stays STARTED
forever and keeps the pool slot its step claimed (``raw_bars_writer``, ``duckdb_warehouse``), so
the pool's next run waits indefinitely.

Each tick of :data:`run_reaper` looks at every STARTED run and reads from its event log the
processes that may still work for it (Dagster records the pid of the process that wrote each
event):

* the run process: the pid of each ``RUN_START`` (the CLI process, or a launched run worker);
* the process of each step that started and has not finished: the pid of its latest
  ``STEP_WORKER_STARTED`` / ``STEP_START``. A step process outlives a
  killed CLI process (it is a child of the multiprocess executor's forkserver) and finishes its
  step: the run's slot must stay held until it is gone too;
* a step whose worker was being launched (``STEP_WORKER_STARTING``) without having reported its
  pid yet: its process may still come up, so the run waits :data:`WORKER_START_GRACE_S`.

When none of them is alive the run is reported failed (``instance.report_run_failed``, its
message names the processes) and its pool slots are freed at once
(``free_concurrency_slots_for_run``: the slots, and the pending steps of other runs waiting on
them get them). A pid counts as alive only if a process with it exists, is not a zombie, and was
created before the event recorded it: a later process under the same pid (reuse) is another one.

Pids only mean something on the machine that recorded them, so the reaper acts only on instances
whose storage no other machine writes to: SQLite files (the embedded instance) or PostgreSQL on a
loopback address. On a shared instance (the compose/Kubernetes deployment) it leaves CLI runs
alone; the runs the daemon launches there are watched by run monitoring.

Each tick also removes the ``.staging/`` scratch folders of processes of this host that are gone
(:meth:`Storage.clean_stale_staging`): a killed run leaves its staging folder behind.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import dagster as dg
import psutil
from dagster._core.storage.runs import InMemoryRunStorage, SqliteRunStorage
from sqlalchemy.engine import make_url

from assets.core.resources import StorageResource

# A step process reports its pid (STEP_WORKER_STARTED) within seconds of being launched; until
# this long after its launch an unreported one may still come up and write.
WORKER_START_GRACE_S = 60.0
# A process created after the event that recorded its pid is another process that got the pid
# (after a reboot, or once pids wrapped around). psutil derives creation times from the boot
# time and clock ticks, and the wall clock may be stepped meanwhile: a process counts as created
# after the record only beyond this much. Erring long only leaves a dead run STARTED for as long
# as the later process lives; erring short could fail a live one.
CLOCK_SLACK_S = 5.0

_RUN_PROCESS_EVENTS = {dg.DagsterEventType.RUN_START}
_STEP_PROCESS_EVENTS = {dg.DagsterEventType.STEP_WORKER_STARTED, dg.DagsterEventType.STEP_START}
_STEP_DONE_EVENTS = {
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_SKIPPED,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
}
_LAUNCH = dg.DagsterEventType.STEP_WORKER_STARTING


@dataclass(frozen=True)
class RecordedProcess:
    """A process that wrote an event of a run: ``what`` it is (``run`` or ``step <key>``), its
    pid, and when it was recorded (it was alive then)."""

    what: str
    pid: int
    recorded_at: float

    def __str__(self) -> str:
        return f"{self.what} process {self.pid}"


@dataclass(frozen=True)
class Reaped:
    run_id: str
    processes: list[RecordedProcess]
    freed_slots: list[str]  # "pool (step)" of each slot the run held


def process_alive(pid: int, recorded_at: float) -> bool:
    """Whether the process that was recorded with ``pid`` at ``recorded_at`` still exists on
    this host: the pid exists, is not a zombie, and its process was created by then."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= recorded_at + CLOCK_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; someone else's


def instance_is_local(instance: dg.DagsterInstance) -> bool:
    """Whether only processes of this machine write the instance's runs: SQLite or in-memory
    storage, or PostgreSQL reached over a loopback address or a local socket."""
    storage = instance.run_storage
    if isinstance(storage, (SqliteRunStorage, InMemoryRunStorage)):
        return True
    url = getattr(storage, "postgres_url", None)
    return url is not None and is_loopback_url(url)


def is_loopback_url(url: str) -> bool:
    """Whether a database URL reaches its server over a loopback address or a Unix socket."""
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host")
    if not host or str(host).startswith("/"):
        return True  # libpq's Unix socket
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: possibly another machine


def recorded_processes(
    instance: dg.DagsterInstance, run_id: str
) -> tuple[list[RecordedProcess], dict[str, float]]:
    """The processes that may still work for the run, and the steps whose worker was being
    launched without a pid yet (step key -> when)."""
    records = instance.get_records_for_run(
        run_id,
        of_type=_RUN_PROCESS_EVENTS | _STEP_PROCESS_EVENTS | _STEP_DONE_EVENTS | {_LAUNCH},
    ).records
    run_processes: list[RecordedProcess] = []
    steps: dict[str, RecordedProcess] = {}
    launching: dict[str, float] = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        kind, key, at = event.event_type, event.step_key, record.timestamp
        if kind in _RUN_PROCESS_EVENTS and event.pid is not None:
            run_processes.append(RecordedProcess("run", event.pid, at))
        elif key is None:
            continue
        elif kind == _LAUNCH:
            steps.pop(key, None)
            launching[key] = at
        elif kind in _STEP_PROCESS_EVENTS and event.pid is not None:
            launching.pop(key, None)
            steps[key] = RecordedProcess(f"step {key}", event.pid, at)
        elif kind in _STEP_DONE_EVENTS:
            launching.pop(key, None)
            steps.pop(key, None)
    return [*run_processes, *steps.values()], launching


def dead_processes(
    instance: dg.DagsterInstance, run_id: str, now: float
) -> list[RecordedProcess] | None:
    """The run's recorded processes if every one of them is gone (so nothing can finish the
    run or write for it), else None. None too when the run recorded no process."""
    processes, launching = recorded_processes(instance, run_id)
    if not any(p.what == "run" for p in processes):
        return None
    if any(now - at < WORKER_START_GRACE_S for at in launching.values()):
        return None
    if any(process_alive(p.pid, p.recorded_at) for p in processes):
        return None
    return processes


def _claimed_slots(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    storage = instance.event_log_storage
    return sorted(
        f"{pool} ({slot.step_key})"
        for pool in storage.get_concurrency_keys()
        for slot in storage.get_concurrency_info(pool).claimed_slots
        if slot.run_id == run_id
    )


def reap_dead_runs(instance: dg.DagsterInstance, now: float | None = None) -> list[Reaped]:
    """Report failed every STARTED run of this host whose processes are all gone, and free its
    pool slots. Does nothing on an instance other machines write to (see the module doc)."""
    if not instance_is_local(instance):
        return []
    now = time.time() if now is None else now
    reaped = []
    started = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    for record in started:
        run_id = record.dagster_run.run_id
        processes = dead_processes(instance, run_id, now)
        if processes is None:
            continue
        run = instance.get_run_by_id(run_id)
        if run is None or run.status != dg.DagsterRunStatus.STARTED:
            continue  # finished meanwhile (its code server reported it)
        concurrency = instance.event_log_storage.supports_global_concurrency_limits
        slots = _claimed_slots(instance, run_id) if concurrency else []
        instance.report_run_failed(
            run,
            "Marked failed by the run reaper: its processes are gone ("
            + ", ".join(map(str, processes))
            + "), killed or crashed without reporting an end."
            + (f" Freeing its pool slots: {', '.join(slots)}." if slots else ""),
        )
        if concurrency:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        reaped.append(Reaped(run_id, processes, slots))
    return reaped


@dg.sensor(
    name="run_reaper",
    description="Fails runs whose processes were killed (a `dagster asset materialize` run "
    "killed with SIGKILL stays STARTED otherwise), frees their pool slots, and removes the "
    "staging folders of processes that are gone.",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_reaper(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SkipReason:
    reaped = reap_dead_runs(context.instance)
    for r in reaped:
        context.log.warning(
            f"run {r.run_id}: marked failed, its processes are gone "
            f"({', '.join(map(str, r.processes))}); freed slots: {', '.join(r.freed_slots) or 'none'}"
        )
    removed = storage.get().clean_stale_staging()
    for path in removed:
        context.log.info(f"removed the staging folder of a process that is gone: {path}")
    if not reaped and not removed:
        return dg.SkipReason("no dead runs")
    return dg.SkipReason(
        f"failed {len(reaped)} dead run(s) {[r.run_id for r in reaped]}, "
        f"removed {len(removed)} staging folder(s)"
    )
