"""The main job on embedded defaults (``make demo``): land the default feed and a desk's
decision journal, let the real Dagster daemon ingest them, build episodes and datasets, then
land simulated expert feedback on those episodes and let the datasets follow; train, evaluate
and promote a champion; measure drift against it; report what was built, phase by phase.

Ingestion runs the production path: landed file → landing sensor → single-run backfill of the
raw partitions → blocking checks. The demo owns the rest of its sequence: its daemon runs with
the episodes automation and the retrain sensor paused, and after each landing the demo builds
the derived assets itself as recorded runs, one ranged run for every monthly episode model
(every month, one ``dbt build``) and one for the marts and exports. Left to the automation
sensor, the first months' episodes were rebuilt run after run while history was still landing
(about 40 runs, an hour on 2 cores); the ranged run takes a minute. Nothing is materialized
behind Dagster's back, so the UI started afterwards shows the runs, the lineage from the landed
files (with their hashes) and the checks, and its automation sensor starts on a fully built
instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster import AssetCheckKey, AssetKey, DagsterInstance

from assets.core.materializations import latest_metadata
from assets.core.partitions import monthly_partitions
from assets.core.resources import resources_from_env
from assets.episodes.datasets import dataset_checks
from assets.episodes.dbt_assets import dataset_models, episode_models
from assets.ingestion.ingest import TABLE_OF_KIND, scan_landing
from assets.ingestion.landing import land_default, land_file
from orchestration.demo_feeds import desk_journal, simulated_expert_feedback
from orchestration.polling import Quiet, runs_in_flight, start_daemon, stop_process, wait_until
from orchestration.sensors import REASON_TAG

# Per landing: a stuck ingestion must not hang the demo forever.
TIMEOUT_S = int(os.environ.get("DD_DEMO_TIMEOUT_S", "3600"))
# With the automation paused nothing follows the raw runs: settled once they are done and no
# run is in flight for a few seconds (a sensor tick that has just requested a run shows it).
QUIET_S = 10


def _run_daemon_until_settled(instance: DagsterInstance, expected: dict[str, str]) -> None:
    """Run the daemon until the raw tables hold their last landed day and everything that
    followed (episode models through their automation sensor) has finished: no run or backfill
    in flight and nothing new for QUIET_S seconds (two sensor intervals)."""
    log_path = Path(instance.root_directory) / "demo-daemon.log"
    print(f"  daemon and run logs: {log_path}")
    # The demo owns its sequence: its daemon only ingests. The episodes automation would rebuild
    # the first months' episodes while history is still landing, and the retrain sensor would
    # train on them before the journal and feedback phases; the demo builds and trains itself.
    paused = {"DD_RETRAIN_PAUSED": "1", "DD_AUTOMATION_PAUSED": "1"}
    daemon = start_daemon(log_path, {**os.environ, **paused})
    reported: set[str] = set()
    quiet = Quiet(QUIET_S)

    def report_runs() -> None:
        if daemon.poll() is not None:
            raise SystemExit(f"dagster-daemon exited with {daemon.returncode}")
        for run in reversed(instance.get_runs()):
            line = f"{run.run_id[:8]} {run.status.value}"
            if line not in reported:
                reported.add(line)
                quiet.reset()
                why = run.tags.get(REASON_TAG) or run.tags.get("dagster/sensor_name", "")
                print(f"  run {line} {run.job_name} ({why})", flush=True)

    def settled() -> bool:
        raw_done = all(
            day in instance.get_materialized_partitions(AssetKey(table))
            for table, day in expected.items()
        )
        return quiet.holds(raw_done and not runs_in_flight(instance))

    try:
        wait_until("the demo's runs to settle", settled, TIMEOUT_S, on_tick=report_runs)
    except TimeoutError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        stop_process(daemon)


def _summary(instance: DagsterInstance) -> bool:
    ok = True
    for table in TABLE_OF_KIND.values():
        key = AssetKey(table)
        meta = latest_metadata(instance, key)
        if not meta:
            continue
        parts = instance.get_materialized_partitions(key)
        print(
            f"  {table}: {len(parts)} daily partitions; last run "
            f"{meta['run_rows_accepted']} rows accepted, {meta['rows_quarantined']} quarantined"
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
    for key in sorted(dataset_models.keys, key=lambda k: k.to_user_string()):
        meta = latest_metadata(instance, key)
        if not meta:
            ok = False
            print(f"  {key.to_user_string()}: not built")
            continue
        rows = meta.get("dagster/row_count")
        print(f"  {key.to_user_string()}: built" + (f", {rows} rows" if rows else ""))
    for name in ("ds_sft_files", "ds_dpo_files", "ds_prm_files"):
        meta = latest_metadata(instance, name)
        if not meta:
            ok = False
            print(f"  {name}: not built")
            continue
        counts = {k: v for k, v in meta.items() if k.startswith("rows_")}
        print(f"  {name}: {counts}")
    failed = [
        name
        for checked in (episode_models, dataset_models, *dataset_checks)
        for name in _failed_dbt_checks(instance, checked)
    ]
    for name in failed:
        print(f"    check failed: {name}")
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


def _land_frame(storage, feed, frame, name: str) -> None:
    """Write an example frame as CSV and land it (immutable: an existing file stays, even if
    this demo run would write other rows: landing them under the same name is refused)."""
    if storage.exists(feed.landed_path(name)):
        print(f"already landed: {storage.uri(feed.landed_path(name))} (kept)")
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        frame.to_csv(path, index=False)
        rel, new = land_file(storage, feed, path)
    print(f"{'landed' if new else 'already landed'}: {storage.uri(rel)} ({len(frame)} rows)")


def _ingest_landed(instance: DagsterInstance, storage, feeds) -> bool:
    """Run the daemon until every landed file's last day is a raw partition and its runs have
    finished; False when there was nothing to ingest."""
    landed = [f for f in scan_landing(storage, feeds) if f.dates]
    expected: dict[str, str] = {}
    for f in landed:
        table = TABLE_OF_KIND.get(feeds[f.feed].kind)
        if table:
            expected[table] = max(expected.get(table, f.dates[-1]), f.dates[-1])
    pending = {
        table: day
        for table, day in expected.items()
        if day not in instance.get_materialized_partitions(AssetKey(table))
    }
    if not pending:
        print("raw partitions already built for everything landed")
        return False
    print(f"starting the Dagster daemon; the landing sensor will ingest {sorted(pending)}")
    started = time.monotonic()
    _run_daemon_until_settled(instance, pending)
    print(f"settled in {time.monotonic() - started:.0f} s")
    return True


class Phases:
    """Wall time per phase of the demo, printed as a table at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.monotonic()

    def run(self, name: str, step, *args):
        print(f"== {name}", flush=True)
        began = time.monotonic()
        try:
            return step(*args)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - began

    def report(self) -> None:
        print("demo phases (wall time):")
        for name, seconds in self.seconds.items():
            print(f"  {name:<44} {seconds:7.0f} s")
        print(f"  {'total':<44} {time.monotonic() - self.started:7.0f} s")


def main() -> int:
    phases = Phases()
    resources = resources_from_env()
    storage, feeds = resources["storage"].get(), resources["feeds"].load()
    rel, new = land_default(storage, feeds)
    print(f"{'landed' if new else 'already landed'}: {storage.uri(rel)}")
    instance = DagsterInstance.get()
    # The desk's journal lands with the bars: one raw phase and one episode build for both (a
    # recorded decision attaches to a decision point that the same dbt build creates).
    if "recorded-decisions" in feeds:
        _land_frame(storage, feeds["recorded-decisions"], desk_journal(), "desk-journal.csv")
    ingested = phases.run(
        "raw history and journal (landing sensor)", _ingest_landed, instance, storage, feeds
    )
    phases.run("episodes and datasets", _build_derived, instance, ingested)
    lakehouse = resources["warehouse"].lakehouse()
    # Feedback rates steps of built episodes; stg_feedback and the marts read it whole, so only
    # the marts and exports are built again (no monthly model reads feedback).
    if "expert-feedback" in feeds and _built(instance, AssetKey("fct_step_labels")):
        frame = simulated_expert_feedback(lakehouse)
        _land_frame(storage, feeds["expert-feedback"], frame, "expert-review.csv")
        ingested = phases.run(
            "expert feedback (landing sensor)", _ingest_landed, instance, storage, feeds
        )
        phases.run("datasets with the feedback", _build_derived, instance, ingested, False)
    ok = _summary(instance)
    if ok:
        ok = phases.run("training, evaluation, champion", _train, instance)
    if ok:
        ok = phases.run("drift against the champion", _measure_drift, instance)
    phases.report()
    print(
        f"storage root: {storage.root}\nlakehouse: {lakehouse.describe()}\n"
        f"Dagster home: {os.environ.get('DAGSTER_HOME')}"
    )
    return 0 if ok else 1


# Small on purpose: a CPU demo of the stages, not a useful model (DD_TRAINING_* resize it).
# Decisions are scored on every test decision point (likelihood scorer); these cap the rest.
DEMO_EVALUATION = {"max_format_prompts": 16, "max_pairs": 64, "max_traces": 64}


def _train(instance: DagsterInstance) -> bool:
    """Run the train_models job once (SFT -> DPO and PRM, evaluation, the champion gate) as a
    recorded Dagster run, unless the models were trained before."""
    if _built(instance, AssetKey("champion_model")):
        print("models already trained; the champion is in the MLflow registry")
        return True
    print("training SFT -> DPO and the PRM (small CPU run), evaluating, promoting the champion")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "run_config.json"
        config.write_text(
            json.dumps({**IN_PROCESS, "ops": {"model_evaluation": {"config": DEMO_EVALUATION}}})
        )
        done = _dagster("job", "execute", "-j", "train_models", "-c", str(config))
    print(
        f"  train_models: {'success' if done.returncode == 0 else 'FAILED'} "
        f"in {time.monotonic() - started:.0f} s"
    )
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return False
    for name in ("sft_model", "dpo_model", "prm_model", "model_evaluation", "champion_model"):
        meta = latest_metadata(instance, name)
        shown = {
            k: meta[k]
            for k in (
                "model_name",
                "model_version",
                "train_loss",
                "decision_accuracy",
                "decision_logp_target",
                "preference_accuracy",
                "prm_auc",
                "dpo_champion_version",
            )
            if k in meta
        }
        print(f"  {name}: {shown if meta else 'not built'}")
        if "baselines" in meta:
            # latest_metadata gives plain values (the Markdown text itself).
            print(f"  baselines on the test split:\n{meta['baselines']}")
    return True


def _dagster(*args: str) -> subprocess.CompletedProcess:
    """A recorded Dagster run through the CLI of this environment (stderr kept for errors)."""
    command, rest = args[:2], args[2:]
    return subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "dagster"),
            *command,
            "-m",
            "orchestration.definitions",
            *rest,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


# The marts and dataset files (README: "Materialize them by hand").
MARTS_SELECTION = "tag:partitioning=none and (group:episodes or group:datasets)"
MONTHLY_SELECTION = "tag:partitioning=monthly"


def _build_derived(instance: DagsterInstance, ingested: bool, monthly: bool = True) -> None:
    """After a landing: the months the raw data spans, for every monthly episode model, in one
    ranged run (one dbt build; ``monthly=False``: not needed), then the marts and dataset
    exports in one run. Skipped when nothing was ingested and everything is built (a second
    ``make demo``); a demo interrupted half-way builds again.

    Months outside the data are left unbuilt: the automation sensor of a later ``dagster dev``
    does not request them (on its first tick nothing is "newly" missing), and each month of
    each model costs Dagster two events, most of a ranged run's time."""
    months = _data_months(instance)
    if not months:
        print("no raw partitions: nothing to build")
        return
    complete = all(
        set(months) <= instance.get_materialized_partitions(k) for k in episode_models.keys
    ) and all(_built(instance, k) for k in dataset_models.keys)
    if complete and not ingested:
        print("episodes and datasets already built")
        return
    if monthly or not complete:
        _materialize(
            f"every monthly episode model, {months[0]}...{months[-1]}",
            "--select",
            MONTHLY_SELECTION,
            "--partition-range",
            f"{months[0]}...{months[-1]}",
        )
    _materialize("marts and dataset exports", "--select", MARTS_SELECTION)


def _data_months(instance: DagsterInstance) -> list[str]:
    """The monthly partition keys from the first to the last built raw day of the raw tables
    the monthly models read (feedback is read by stg_feedback, whole: its days do not count)."""
    days = sorted(
        day
        for kind, table in TABLE_OF_KIND.items()
        if kind != "feedback"
        for day in instance.get_materialized_partitions(AssetKey(table))
    )
    if not days:
        return []
    first, last = days[0][:7] + "-01", days[-1][:7] + "-01"
    return [m for m in monthly_partitions.get_partition_keys() if first <= m <= last]


def _measure_drift(instance: DagsterInstance) -> bool:
    """feature_drift and champion_performance once, against the champion just trained."""
    done = _materialize("drift and champion performance", "--select", "group:monitoring")
    meta = latest_metadata(instance, "feature_drift")
    shown = {k: meta[k] for k in ("drift_reason", "reference", "drift_triggered") if k in meta}
    print(f"  feature_drift: {shown}")
    return done


# The demo's runs execute their steps in the run's own process: a step process would import the
# whole code location again (15-20 s on 2 busy cores) for steps that take a few seconds, and 2
# cores leave no room for steps in parallel anyway.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def _materialize(what: str, *args: str) -> bool:
    """One recorded run through the CLI, its steps in one process; wall time and outcome
    printed."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "run_config.json"
        config.write_text(json.dumps(IN_PROCESS))
        done = _dagster("asset", "materialize", *args, "-c", str(config))
    ok = done.returncode == 0
    print(f"  {what}: {'success' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    if not ok:
        print(done.stderr[-3000:])
    return ok


def _built(instance: DagsterInstance, key: AssetKey) -> bool:
    return instance.get_latest_materialization_event(key) is not None


if __name__ == "__main__":
    sys.exit(main())
