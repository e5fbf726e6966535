"""``python -m orchestration.lineage`` on a hand-written checkpoint folder (no training).

Path mode: the chain is printed, MLflow, Dagster and torch are not imported, and it is fast.
Registry mode: a version registered in a temporary SQLite store resolves to the folder, by
``models:/<name>/<version>`` and by ``<name>@<alias>``; a source that is not a local folder is
read by downloading lineage.json only. ``--json`` prints lineage.json as it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration import lineage as cli

REPO = Path(__file__).resolve().parents[2]
RAW_SHA = "ab" * 32
DATA_SHA = "cd" * 32
LINEAGE = {
    "stage": "sft",
    "base_model": "tiny",
    "started_at": "2026-01-01T00:00:00+00:00",
    "ended_at": "2026-01-01T00:01:00+00:00",
    "git": {"revision": "0123456789abcdef", "dirty": False},
    "metrics": {"train_loss": 1.5, "eval_loss": 1.25},
    "dataset": {
        "name": "sft",
        "model": "ds_sft",
        "built_by": "dbt:decision_data/fct_decision_episodes@x",
        "files": {
            "train": {
                "path": "datasets/sft/train.parquet",
                "uri": "/r/datasets/sft/train.parquet",
                "rows": 12,
                "sha256": DATA_SHA,
            }
        },
    },
    "episode_partitions": ["2023-01-01", "2023-02-01", "2023-03-01"],
    "dbt_models": {
        "ds_sft": {"checksum": "ee" * 32, "materialized": "table", "resource_type": "model"}
    },
    "raw_files": [{"path": "landing/test/2023-01-02.csv", "feed": "test", "sha256": RAW_SHA}],
    "unresolved_source_hashes": [],
    "dagster": {"run_id": "run-1", "asset_key": "sft_model"},
}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "sft" / "final"
    folder.mkdir(parents=True)
    (folder / "lineage.json").write_text(json.dumps(LINEAGE))
    return folder


def test_path_mode_prints_the_chain_without_mlflow_or_dagster(checkpoint: Path):
    probe = (
        "import sys, time; t = time.perf_counter(); from orchestration import lineage; "
        f"code = lineage.main([{str(checkpoint)!r}]); "
        "heavy = [m for m in ('mlflow', 'dagster', 'torch', 'transformers') if m in sys.modules]; "
        "print('HEAVY', heavy, 'SECONDS', round(time.perf_counter() - t, 3)); sys.exit(code)"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "HEAVY [] SECONDS" in out
    for text in (
        RAW_SHA,
        DATA_SHA,
        "landing/test/2023-01-02.csv",
        "ds_sft",
        "2023-01-01 .. 2023-03-01",
    ):
        assert text in out
    assert "episode partitions: 3" in out and "stage sft, base model tiny" in out
    assert wall < 3  # interpreter start included; about 0.1 s on an idle machine


def test_json_and_errors(checkpoint: Path, tmp_path: Path, capsys):
    assert cli.main([str(checkpoint), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == LINEAGE
    assert cli.main([str(tmp_path / "nothing")]) == 2
    assert "no lineage.json" in capsys.readouterr().err


def test_registry_mode(checkpoint: Path, tmp_path: Path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("decision-data", artifact_location=str(tmp_path / "a"))
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(checkpoint), artifact_path="checkpoint")
    client.create_registered_model("decision-data-sft")
    remote = f"{run.info.artifact_uri}/checkpoint"
    client.create_model_version("decision-data-sft", source=str(checkpoint), run_id=run.info.run_id)
    v2 = client.create_model_version("decision-data-sft", source=remote, run_id=run.info.run_id)
    client.set_registered_model_alias("decision-data-sft", "champion", v2.version)

    assert cli.main(["models:/decision-data-sft/1", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "registered model decision-data-sft version 1" in out and RAW_SHA in out
    assert f"checkpoint {checkpoint}" in out

    assert cli.main(["decision-data-sft@champion", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "version 2 (aliases champion)" in out and DATA_SHA in out
