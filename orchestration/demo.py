"""The main job on embedded defaults (``make demo``): land the default feed and a desk's
decision journal, let the real Dagster daemon ingest them and build episodes and datasets, then
land simulated expert feedback on those episodes and let the datasets follow; report what was
built.

Runs the same path as production: landed file → landing sensor → single-run backfill of the raw
partitions → blocking checks → automation of the dbt models, datasets and exports. Nothing is
materialized behind Dagster's back, so the UI started afterwards shows the runs, the lineage
from the landed files (with their hashes) and the checks.
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
from assets.core.resources import resources_from_env
from assets.episodes.datasets import dataset_checks
from assets.episodes.dbt_assets import dataset_models, episode_models
from assets.ingestion.ingest import TABLE_OF_KIND, scan_landing
from assets.ingestion.landing import land_default, land_file
from orchestration.demo_feeds import desk_journal, simulated_expert_feedback
from orchestration.polling import Quiet, runs_in_flight, start_daemon, stop_process, wait_until
from orchestration.sensors import REASON_TAG

# Per phase: on a busy 2-core machine the first phase (4,749 raw days, then 159 months of dbt
# layers) took longer than 15 minutes; an hour leaves room without hiding a stuck run forever.
TIMEOUT_S = int(os.environ.get("DD_DEMO_TIMEOUT_S", "3600"))
QUIET_S = 70


def _run_daemon_until_settled(instance: DagsterInstance, expected: dict[str, str]) -> None:
    """Run the daemon until the raw tables hold their last landed day and everything that
    followed (episode models through their automation sensor) has finished: no run or backfill
    in flight and nothing new for QUIET_S seconds (two sensor intervals)."""
    log_path = Path(instance.root_directory) / "demo-daemon.log"
    print(f"  daemon and run logs: {log_path}")
    # The demo owns its sequence: its daemon's retrain sensor must not start CPU training on the
    # first months' episodes (before the journal and feedback phases); the demo trains once, last.
    daemon = start_daemon(log_path, {**os.environ, "DD_RETRAIN_PAUSED": "1"})
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


def _ingest_landed(instance: DagsterInstance, storage, feeds) -> None:
    """Run the daemon until every landed file's last day is a raw partition and all that
    follows has settled (nothing to do when that is already the case)."""
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
        return
    print(f"starting the Dagster daemon; the landing sensor will ingest {sorted(pending)}")
    started = time.monotonic()
    _run_daemon_until_settled(instance, pending)
    print(f"settled in {time.monotonic() - started:.0f} s")


def main() -> int:
    resources = resources_from_env()
    storage, feeds = resources["storage"].get(), resources["feeds"].load()
    rel, new = land_default(storage, feeds)
    print(f"{'landed' if new else 'already landed'}: {storage.uri(rel)}")
    instance = DagsterInstance.get()
    _ingest_landed(instance, storage, feeds)
    # The journal lands once the bars are in: a recorded decision needs the decision point it
    # attaches to (landed first, its month's run fails and is redone when the bars arrive).
    if "recorded-decisions" in feeds:
        _land_frame(storage, feeds["recorded-decisions"], desk_journal(), "desk-journal.csv")
        _ingest_landed(instance, storage, feeds)
    lakehouse = resources["warehouse"].lakehouse()
    if "expert-feedback" in feeds and _built(instance, AssetKey("fct_step_labels")):
        frame = simulated_expert_feedback(lakehouse)
        _land_frame(storage, feeds["expert-feedback"], frame, "expert-review.csv")
        _ingest_landed(instance, storage, feeds)
    _complete_marts(instance)
    ok = _summary(instance)
    if ok:
        ok = _train(instance)
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
        config.write_text(json.dumps({"ops": {"model_evaluation": {"config": DEMO_EVALUATION}}}))
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


def _complete_marts(instance: DagsterInstance) -> None:
    """A demo interrupted after its last landing leaves the raw tables complete and a mart
    unbuilt; the sensors have nothing new to react to, so build the marts once, as a run."""
    missing = [k.to_user_string() for k in dataset_models.keys if not _built(instance, k)]
    if not missing:
        return
    print(f"building the marts once more ({', '.join(sorted(missing))} not built)")
    done = _dagster("asset", "materialize", "--select", MARTS_SELECTION)
    if done.returncode != 0:
        print(done.stderr[-3000:])


def _built(instance: DagsterInstance, key: AssetKey) -> bool:
    return instance.get_latest_materialization_event(key) is not None


if __name__ == "__main__":
    sys.exit(main())
