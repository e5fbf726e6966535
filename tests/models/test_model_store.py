"""Checkpoints on the artifact store and the one resolver that brings them back
(assets/core/model_store.py), against real parts: moto's S3 server (``s3_server``), an MLflow
SQLite tracking store, the 'tiny' model.

- settings: where a new experiment keeps its artifacts (S3 storage root, tracking server,
  explicit, embedded default) and the S3 environment MLflow is given;
- the resolver on local folders (used in place) and on a registered version on S3 (downloaded
  once, then read from the cache, by version or alias);
- SFT trained with its MLflow artifacts on S3: the registered source is the S3 artifact URI
  and the objects are in the bucket; the local checkpoint deleted, a fresh process in an empty
  working directory resolves ``models:/decision-data-sft@challenger`` and trains DPO from it;
- (slow) an ``mlflow server`` proxying artifacts to S3: an ``http://`` tracking URI leaves the
  artifact root to the server, the checkpoint reaches its bucket through it and comes back;
- (slow) the Dagster assets with the storage root on S3, each run in a fresh process with an
  empty working directory and the training folder wiped: sft_model, then dpo_model and
  prm_model from the SFT version, then model_evaluation and champion_model with an empty model
  cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from helpers import pipeline, servers
from helpers.resources import local_resources

from assets.core.lakehouse import lakehouse_connection
from assets.core.model_store import is_model_uri, local_path, resolve_model
from assets.core.resources import (
    MlflowResource,
    TrainingResource,
    resources_from_env,
)
from assets.core.settings import DEFAULT_ARTIFACT_LOCATION
from assets.core.storage import Storage, file_sha256
from assets.core.training_run import run_stage
from assets.episodes.datasets import export_dataset
from assets.episodes.dbt_assets import dataset_models
from assets.models.training import stage_config
from training import synthetic

REPO = Path(__file__).resolve().parents[2]
MLFLOW_ENV = ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE")
SMALL = {**pipeline.SMALL, "train.max_length": "256"}  # synthetic prompts are short


def _bucket_keys(client, uri: str) -> dict[str, int]:
    """Object key (relative to ``uri``) → size, listed with a plain boto3 client."""
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {
        o["Key"][len(prefix) :].lstrip("/"): o["Size"] for p in pages for o in p.get("Contents", [])
    }


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """MlflowResource sets MLFLOW_S3_* in this process: undo it after the test."""
    for name in MLFLOW_ENV:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _split_files(folder: Path, frame, name: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for split in ("train", "validation"):
        path = folder / f"{name}_{split}.parquet"
        frame[frame["split"] == split].to_parquet(path)
        files.append(str(path))
    return files


def _training() -> TrainingResource:
    return TrainingResource(
        base_model="tiny",
        max_steps=2,
        sft_overrides={**SMALL, "eval_generate_samples": "0"},
        dpo_overrides=dict(SMALL),
    )


# ---------------------------------------------------------------- settings (no services)


def test_artifact_location_follows_the_storage_root_and_the_tracking_server():
    s3 = {
        "DD_STORAGE_ROOT": "s3://bucket/dd/",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "MLFLOW_TRACKING_URI": "postgresql+psycopg2://u@db/mlflow",
        "DD_MODEL_CACHE": "/cache",
    }
    mlflow = resources_from_env(s3)["mlflow"]
    assert mlflow.artifact_location == "s3://bucket/dd/mlflow-artifacts"
    assert mlflow.model_cache == "/cache"
    assert mlflow.process_env() == {
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE": "path",
    }
    # A tracking server keeps its own artifact root (compose: proxied, on MinIO).
    server = resources_from_env({**s3, "MLFLOW_TRACKING_URI": "http://mlflow:5000"})["mlflow"]
    assert server.artifact_location is None
    explicit = {**s3, "MLFLOW_ARTIFACT_LOCATION": "s3://other/artifacts"}
    assert resources_from_env(explicit)["mlflow"].artifact_location == "s3://other/artifacts"
    # The embedded default: a local folder, no S3 environment.
    default = resources_from_env({})["mlflow"]
    assert default.artifact_location == DEFAULT_ARTIFACT_LOCATION
    assert default.process_env() == {}


def test_uri_kinds():
    for uri in ("models:/m/1", "models:/m@champion", "runs:/abc/checkpoint", "s3://b/k"):
        assert is_model_uri(uri) and local_path(uri) is None
    assert local_path("mlflow-artifacts:/1/abc/artifacts/checkpoint") is None
    for name in ("tiny", "smollm2-135m-instruct", "/data/ckpt", "var/training/sft/final"):
        assert not is_model_uri(name)
    assert local_path("file:///data/my%20ckpt") == Path("/data/my ckpt")


def test_local_folders_are_used_in_place(tmp_path: Path):
    folder = tmp_path / "run" / "final"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    cache = tmp_path / "cache"
    for uri in (str(folder), folder.as_uri(), str(tmp_path / "run")):
        resolved = resolve_model(uri, cache_dir=cache)
        assert resolved.path == folder and not resolved.cached and not resolved.downloaded
    assert not cache.exists()
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "missing"), cache_dir=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        resolve_model(str(tmp_path / "empty"), cache_dir=cache)


# ---------------------------------------------------------------- S3 + MLflow + tiny model

_FRESH_DPO = """
import json, os, sys
from pathlib import Path
from assets.core.resources import MlflowResource, TrainingResource
from assets.core.training_run import run_stage
from assets.episodes.datasets import export_dataset
from assets.episodes.dbt_assets import dataset_models
from assets.models.training import stage_config

args = json.loads(sys.argv[1])
mlflow = MlflowResource(**args["mlflow"])
sft = mlflow.local_model("models:/decision-data-sft@challenger")
again = mlflow.local_model("models:/decision-data-sft/" + sft.version)
training = TrainingResource(**args["training"])
config = stage_config("dpo", training, args["files"], args["out"], str(sft.path))
lineage = {"start_from": {k: sft.record()[k] for k in ("model_uri", "source", "version")}}
report = run_stage("dpo", config, lineage, mlflow.settings(), [], log=lambda line: None)
print(json.dumps({
    "cwd": os.getcwd(), "sft": sft.record(), "again": again.record(),
    "cache": sorted(os.listdir(args["mlflow"]["model_cache"])),
    "report": {k: report[k] for k in ("base_model", "model_version", "model_source")},
}))
"""


def test_sft_on_s3_loads_from_the_registry_in_a_fresh_process(
    tmp_path: Path, s3_storage: Storage, s3_server: str, s3_client, mlflow_env: None
):
    root = s3_storage.root.rstrip("/")
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=f"{root}/mlflow-artifacts",
        s3_endpoint_url=s3_server,
        model_cache=str(tmp_path / "cache"),
    )
    training = _training()
    data = tmp_path / "data"
    sft_files = _split_files(data, synthetic.sft_frame(40, seed=1), "sft")
    dpo_files = _split_files(data, synthetic.dpo_frame(40, seed=2), "dpo")
    out = tmp_path / "out"
    config = stage_config("sft", training, sft_files, str(out / "sft"))
    mlflow.apply_env()
    report = run_stage("sft", config, {}, mlflow.settings(), [], log=lambda line: None)

    # The registered version's source is the run's checkpoint artifact on S3, all files there.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow.tracking_uri)
    version = client.get_model_version("decision-data-sft", report["model_version"])
    run = client.get_run(report["mlflow_run_id"])
    assert version.source == report["model_source"] == f"{run.info.artifact_uri}/checkpoint"
    assert version.source.startswith(f"{root}/mlflow-artifacts/")
    local = Path(report["checkpoint_dir"])
    stored = _bucket_keys(s3_client, version.source)
    expected = {p.name: p.stat().st_size for p in local.iterdir() if p.is_file()}
    assert {"model.safetensors", "config.json", "lineage.json", "training_config.json"} <= set(
        expected
    )
    assert stored == expected
    weights_sha = file_sha256(local / "model.safetensors")

    # Nothing of it stays on this machine: the checkpoint folder goes, no local artifact root.
    shutil.rmtree(out)
    assert not local.exists() and not (tmp_path / "cache").exists()

    # A fresh process in an empty working directory: DPO from the registry's SFT version.
    empty = tmp_path / "empty-cwd"
    empty.mkdir()
    args = {
        "mlflow": {
            **mlflow.settings(),
            "s3_endpoint_url": s3_server,
            "model_cache": str(tmp_path / "cache"),
        },
        "training": {
            "base_model": "tiny",
            "max_steps": 2,
            "dpo_overrides": training.dpo_overrides,
        },
        "files": dpo_files,
        "out": str(tmp_path / "dpo-out"),
    }
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV and k != "AWS_ENDPOINT_URL"}
    env.update(PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_DPO, json.dumps(args)],
        cwd=empty, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["cwd"] == str(empty) and not any(empty.iterdir())
    sft = child["sft"]
    assert sft["model_uri"] == f"models:/decision-data-sft/{version.version}"
    assert sft["source"] == version.source and sft["downloaded"] and sft["cached"]
    assert Path(sft["path"]).parent == tmp_path / "cache"
    # The second resolution (by version number) read the cache: same folder, no download.
    assert child["again"]["path"] == sft["path"] and not child["again"]["downloaded"]
    assert file_sha256(Path(sft["path"]) / "model.safetensors") == weights_sha
    assert len([n for n in child["cache"] if not n.endswith(".json")]) == 1
    # DPO names its start by registry URI, and its own checkpoint went to S3 too.
    assert child["report"]["base_model"] == sft["model_uri"]
    dpo = client.get_model_version("decision-data-dpo", child["report"]["model_version"])
    assert dpo.source.startswith(f"{root}/mlflow-artifacts/")
    assert "model.safetensors" in _bucket_keys(s3_client, dpo.source)
    dpo_run = client.get_run(dpo.run_id)
    assert dpo_run.data.tags["base_model"] == sft["model_uri"]


# ---------------------------------------------------------------- a tracking server


@pytest.fixture
def mlflow_server(tmp_path: Path, s3_server: str, s3_client) -> Iterator[tuple[str, str]]:
    """A real ``mlflow server`` (SQLite backend) that proxies artifacts to a fresh bucket of the
    S3 server, as the compose stack's does to MinIO; yields (URL, bucket)."""
    bucket = f"mlflow-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    log_path = tmp_path / "mlflow-server.log"
    with servers.mlflow_server(backend, f"s3://{bucket}/artifacts", s3_server, log_path) as url:
        yield url, bucket


@pytest.mark.slow  # the server's start: ~50 s on the 2 shared cores here
def test_checkpoint_through_a_tracking_server_with_proxied_artifacts(
    tmp_path: Path,
    mlflow_server: tuple[str, str],
    s3_storage: Storage,
    s3_server: str,
    s3_client,
    mlflow_env: None,
):
    """With an ``http://`` tracking URI the experiment takes the server's artifact root: the
    checkpoint goes through the server (``mlflow-artifacts:/``) into its bucket, and the
    resolver brings a registered version back through the server too."""
    url, bucket = mlflow_server
    env = {
        "MLFLOW_TRACKING_URI": url,
        "DD_STORAGE_ROOT": s3_storage.root,
        "AWS_ENDPOINT_URL": s3_server,
        "DD_MODEL_CACHE": str(tmp_path / "cache"),
    }
    mlflow = resources_from_env(env)["mlflow"]
    assert mlflow.artifact_location is None
    tracker = mlflow.tracker()
    assert tracker.artifact_location.startswith("mlflow-artifacts:")
    folder = tmp_path / "final"
    folder.mkdir()
    files = {"config.json": b"{}", "lineage.json": b'{"stage": "sft"}', "weights.bin": b"w" * 4096}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    run_id = tracker.start("sft", tags={}, params={})
    registered = tracker.finish(run_id, "sft", str(folder), {}, 0)
    assert registered["model_source"].startswith("mlflow-artifacts:")
    stored = _bucket_keys(s3_client, f"s3://{bucket}/artifacts")
    in_bucket = {k.rsplit("/checkpoint/", 1)[-1]: size for k, size in stored.items()}
    assert in_bucket == {name: len(data) for name, data in files.items()}
    shutil.rmtree(folder)
    resolved = mlflow.local_model("models:/decision-data-sft@challenger")
    assert resolved.downloaded and resolved.source == registered["model_source"]
    for name, data in files.items():
        assert (resolved.path / name).read_bytes() == data
    assert not mlflow.local_model(f"models:/decision-data-sft/{resolved.version}").downloaded


# ---------------------------------------------------------------- the Dagster assets (slow)

# One asset selection in a fresh process: the resources from the environment (as a run pod
# has them), the Dagster instance of $DAGSTER_HOME; prints each materialization's metadata.
_FRESH_RUN = """
import json, sys
import dagster as dg
from assets.core.resources import TrainingResource, resources_from_env
from assets.core.settings import settings_from_env
from assets.models.evaluation import evaluation_assets, evaluation_checks
from assets.models.training import training_assets

overrides, names = json.loads(sys.argv[1]), sys.argv[2:]
resources = resources_from_env()
settings = settings_from_env()
resources["training"] = TrainingResource(
    base_model=settings.training_base_model,
    output_root=settings.training_output_root,
    max_steps=settings.training_max_steps,
    **overrides,
)
everything = [*training_assets, *evaluation_assets]
config = {"max_format_prompts": 2, "max_pairs": 8, "max_traces": 8, "max_new_tokens": 4}
result = dg.materialize(
    everything + list(evaluation_checks),
    selection=names,
    resources=resources,
    instance=dg.DagsterInstance.get(),
    run_config={"ops": {"model_evaluation": {"config": config}}} if "model_evaluation" in names else None,
)
print(json.dumps({
    e.materialization.asset_key.to_user_string(): {
        k: v.value for k, v in e.materialization.metadata.items() if isinstance(v.value, (str, int, float))
    }
    for e in result.get_asset_materialization_events()
}))
"""


@pytest.mark.slow
def test_training_assets_on_s3_in_fresh_processes(
    tmp_path: Path, s3_storage: Storage, s3_server: str, s3_client, mlflow_env: None
):
    """sft_model, then dpo_model and prm_model (both from the SFT version), then
    model_evaluation and champion_model, each in a fresh process with an empty working
    directory; the storage root (landed files, dataset exports, evaluation files) and the MLflow
    artifacts on S3, the training output folder wiped after every run: DPO, the PRM and the
    evaluation load their models from the registry."""
    root, warehouse, landed = pipeline.build_datasets(tmp_path)
    marts = dg.materialize(
        [dataset_models],
        resources=local_resources(root, warehouse),
    )
    assert marts.success
    for rel in landed:
        s3_storage.write_bytes(rel, (root / rel).read_bytes())
    with lakehouse_connection(warehouse) as con:
        for stage in ("sft", "dpo", "prm"):
            export_dataset(con, s3_storage, stage)
    s3_root = s3_storage.root.rstrip("/")
    output_root, cache = tmp_path / "training", tmp_path / "cache"
    (tmp_path / "dagster-home").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env.update(
        PYTHONPATH=str(REPO),
        TOKENIZERS_PARALLELISM="false",
        DAGSTER_HOME=str(tmp_path / "dagster-home"),
        DD_STORAGE_ROOT=s3_root,
        AWS_ENDPOINT_URL=s3_server,
        DD_FEEDS_FILE=str(tmp_path / "feeds.yaml"),
        DD_LAKEHOUSE_CATALOG=str(warehouse),
        DD_LAKEHOUSE_DATA_PATH=f"{warehouse}.files",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        DD_MODEL_CACHE=str(cache),
        DD_TRAINING_OUTPUT_ROOT=str(output_root),
        DD_TRAINING_BASE_MODEL="tiny",
        DD_TRAINING_MAX_STEPS="2",
    )

    # The PRM starts from the SFT version too (a base model given as a registry URI).
    overrides = {
        **pipeline.OVERRIDES,
        "prm_overrides": {
            **pipeline.OVERRIDES["prm_overrides"],
            "model.name_or_path": "models:/decision-data-sft@challenger",
        },
    }

    def run(*names: str) -> dict[str, dict]:
        empty = tmp_path / f"cwd-{'-'.join(names)}"
        empty.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", _FRESH_RUN, json.dumps(overrides), *names],
            cwd=empty, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
        shutil.rmtree(output_root, ignore_errors=True)  # the pod's disk is gone
        return json.loads(done.stdout.strip().splitlines()[-1])

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    artifacts = f"{s3_root}/mlflow-artifacts/"
    sft = run("sft_model")["sft_model"]
    second = run("dpo_model", "prm_model")
    dpo = second["dpo_model"]
    for meta in (sft, dpo, second["prm_model"]):
        version = client.get_model_version(meta["model_name"], str(meta["model_version"]))
        assert version.source == meta["model_source"] and version.source.startswith(artifacts)
        assert {"model.safetensors", "lineage.json"} <= set(_bucket_keys(s3_client, version.source))
        assert not Path(meta["checkpoint_path"]).exists()
    assert sft["model_uri"] == "models:/decision-data-sft/1"
    assert dpo["base_model"] == second["prm_model"]["base_model"] == sft["model_uri"]
    registry = MlflowResource(
        tracking_uri=env["MLFLOW_TRACKING_URI"], s3_endpoint_url=s3_server, model_cache=str(cache)
    )
    sft_copy = registry.local_model(dpo["base_model"])
    assert not sft_copy.downloaded  # the DPO run left it in the cache
    lineage = registry.local_model(dpo["model_uri"]).path / "lineage.json"
    start = json.loads(lineage.read_text())["start_from"]
    assert start["model_uri"] == "models:/decision-data-sft/1"
    assert start["source"] == sft["model_source"]

    # Another machine: an empty model cache. The evaluation fetches DPO, PRM and the SFT version
    # DPO started from (its reference, and the way back to the untrained base 'tiny').
    shutil.rmtree(cache)
    evaluation = run("model_evaluation", "champion_model")
    assert evaluation["model_evaluation"]["dpo_checkpoint"] == dpo["model_uri"]
    assert evaluation["model_evaluation"]["base_model"] == "tiny"
    assert sft_copy.path.is_dir()  # fetched again, to the same cache entry
    assert evaluation["champion_model"]["dpo_champion_version"] == "1"
    assert s3_storage.exists(evaluation["model_evaluation"]["items_path"])
    champion = client.get_model_version_by_alias("decision-data-dpo", "champion")
    assert champion.source == dpo["model_source"]
