"""Loop latency with the daemon running: landed file -> raw partition, drift -> retrain request.

``python -m benchmarks.loop_latency [--timeline FILE] [--home DIR]`` reads the timeline a drift
scenario wrote (``make scenario``: ``var/scenario/timeline.json``), or runs the scenario first
when no timeline is given, and prints:

- **landing latency**: for each ``raw_trades`` ingestion, the time since the oldest landed
  file it could have picked up (the first file landed after the previous ingestion);
- **retrain latency**: from the ``feature_drift`` materialization that said ``drift_triggered``
  to the ``train_models`` run the retrain sensor requested.

Both against the goal of two sensor ticks (the landing and retrain sensors tick every 30 s), as
a ratio: latency / (2 x tick) <= 1 meets it. The baseline is the tick itself, measured in the
same run's configuration (the sensors' ``minimum_interval_seconds``).
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_TICKS = 2


def sensor_ticks() -> dict[str, float]:
    from orchestration.retraining import retrain_sensor
    from orchestration.sensors import landing_sensor

    return {
        "landing": float(landing_sensor.minimum_interval_seconds or 30),
        "retrain": float(retrain_sensor.minimum_interval_seconds or 30),
    }


def landing_latencies(events: list[dict]) -> list[float]:
    out, pending_since = [], None
    for e in events:
        if e["kind"] == "file landed" and pending_since is None:
            pending_since = e["at"]
        elif e["kind"] == "partition ingested" and pending_since is not None:
            out.append(e["at"] - pending_since)
            pending_since = None
    return out


def retrain_latencies(events: list[dict]) -> list[float]:
    out, triggered_at = [], None
    for e in events:
        if e["kind"] == "drift score" and e.get("triggered"):
            triggered_at = e["at"]
        elif e["kind"] == "retrain requested" and triggered_at is not None:
            out.append(e["at"] - triggered_at)
            triggered_at = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop_latency", description=__doc__)
    parser.add_argument("--timeline", type=Path, help="a scenario's timeline.json")
    parser.add_argument("--home", type=Path, default=REPO / "var" / "scenario-bench")
    args = parser.parse_args(argv)
    timeline = args.timeline
    if timeline is None:
        cmd = [sys.executable, "-m", "orchestration.scenario", "--home", str(args.home)]
        subprocess.run([*cmd, "--port", "0"], cwd=REPO, check=False)
        timeline = args.home / "timeline.json"
    events = json.loads(timeline.read_text())
    ticks = sensor_ticks()
    rows = [
        ("landed file -> raw partition", landing_latencies(events), ticks["landing"]),
        ("drift trigger -> retrain run", retrain_latencies(events), ticks["retrain"]),
    ]
    print(f"timeline: {timeline}")
    for name, values, tick in rows:
        if not values:
            print(f"{name:<32} no samples")
            continue
        worst, median = max(values), statistics.median(values)
        goal = GOAL_TICKS * tick
        print(
            f"{name:<32} n={len(values):<3} median {median:6.1f} s  worst {worst:6.1f} s  "
            f"tick {tick:.0f} s  worst/(2 ticks) {worst / goal:5.2f} "
            f"({'met' if worst <= goal else 'NOT met'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
