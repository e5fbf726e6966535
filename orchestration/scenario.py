"""The drift scenario: a regime shift travels from a websocket stream to a retrained model.

``python -m orchestration.scenario`` (``make scenario``) runs, in a fresh home (default
``var/scenario``), with the real Dagster daemon and its sensors:

1. the replay server (``assets.live.replay``) streams simulated trades in Binance's trade-stream
   format; the collector (``assets.live.collector``) lands them as micro-batch files in the
   ``live-trades`` feed; the landing sensor ingests them into ``raw_trades``; the automation
   sensor builds the episodes, datasets and ``feature_drift``;
2. after the pre-shift days a first model is trained (``train_models``, reason ``initial``) and
   becomes champion: the drift reference is now its training snapshot;
3. the post-shift days are streamed one at a time (the simulator's ``DriftShift``: volatility,
   trade sizes and rate jump at ``--shift-at``); each new day moves the drift window; once the
   drift has persisted ``consecutive_windows`` windows, ``feature_drift`` says
   ``drift_triggered`` and ``retrain_sensor`` launches ``train_models`` (reason ``drift``);
4. the challenger is evaluated against the champion and the gate ``beats_champion`` gives its
   verdict.

It prints the timeline as it happens (file landed, partition ingested, drift score, retrain
requested, challenger verdict) and writes it to ``<home>/timeline.json``. Training uses the tiny
model for a few steps (the point is the loop, not the model); the new-data trigger is set out of
reach so that the retrain seen is the drift's.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestration.polling import (
    Quiet,
    runs_in_flight,
    start_daemon,
    start_process,
    stop_process,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]
FEED = "live-trades"
TRAIN_JOB = "train_models"
DRIFT_ASSET = "feature_drift"


@dataclass
class Timeline:
    """Events with wall-clock times, printed as they are seen."""

    started: float = field(default_factory=time.time)
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, text: str, at: float | None = None, **data: Any) -> None:
        at = at or time.time()
        stamp = datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")
        print(f"{stamp} +{at - self.started:6.0f}s  {kind:<20} {text}", flush=True)
        self.events.append({"at": at, "kind": kind, "text": text, **data})


def scenario_env(home: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DD_LAKEHOUSE_CATALOG_DSN"}
    env.update(
        DAGSTER_HOME=str(home / "dagster"),
        DD_STORAGE_ROOT=str(home / "store"),
        DD_LAKEHOUSE_CATALOG=str(home / "lakehouse.sqlite"),
        DD_LAKEHOUSE_DATA_PATH=str(home / "store" / "lakehouse"),
        MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
        MLFLOW_ARTIFACT_LOCATION=str(home / "mlflow-artifacts"),
        DD_TRAINING_BASE_MODEL=args.base_model,
        DD_TRAINING_MAX_STEPS=str(args.train_steps),
        DD_TRAINING_OUTPUT_ROOT=str(home / "training"),
        # The retrain this scenario shows is the drift's, not the new-data trigger's.
        DD_RETRAIN_MIN_NEW_MATURE_EPISODES=str(10**9),
        PYTHONUNBUFFERED="1",
    )
    return env


def prepare_home(home: Path) -> None:
    if home.exists():
        shutil.rmtree(home)
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.local.yaml", home / "dagster" / "dagster.yaml")


class Watcher:
    """Polls the Dagster instance and the landing zone; adds what is new to the timeline."""

    def __init__(self, timeline: Timeline, storage: Any) -> None:
        import dagster as dg

        self.dg = dg
        self.instance = dg.DagsterInstance.get()
        self.timeline = timeline
        self.storage = storage
        self.after: dict[str, int] = {}
        self.files_seen: set[str] = set()
        self.runs_seen: set[str] = set()
        self.check_seen: int | None = None
        self.latest: dict[str, dict[str, Any]] = {}

    def _new_materializations(self, key: str) -> list[Any]:
        result = self.instance.fetch_materializations(
            self.dg.AssetRecordsFilter(
                asset_key=self.dg.AssetKey(key), after_storage_id=self.after.get(key)
            ),
            limit=1000,
            ascending=True,
        )
        if result.records:
            self.after[key] = result.records[-1].storage_id
        return list(result.records)

    @staticmethod
    def _meta(record: Any) -> dict[str, Any]:
        from assets.core.materializations import plain_metadata

        m = record.asset_materialization.metadata if record.asset_materialization else {}
        return plain_metadata(m)

    def poll(self) -> None:
        from dagster._core.storage.asset_check_execution_record import (
            AssetCheckExecutionRecordStatus,
        )

        from assets.core.materializations import plain_metadata

        t = self.timeline
        for f in self.storage.list_files(f"landing/{FEED}"):
            if f.path not in self.files_seen:
                self.files_seen.add(f.path)
                t.add("file landed", f"{f.path.rsplit('/', 1)[-1]} ({f.size:,} bytes)")
        raw = self._new_materializations("raw_trades")
        if raw:
            parts = sorted({r.partition_key for r in raw if r.partition_key})
            # Every day of a range run carries the run's totals: count each run once.
            runs = {r.run_id: self._meta(r).get("run_rows_accepted", 0) for r in raw}
            rows = sum(int(v or 0) for v in runs.values())
            t.add(
                "partition ingested",
                f"raw_trades {', '.join(parts)}: {rows:,} rows accepted",
                at=raw[-1].timestamp,
            )
        for r in self._new_materializations("fct_decision_episodes"):
            t.add("episodes built", f"fct_decision_episodes (run {r.run_id[:8]})", at=r.timestamp)
        for r in self._new_materializations(DRIFT_ASSET):
            m = self._meta(r)
            self.latest[DRIFT_ASSET] = m
            t.add(
                "drift score",
                f"vs {m.get('reference')}: severity {float(m.get('severity', 0) or 0):.2f}, "
                f"max PSI {float(m.get('max_psi', 0) or 0):.2f}, drifted "
                f"[{m.get('drifted_features') or '-'}], window to {m.get('window_end') or '-'}"
                f"{' -> RETRAIN' if m.get('drift_triggered') else ''} ({m.get('drift_reason')})",
                at=r.timestamp,
                triggered=bool(m.get("drift_triggered")),
            )
        for run in self.instance.get_runs(self.dg.RunsFilter(job_name=TRAIN_JOB)):
            if run.run_id not in self.runs_seen:
                self.runs_seen.add(run.run_id)
                reason = run.tags.get("decision_data/retrain_reason", "manual")
                detail = run.tags.get("decision_data/retrain_detail", "")
                t.add("retrain requested", f"{run.run_id[:8]} reason={reason} {detail}")
        for r in self._new_materializations("champion_model"):
            m = self._meta(r)
            self.latest["champion_model"] = m
            t.add(
                "champion",
                f"{m.get('dpo_model_name')} v{m.get('dpo_champion_version')} "
                f"(train data until {m.get('snapshot_until')})",
                at=r.timestamp,
            )
        record = self.instance.get_latest_asset_check_evaluation_record(
            self.dg.AssetCheckKey(self.dg.AssetKey("model_evaluation"), "beats_champion")
        )
        finished = (
            AssetCheckExecutionRecordStatus.SUCCEEDED,
            AssetCheckExecutionRecordStatus.FAILED,
        )
        if record is not None and record.id != self.check_seen and record.status in finished:
            self.check_seen = record.id
            ev = record.evaluation
            meta = plain_metadata(ev.metadata or {})
            verdict = "PROMOTE" if ev.passed else "KEEP CHAMPION"
            t.add(
                "challenger verdict",
                f"{verdict}: challenger v{meta.get('challenger_version')} vs champion "
                f"{meta.get('champion_version') or '(none)'}: {meta.get('reason')}",
                at=record.event.timestamp if record.event else record.create_timestamp,
                passed=bool(ev.passed),
            )

    def runs_in_progress(self) -> int:
        return runs_in_flight(self.instance)

    def train_runs(self) -> list[Any]:
        return list(self.instance.get_runs(self.dg.RunsFilter(job_name=TRAIN_JOB)))


def wait_for(what: str, predicate, watcher: Watcher, timeout: float, poll: float = 3.0) -> None:
    wait_until(what, predicate, timeout, poll, on_tick=watcher.poll)


def expected_last_ids(args: argparse.Namespace, day: date) -> dict[str, int]:
    """Per symbol, the last trade id the replay of ``day`` sends (from the same simulator)."""
    from assets.live.simulator import MarketSimulator

    table = MarketSimulator(simulator_config(args)).trades_for_day(day)
    ids: dict[str, int] = {}
    for symbol, trade_id in zip(
        table["symbol"].to_pylist(), table["trade_id"].to_pylist(), strict=True
    ):
        ids[symbol] = max(ids.get(symbol, 0), int(trade_id))
    return ids


def simulator_config(args: argparse.Namespace):
    from assets.live.simulator import DriftShift, SimulatorConfig

    return SimulatorConfig(
        symbols=tuple(args.symbols.split(",")),
        seed=args.seed,
        trades_per_day=args.trades_per_day,
        shift=DriftShift(at=args.shift_at),
    )


def replay_day(args: argparse.Namespace, day: date, env: dict[str, str], logs: Path):
    cmd = [
        sys.executable,
        "-m",
        "assets.live.replay",
        "--symbols",
        args.symbols,
        "--start",
        day.isoformat(),
        "--days",
        "1",
        "--seed",
        str(args.seed),
        "--trades-per-day",
        str(args.trades_per_day),
        "--shift-at",
        args.shift_at.isoformat(),
        "--port",
        str(args.port),
        "--speed",
        "0",
    ]
    return start_process(cmd, logs / f"replay-{day}.log", env)


def stream_day(
    args: argparse.Namespace, day: date, env: dict[str, str], logs: Path, watcher: Watcher
) -> None:
    """Replay one simulated day and wait until the collector has landed every trade of it."""
    from assets.live.collector import landed_watermarks

    want = expected_last_ids(args, day)
    watcher.timeline.add(
        "replay", f"{day} ({'after' if day >= args.shift_at.date() else 'before'} the shift)"
    )
    server = replay_day(args, day, env, logs)
    try:
        wait_for(
            f"the collector to land {day}",
            lambda: all(
                landed_watermarks(watcher.storage, f"landing/{FEED}").get(s, -1) >= i
                for s, i in want.items()
            ),
            watcher,
            timeout=args.step_timeout,
        )
    finally:
        stop_process(server)


def latest_timestamp(watcher: Watcher, key: str) -> float:
    event = watcher.instance.get_latest_materialization_event(watcher.dg.AssetKey(key))
    return event.timestamp if event is not None else 0.0


def settle(watcher: Watcher, timeout: float, quiet_s: float = 45.0) -> None:
    """Wait until everything downstream of the last landed data was rebuilt (the dataset
    exports and feature_drift are newer than the last raw_trades materialization) and no run
    has been queued or running for ``quiet_s``."""
    quiet = Quiet(quiet_s)
    follow = ("ds_sft_files", "ds_dpo_files", "ds_prm_files", DRIFT_ASSET)

    def done() -> bool:
        raw = latest_timestamp(watcher, "raw_trades")
        behind = any(latest_timestamp(watcher, k) < raw for k in follow)
        return quiet.holds(not watcher.runs_in_progress() and not behind)

    wait_for("the pipeline to follow the new data", done, watcher, timeout)


def wait_for_runs(watcher: Watcher, timeout: float, quiet_s: float = 45.0) -> None:
    """Wait until no run has been queued or running for ``quiet_s``."""
    quiet = Quiet(quiet_s)
    wait_for(
        "the runs to finish", lambda: quiet.holds(not watcher.runs_in_progress()), watcher, timeout
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args: argparse.Namespace) -> int:
    if args.port == 0:
        args.port = free_port()
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the daemon and collector are stopped
    # and the timeline so far is written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    home = args.home.resolve()
    prepare_home(home)
    env = scenario_env(home, args)
    os.environ.update(env)  # this process reads the same instance and storage
    logs = home / "logs"
    logs.mkdir()
    from assets.core.storage import Storage

    storage = Storage(env["DD_STORAGE_ROOT"])
    timeline = Timeline()
    watcher = Watcher(timeline, storage)
    daemon = start_daemon(logs / "daemon.log", env)
    collector = start_process(
        [
            sys.executable,
            "-m",
            "assets.live.collector",
            "--url",
            f"ws://127.0.0.1:{args.port}",
            "--feed",
            FEED,
            "--flush-seconds",
            "2",
            "--reconnect-max-seconds",
            "2",
        ],
        logs / "collector.log",
        env,
    )
    timeline.add("start", f"home {home}; daemon, collector on ws://127.0.0.1:{args.port}")
    try:
        shift_day = args.shift_at.date()
        before = [shift_day - timedelta(days=n) for n in range(args.days_before, 0, -1)]
        after = [shift_day + timedelta(days=n) for n in range(args.days_after)]
        for day in before:
            stream_day(args, day, env, logs, watcher)
        settle(watcher, args.step_timeout)

        timeline.add("train", "first model on the pre-shift data (reason=initial)")
        subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"),
                "job",
                "launch",
                "-j",
                TRAIN_JOB,
                "-m",
                "orchestration.definitions",
                "--tags",
                json.dumps({"decision_data/retrain_reason": "initial"}),
            ],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        wait_for(
            "the first champion",
            lambda: "champion_model" in watcher.latest,
            watcher,
            args.step_timeout,
        )
        # The new champion is feature_drift's new reference: let it re-measure.
        wait_for_runs(watcher, args.step_timeout)

        trained = len(watcher.train_runs())
        for day in after:
            stream_day(args, day, env, logs, watcher)
            settle(watcher, args.step_timeout)
            if len(watcher.train_runs()) > trained:
                break
        if len(watcher.train_runs()) == trained:
            timeline.add("result", "no retrain was requested after the shift")
            return 1
        wait_for(
            "the challenger verdict",
            lambda: sum(1 for e in timeline.events if e["kind"] == "challenger verdict") >= 2,
            watcher,
            args.step_timeout,
        )
        wait_for_runs(watcher, args.step_timeout, quiet_s=10)
        timeline.add("result", "drift -> retrain -> challenger verdict")
        return 0
    finally:
        stop_process(collector)
        stop_process(daemon)
        (home / "timeline.json").write_text(json.dumps(timeline.events, indent=1, default=str))
        print(f"timeline: {home / 'timeline.json'}; logs: {logs}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.scenario", description=__doc__)
    parser.add_argument("--home", type=Path, default=REPO / "var" / "scenario")
    parser.add_argument("--symbols", default="SIMA,SIMB")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--trades-per-day", type=int, default=4000, help="per symbol")
    parser.add_argument(
        "--shift-at",
        type=lambda s: datetime.fromisoformat(s).replace(tzinfo=UTC),
        default=datetime(2026, 1, 8, tzinfo=UTC),
        help="UTC instant of the regime shift (a midnight: days are streamed whole)",
    )
    parser.add_argument("--days-before", type=int, default=3)
    parser.add_argument("--days-after", type=int, default=3)
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--port", type=int, default=8799, help="replay server port (0: any free)")
    parser.add_argument("--step-timeout", type=float, default=1200.0, help="seconds per wait")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
