"""Training assets end to end on a small real pipeline, with the 'tiny' model and 2 steps.

Landing files -> raw bars -> dbt episodes and marts (helpers.pipeline) -> ds_*_files exports
(dg.materialize, as in test_datasets_assets) -> sft_model, dpo_model, prm_model in one
dg.materialize, with a temporary storage root and a temporary SQLite MLflow store (artifacts in
a local folder: the embedded default; tests/models/test_model_store.py puts them on S3).

Then: MLflow runs, params, metric curves, dataset inputs, tags, registered versions and their
sources; lineage.json against the export manifests and the landing index; weights moved from
the starting model; the Pipes launch of prm_model gives the same metadata keys; the lineage CLI
on the checkpoint and on ``models:/decision-data-sft/1``; one MLflow run on PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from helpers.pipeline import OVERRIDES, build_datasets
from helpers.resources import local_resources
from safetensors.torch import load_file

from assets.core.feeds import load_feeds
from assets.core.resources import (
    FeedsResource,
    MlflowResource,
    TrainingResource,
    resources_from_env,
)
from assets.core.storage import Storage
from assets.core.training_run import registered_model_name, run_stage
from assets.episodes.datasets import dataset_files
from assets.episodes.dbt_assets import dataset_models
from assets.ingestion.ingest import scan_landing
from assets.models.evaluation import evaluation_assets, evaluation_checks, latest_metadata
from assets.models.training import prm_model, stage_config, training_assets
from assets.monitoring.feature_drift import monitoring_assets
from orchestration import lineage as lineage_cli

REPO = Path(__file__).resolve().parents[2]
STAGES = ("sft", "dpo", "prm")
METADATA_KEYS = {
    "checkpoint_path", "base_model", "mlflow_run_id", "mlflow_run_url", "model_name",
    "model_version", "model_uri", "model_source", "lineage_sha256", "metrics",
    "dataset_digests", "n_raw_files", "n_episode_partitions", "train_loss", "launch",
}  # fmt: skip


def training_resource(work: Path, launch: str = "in_process") -> TrainingResource:
    return TrainingResource(
        base_model="tiny",
        launch=launch,
        output_root=str(work / "training"),
        max_steps=2,
        **OVERRIDES,
    )


def resources(work: Path, launch: str = "in_process", tracking_uri: str | None = None) -> dict:
    return local_resources(
        work / "root",
        work / "warehouse.duckdb",
        feeds=FeedsResource(path=str(work / "feeds.yaml")),
        mlflow=MlflowResource(
            tracking_uri=tracking_uri or f"sqlite:///{work / 'mlflow.db'}",
            artifact_location=str(work / "mlartifacts"),
            model_cache=str(work / "model-cache"),
        ),
        training=training_resource(work, launch),
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.materialization.asset_key.to_user_string(): {
            k: v.value for k, v in e.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("training_assets")
    build_datasets(work)
    res = resources(work)
    exports = dg.materialize([dataset_models, *dataset_files], resources=res)
    assert exports.success
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    result = dg.materialize(training_assets, resources=res, instance=instance)
    seconds = time.perf_counter() - started
    return {
        "work": work,
        "result": result,
        "metadata": _metadata(result),
        "seconds": seconds,
        "instance": instance,
        "resources": res,
    }


def _client(work: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")


def test_asset_graph_and_job():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    for stage in STAGES:
        key = dg.AssetKey(f"{stage}_model")
        node = graph.get(key)
        assert node.group_name == "training"
        assert node.owners == ["team:ml"]
        assert node.kinds == {"pytorch", "mlflow"}
        assert node.automation_condition is None
        assert dg.AssetKey(f"ds_{stage}_files") in node.parent_keys
    assert dg.AssetKey("sft_model") in graph.get(dg.AssetKey("dpo_model")).parent_keys
    # raw -> ... -> ds_sft_files -> sft_model: the checkpoint is downstream of the raw bars.
    upstream = graph.upstream_key_iterator
    seen, todo = set(), [dg.AssetKey("sft_model")]
    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            todo.extend(upstream(key))
    assert dg.AssetKey("bars") in seen or any("bars" in k.to_user_string() for k in seen)
    assert {a.op.pool for a in training_assets} == {"gpu"}
    job = defs.resolve_job_def("train_models")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} >= {
        "sft_model", "dpo_model", "prm_model",
    }  # fmt: skip


def test_resources_from_env(tmp_path: Path):
    env = {
        "MLFLOW_TRACKING_URI": "postgresql://u@db/mlflow",
        "MLFLOW_TRACKING_PASSWORD": "secret",
        "DD_TRAINING_BASE_MODEL": "tiny",
        "DD_TRAINING_PROFILE": "gpu",
        "DD_TRAINING_LAUNCH": "pipes",
        "DD_TRAINING_MAX_STEPS": "7",
    }
    res = resources_from_env(env)
    assert res["mlflow"].tracking_uri == "postgresql://u@db/mlflow"
    assert isinstance(res["mlflow"].password, dg.EnvVar)
    training = res["training"]
    assert (training.base_model, training.profile, training.launch) == ("tiny", "gpu", "pipes")
    assert training.config_file("sft").name == "sft_gpu.yaml"
    # The gpu profile validates only where CUDA is; the wiring is the same for cpu-small.
    cpu = training.model_copy(update={"profile": "cpu-small"})
    cfg = stage_config("sft", cpu, [str(tmp_path / "x.parquet")], str(tmp_path / "o"))
    assert cfg["train"]["max_steps"] == 7 and cfg["model"]["name_or_path"] == "tiny"
    default = resources_from_env({})
    assert default["mlflow"].tracking_uri.startswith("sqlite:///")
    assert default["mlflow"].tracking_uri.endswith("var/mlflow/mlflow.db")
    assert default["training"].profile == "cpu-small"
    assert default["training"].base_model == "smollm2-135m-instruct"
    # cpu-small shortens trainer runs; head mode (the shipped CPU configs) keeps its file's.
    head = stage_config("prm", default["training"], ["x.parquet"], "o")
    assert head["method"] == "head" and head["train"]["max_length"] == 768
    trainer = default["training"].model_copy(update={"prm_overrides": {"method": "trainer"}})
    small = stage_config("prm", trainer, ["x.parquet"], "o")
    assert small["train"]["max_length"] == 512 and small["train"]["max_steps"] == 10


def test_training_materializes_three_checkpoints(trained: dict):
    assert trained["result"].success
    metadata = trained["metadata"]
    assert set(metadata) == {"sft_model", "dpo_model", "prm_model"}
    for stage in STAGES:
        meta = metadata[f"{stage}_model"]
        assert set(meta) >= METADATA_KEYS - {"train_loss"}
        assert Path(meta["checkpoint_path"], "model.safetensors").is_file()
        assert meta["model_name"] == registered_model_name(stage)
        assert meta["model_version"] == 1
        assert meta["n_raw_files"] > 0
        assert set(meta["dataset_digests"]) == {"train", "validation"}
        assert meta["launch"] == "in_process"
    # DPO starts from the SFT version in the registry, named by its registry URI.
    assert metadata["dpo_model"]["base_model"] == metadata["sft_model"]["model_uri"]
    assert metadata["sft_model"]["model_uri"] == "models:/decision-data-sft/1"
    assert metadata["prm_model"]["base_model"] == "tiny"


def test_mlflow_runs_params_metrics_inputs_tags_and_versions(trained: dict):
    client = _client(trained["work"])
    experiment = client.get_experiment_by_name("decision-data")
    assert experiment.artifact_location.endswith("mlartifacts")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    run_id = trained["result"].run_id
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == set(STAGES)
    for stage, run in by_stage.items():
        meta = trained["metadata"][f"{stage}_model"]
        assert run.info.run_id == meta["mlflow_run_id"]
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["train.max_steps"] == "2"
        assert params["model.name_or_path"] in ("tiny", "")
        assert json.loads(params["data.files"])
        tags = run.data.tags
        assert tags["dagster.run_id"] == run_id
        assert tags["dagster.asset_key"] == f"{stage}_model"
        assert int(tags["episode_partitions.count"]) > 0
        assert tags["episode_partitions.first"] <= tags["episode_partitions.last"]
        assert len(tags["dbt.models_digest"]) == 64
        assert tags["base_model"] == meta["base_model"]
        assert tags["lineage.sha256"] == meta["lineage_sha256"]
        assert "git.revision" in tags
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == sorted(m.step for m in history) and history
        assert "train_loss" in run.data.metrics
        inputs = {
            {t.key: t.value for t in d.tags}["mlflow.data.context"]: d
            for d in run.inputs.dataset_inputs
        }
        assert set(inputs) == {"train", "validation"}
        for split, item in inputs.items():
            sha = {t.key: t.value for t in item.tags}["sha256"]
            assert sha == meta["dataset_digests"][split]
            assert item.dataset.digest == sha[:36]
            assert json.loads(item.dataset.source)["uri"].endswith(f"{stage}/{split}.parquet")
        version = client.get_model_version(registered_model_name(stage), "1")
        assert version.run_id == run.info.run_id
        assert version.source == f"{run.info.artifact_uri}/checkpoint"
        assert version.tags["lineage_sha256"] == meta["lineage_sha256"]
        alias = client.get_model_version_by_alias(registered_model_name(stage), "challenger")
        assert str(alias.version) == "1"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert {"checkpoint/lineage.json", "checkpoint/model.safetensors"} <= artifacts


def test_lineage_json_matches_exports_and_landing_index(trained: dict):
    work = trained["work"]
    storage = Storage(str(work / "root"))
    landed = {f.sha256: f for f in scan_landing(storage, load_feeds(work / "feeds.yaml"))}
    for stage in STAGES:
        meta = trained["metadata"][f"{stage}_model"]
        record = json.loads(Path(meta["checkpoint_path"], "lineage.json").read_text())
        manifest = json.loads((work / "root" / "datasets" / stage / "manifest.json").read_text())
        assert record["dataset"]["files"] == manifest["splits"]
        # The lakehouse snapshot the export read: the lineage's rows were read at it.
        assert record["dataset"]["lakehouse_snapshot"] == manifest["snapshot_id"] > 0
        for split, sha in meta["dataset_digests"].items():
            assert manifest["splits"][split]["sha256"] == sha
        assert sorted(record["data_files"].values()) == sorted(meta["dataset_digests"].values())
        assert record["raw_files"] and not record["unresolved_source_hashes"]
        for item in record["raw_files"]:
            assert landed[item["sha256"]].path == item["path"]
            assert item["feed"] == "test"
        assert len(record["raw_files"]) == meta["n_raw_files"]
        assert record["dagster"]["run_id"] == trained["result"].run_id
        assert record["dagster"]["episode_partition_keys"] == record["episode_partitions"]
        assert "ds_" + stage in record["dbt_models"]
        assert record["stage"] == stage


def test_weights_moved_from_the_start(trained: dict):
    from training.config import ModelConfig
    from training.models import load_model

    base, _ = load_model(ModelConfig(name_or_path="tiny"), task="causal", seed=42)
    base_weights = base.state_dict()
    ckpt = {
        s: load_file(
            Path(trained["metadata"][f"{s}_model"]["checkpoint_path"]) / "model.safetensors"
        )
        for s in STAGES
    }
    # Every stage trains in head mode (the shipped CPU configs): the decision tokens' output rows
    # move (SFT, then DPO), the PRM's score layer is fitted; the layers stay.
    head, name = "lm_head.weight", "model.layers.0.self_attn.q_proj.weight"
    assert not ckpt["sft"][head].equal(base_weights[head])
    assert not ckpt["dpo"][head].equal(ckpt["sft"][head])
    assert ckpt["sft"][name].equal(base_weights[name])
    assert ckpt["prm"][name].equal(base_weights[name])
    untrained, _ = load_model(ModelConfig(name_or_path="tiny"), task="token", num_labels=2, seed=42)
    assert not ckpt["prm"]["score.weight"].equal(untrained.state_dict()["score.weight"])


def test_pipes_launch_gives_the_same_metadata_and_mlflow_content(trained: dict):
    work = trained["work"]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [prm_model], resources=resources(work, launch="pipes"), instance=instance
    )
    assert result.success
    piped = _metadata(result)["prm_model"]
    in_process = trained["metadata"]["prm_model"]
    assert set(piped) == set(in_process)
    assert piped["launch"] == "pipes"
    assert piped["model_version"] == 2
    assert piped["dataset_digests"] == in_process["dataset_digests"]
    assert set(piped["metrics"]) == set(in_process["metrics"])
    client = _client(work)
    a, b = client.get_run(in_process["mlflow_run_id"]), client.get_run(piped["mlflow_run_id"])
    assert set(a.data.params) == set(b.data.params)
    assert set(a.data.metrics) == set(b.data.metrics)
    assert set(a.data.tags) - {"mlflow.runName"} <= set(b.data.tags)
    assert len(b.inputs.dataset_inputs) == 2
    # The child's log lines come back as Dagster log messages.
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("pipes child pid" in m for m in messages)
    assert Path(piped["checkpoint_path"], "lineage.json").is_file()


def test_lineage_cli_on_the_checkpoint_and_the_registry(trained: dict, capsys):
    work = trained["work"]
    meta = trained["metadata"]["sft_model"]
    record = json.loads(Path(meta["checkpoint_path"], "lineage.json").read_text())
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.lineage", meta["checkpoint_path"]],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert record["raw_files"][0]["sha256"] in done.stdout
    for sha in meta["dataset_digests"].values():
        assert sha in done.stdout
    snapshot = record["dataset"]["lakehouse_snapshot"]
    assert f"read at lakehouse snapshot {snapshot}" in done.stdout
    assert elapsed < 5  # measured well under 1 s on an idle machine (see the report)

    dpo = trained["metadata"]["dpo_model"]["checkpoint_path"]
    assert lineage_cli.main([dpo]) == 0
    out = capsys.readouterr().out
    # The SFT version it started from, and (local artifact store) that version's own chain.
    source = _client(work).get_model_version("decision-data-sft", "1").source
    assert f"started from models:/decision-data-sft/1 (source {source})" in out
    assert "started from (policy and reference):" in out

    uri = f"sqlite:///{work / 'mlflow.db'}"
    assert lineage_cli.main(["models:/decision-data-sft/1", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "registered model decision-data-sft version 1" in out
    assert record["raw_files"][0]["sha256"] in out
    assert lineage_cli.main(["decision-data-sft@challenger", "--tracking-uri", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == record["dataset"]


def test_one_mlflow_run_on_postgres(trained: dict, pg_database: str):
    work = trained["work"]
    sft = trained["metadata"]["sft_model"]
    record = json.loads(Path(sft["checkpoint_path"], "lineage.json").read_text())
    own = ("stage", "base_model", "started_at", "ended_at", "git", "data_files", "libraries")
    lineage = {k: v for k, v in record.items() if k not in (*own, "metrics")}
    files = [
        str(work / "root" / "datasets" / "sft" / f"{s}.parquet") for s in ("train", "validation")
    ]
    config = stage_config("sft", training_resource(work), files, str(work / "pg_sft"))
    config["train"]["max_steps"] = 1
    inputs = [
        {
            "name": f"ds_sft/{s}",
            "context": s,
            "uri": files[i],
            "sha256": sft["dataset_digests"][s],
            "rows": 1,
        }
        for i, s in enumerate(("train", "validation"))
    ]
    # SQLAlchemy 2.1 picks psycopg (3) for a bare postgresql://; the test server has psycopg2.
    uri = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{pg_database}"
    tracking = {"tracking_uri": uri, "artifact_location": str(work / "pg_artifacts")}
    report = run_stage("sft", config, lineage, tracking, inputs, log=lambda line: None)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "1"
    assert run.data.tags["dagster.asset_key"] == "sft_model"
    assert len(run.inputs.dataset_inputs) == 2
    assert client.get_model_version("decision-data-sft", "1").source.endswith("/checkpoint")
    assert lineage_cli.main(["models:/decision-data-sft/1", "--tracking-uri", uri]) == 0


def test_evaluation_gate_makes_the_first_model_champion(trained: dict) -> None:
    """The whole chain on the trained checkpoints: model_evaluation on the test split, the
    blocking beats_champion check (no champion yet: pass), then champion_model moves the alias."""
    config = {"max_format_prompts": 4, "max_pairs": 16, "max_traces": 16, "max_new_tokens": 8}
    result = dg.materialize(
        [*evaluation_assets, *evaluation_checks],
        resources=trained["resources"],
        instance=trained["instance"],
        run_config={"ops": {"model_evaluation": {"config": config}}},
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("beats_champion", True)]
    metadata = _metadata(result)
    evaluation = metadata["model_evaluation"]
    assert 0 < evaluation["decision_n"] <= evaluation["decision_points"]
    assert 0 <= evaluation["decision_accuracy"] <= 1 and evaluation["decision_logp_target"] < 0
    assert "| train-majority | baseline |" in evaluation["baselines"]
    assert evaluation["format_n"] == 4
    assert 0 <= evaluation["prm_auc"] <= 1 and evaluation["preference_n"] > 0
    client = _client(trained["work"])
    for stage in ("dpo", "prm"):
        champion = client.get_model_version_by_alias(f"decision-data-{stage}", "champion")
        assert str(champion.version) == str(trained["metadata"][f"{stage}_model"]["model_version"])


def test_champion_snapshot_reaches_the_drift_monitor(trained: dict) -> None:
    """After the gate, champion_model records the end of the champion's training data; the
    monitors measure against it: feature_drift's reference is the champion and
    champion_performance scores the champion on what matured after its dataset."""
    champion_meta = latest_metadata(trained["instance"], dg.AssetKey("champion_model"))
    if not champion_meta:  # this test also runs alone
        test_evaluation_gate_makes_the_first_model_champion(trained)
        champion_meta = latest_metadata(trained["instance"], dg.AssetKey("champion_model"))
    dpo = trained["metadata"]["dpo_model"]
    assert champion_meta["snapshot_until"] == dpo["train_data_until"] != ""
    assert champion_meta["data_until"] == dpo["data_until"] != ""
    assert champion_meta["snapshot_until"] < champion_meta["data_until"]
    result = dg.materialize(
        monitoring_assets,
        resources=trained["resources"],
        instance=trained["instance"],
        run_config={
            "ops": {
                "feature_drift": {"config": {"window_rows": 100, "min_rows": 20}},
                "champion_performance": {"config": {"max_points": 8}},
            }
        },
    )
    assert result.success
    metadata = _metadata(result)
    version = dpo["model_version"]
    drift = metadata["feature_drift"]
    assert drift["reference"] == f"decision-data-dpo v{version}"
    assert drift["snapshot_until"] == champion_meta["snapshot_until"]
    assert drift["window_start"] >= champion_meta["snapshot_until"]
    performance = metadata["champion_performance"]
    assert performance["champion"] == f"decision-data-dpo v{version}"
    assert performance["since"] == champion_meta["data_until"]
