"""The continuous loop end to end, with the real Dagster daemon in a temporary DAGSTER_HOME:
replay server -> collector -> landed files -> landing sensor -> raw_trades -> dbt episodes ->
feature_drift -> retrain_sensor -> train_models -> beats_champion.

Slow (about 15-30 minutes on 2 cores: every monthly dbt layer is its own run through the
daemon), so it runs under ``make test-slow``; the parts have fast tests of their own
(tests/live/test_collector.py, tests/monitoring/test_drift_stats.py, tests/monitoring/test_monitoring.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_regime_shift_is_detected_and_retrains_a_challenger(tmp_path: Path) -> None:
    home = tmp_path / "scenario"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestration.scenario",
            "--home",
            str(home),
            "--port",
            "0",
            "--days-before",
            "3",
            "--days-after",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    events = json.loads((home / "timeline.json").read_text())
    kinds = [e["kind"] for e in events]
    # Files were landed by the collector and ingested before anything was measured.
    assert (
        kinds.index("file landed") < kinds.index("partition ingested") < kinds.index("drift score")
    )
    retrains = [e for e in events if e["kind"] == "retrain requested"]
    assert [e["text"].split("reason=")[1].split()[0] for e in retrains] == ["initial", "drift"]
    # The drift trigger came from a window after the shift, measured against the champion.
    triggered = [e for e in events if e["kind"] == "drift score" and e.get("triggered")]
    assert len(triggered) == 1
    assert "decision-data-dpo v1" in triggered[0]["text"]
    assert triggered[0]["at"] <= retrains[1]["at"]
    verdicts = [e for e in events if e["kind"] == "challenger verdict"]
    assert len(verdicts) == 2  # the first model (no champion: promoted), then the challenger
    assert verdicts[0]["passed"] is True
