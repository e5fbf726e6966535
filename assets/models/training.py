"""Training assets: ``sft_model``, ``dpo_model`` and ``prm_model`` (group ``training``, pool ``gpu``).

Each trains one stage (training/) on the exported dataset files of its ``ds_<stage>_files``
asset and records where the checkpoint came from:

    raw landed files -> raw -> dbt episodes (monthly) -> ds_<stage> -> ds_<stage>_files
                     -> <stage>_model: checkpoint folder + MLflow run + registered version

- data: local copies of ``datasets/<stage>/{train,validation}.parquet`` (a download when the
  storage root is on S3), checked against the export manifest's SHA-256;
- config: ``training/configs/<stage>.yaml`` (profile ``cpu-small``, plus short max_length and
  few steps) or ``<stage>_gpu.yaml`` (profile ``gpu``), wired to the files, the base model
  (SFT, PRM) or the SFT checkpoint (DPO: policy and frozen reference), and an output folder
  per Dagster run, then the TrainingResource's extra overrides;
- start: DPO starts from the latest sft_model's *registered version*
  (``models:/decision-data-sft/<n>``), resolved to a local folder by
  ``assets.core.model_store`` (downloaded from the artifact store once per version, or used in
  place when the source is a local folder); a base model given as a registry or artifact URI
  (SFT, PRM: ``DD_TRAINING_BASE_MODEL`` or a ``model.name_or_path`` override) is resolved the
  same way. lineage.json records it under ``start_from``;
- output: the checkpoint is written under ``TrainingResource.output_root`` (local scratch),
  then logged as the ``checkpoint`` artifact of the stage's MLflow run (on the artifact store)
  and registered with that artifact URI as the version's source;
- lineage: ``assets.episodes.dataset_lineage.dataset_lineage`` (dataset files and digests, episode partitions,
  dbt models and checksums, raw landed files and hashes) plus a ``dagster`` block (run id,
  asset key, upstream materialization, episode partition keys, code revision); the trainer
  writes it, with its own keys, into the checkpoint's lineage.json;
- launch: in this process (``assets.core.training_run.run_stage`` with MLflow logging on each
  Trainer log) or through Dagster Pipes (``python -m assets.core.training_run <stage>`` as a
  subprocess, which runs the same function and reports the materialization back), or the same
  command as a Kubernetes pod (``k8s``: ``PipesK8sClient``, :func:`k8s_launch_request`), which
  gets URIs instead of local paths (dataset files on the S3 storage root, the starting model as
  ``models:/…``) and fetches them itself. All give the same MLflow content and metadata keys.

No automation condition yet: the ``train_models`` job (orchestration.definitions) runs them.
"""

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from assets.core.automation import RETRAIN_REASON_TAG
from assets.core.dbt import dbt_project
from assets.core.lakehouse import lakehouse_connection
from assets.core.materializations import latest_metadata
from assets.core.model_store import ResolvedModel, is_model_uri
from assets.core.resources import (
    REPO_ROOT,
    FeedsResource,
    MlflowResource,
    StorageResource,
    TrainingResource,
    WarehouseResource,
)
from assets.core.storage import Storage
from assets.core.training_run import local_dataset_files, materialization_metadata, run_stage
from assets.episodes.dataset_lineage import DATASET_MODELS, at_snapshot, dataset_lineage
from training.checkpoint import code_digest as training_code_version

OWNERS = ["team:ml"]
TRAIN_SPLITS = ("train", "validation")
STAGE_DEPS = {
    "sft": ["ds_sft_files"],
    "dpo": ["sft_model", "ds_dpo_files"],
    "prm": ["ds_prm_files"],
}
DESCRIPTIONS = {
    "sft": "Supervised fine-tuning of the base model on ds_sft (completion-only loss).",
    "dpo": "DPO on ds_dpo starting from the sft_model checkpoint, which is also the frozen "
    "reference model.",
    "prm": "Process reward model on ds_prm: a step-level head on the base model.",
}
_METADATA = {
    "path": dg.MetadataValue.path,
    "url": dg.MetadataValue.url,
    "json": dg.MetadataValue.json,
    "text": dg.MetadataValue.text,
    "int": dg.MetadataValue.int,
    "float": dg.MetadataValue.float,
}


def git_revision() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def to_metadata(typed: dict[str, dict[str, Any]]) -> dict[str, dg.MetadataValue]:
    """Pipes-typed metadata ({raw_value, type}) as Dagster MetadataValues."""
    return {k: _METADATA[v["type"]](v["raw_value"]) for k, v in typed.items()}


def sft_model_uri(context: dg.AssetExecutionContext) -> str:
    """The registry URI (``models:/decision-data-sft/<version>``) of the latest sft_model
    materialization: DPO starts from it, on whatever machine it runs."""
    metadata = latest_metadata(context.instance, "sft_model")
    uri = metadata.get("model_uri") or metadata.get("model_source")
    if not uri:
        raise dg.Failure(
            "dpo_model needs an sft_model checkpoint in the registry; the latest sft_model "
            f"materialization names none (metadata keys {sorted(metadata)})"
        )
    return str(uri)


def start_model(
    context: dg.AssetExecutionContext, stage: str, uri: str, mlflow: MlflowResource
) -> ResolvedModel:
    """The registered model a stage starts from (DPO: the latest SFT version; SFT or PRM: a
    base model given as a registry or artifact URI, e.g. ``models:/decision-data-sft@champion``
    for a PRM on the SFT backbone), as a local folder from the model cache."""
    try:
        resolved = mlflow.local_model(uri)
    except Exception as err:  # MlflowException, FileNotFoundError, botocore errors
        raise dg.Failure(f"{stage}_model cannot load its starting model {uri}: {err}") from err
    context.log.info(
        f"{stage}: starts from {resolved.model_uri} (source {resolved.source}) at {resolved.path}"
        + (" (downloaded)" if resolved.downloaded else "")
    )
    return resolved


def stage_config(
    stage: str,
    training: TrainingResource,
    files: list[str],
    output_dir: str,
    start_from: str | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """The resolved stage config (as a dict) for this run: profile, wiring, extra overrides;
    ``validate=False`` for a config whose files and starting model are still URIs."""
    from training.config import STAGES, load_config

    extra = training.extra_overrides(stage)
    # The profile depends on the method the run will use (the file's, or an extra override's).
    method = getattr(load_config(stage, training.config_file(stage), extra), "method", "trainer")
    cfg = load_config(stage, training.config_file(stage), training.profile_overrides(method))
    raw = cfg.to_dict()
    raw["data"]["files"] = list(files)
    raw["train"]["output_dir"] = output_dir
    if stage == "dpo":
        raw["sft_checkpoint"] = start_from
        raw["model"]["name_or_path"] = ""
    else:
        raw["model"]["name_or_path"] = training.base_model
    if stage in ("sft", "dpo") and not raw.get("head", {}).get("feature_cache"):
        # Head mode: SFT, DPO, the evaluation and later retrains share the backbone's states.
        raw.setdefault("head", {})["feature_cache"] = training.feature_cache()
    cfg = STAGES[stage].from_dict(raw).with_overrides(extra)
    return (cfg.validate() if validate else cfg).to_dict()


def _stage_asset(stage: str) -> dg.AssetsDefinition:
    upstream = f"ds_{stage}_files"

    @dg.asset(
        name=f"{stage}_model",
        # The training code's digest: a change to training/ marks every checkpoint stale.
        code_version=training_code_version(),
        deps=[dg.AssetKey(k) for k in STAGE_DEPS[stage]],
        group_name="training",
        owners=OWNERS,
        kinds={"pytorch", "mlflow"},
        pool="gpu",
        tags={"partitioning": "none"},
        description=DESCRIPTIONS[stage]
        + " Writes a checkpoint folder (weights, tokenizer, training_config.json, lineage.json), "
        f"one MLflow run and a version of registered model decision-data-{stage}.",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        feeds: FeedsResource,
        warehouse: WarehouseResource,
        mlflow: MlflowResource,
        training: TrainingResource,
    ) -> dg.MaterializeResult:
        launch = training.validate_launch()
        store = storage.get()
        # The rows behind the files: read at the lakehouse snapshot the export read.
        with lakehouse_connection(warehouse.lakehouse()) as con:
            lineage = dataset_lineage(con, store, feeds.load(), stage, dbt_project.manifest_path)
            (data_until,) = con.execute(
                f"select max(decision_ts) from {DATASET_MODELS[stage]}"
                f" {at_snapshot(lineage['dataset']['lakehouse_snapshot'])}"
            ).fetchone()
        upstream_run = latest_metadata(context.instance, upstream).get("dagster_run_id", "")
        lineage["dagster"] = {
            "run_id": context.run_id,
            "asset_key": context.asset_key.to_user_string(),
            "upstream": {"asset_key": upstream, "run_id": upstream_run},
            # Monthly partition keys of the episode models these rows come from.
            "episode_partition_keys": list(lineage["episode_partitions"]),
            "code_revision": git_revision(),
            "storage_root": store.root,
            # Why this run trains (drift, new data, schedule, manual), as the run was tagged.
            "retrain_reason": context.run.tags.get(RETRAIN_REASON_TAG, "manual"),
        }
        splits = lineage["dataset"]["files"]
        if "train" not in splits:
            raise dg.Failure(f"{upstream} has no train split: nothing to train {stage} on")
        inputs = [
            {
                "name": f"ds_{stage}/{split}",
                "context": split,
                "uri": splits[split]["uri"],
                "sha256": splits[split]["sha256"],
                "rows": splits[split]["rows"],
            }
            for split in TRAIN_SPLITS
            if split in splits
        ]
        if launch == "k8s":
            # The pod shares no disk with this run: it gets URIs and fetches them itself.
            result = _run_k8s(context, stage, training, storage, inputs, lineage, mlflow)
            metadata = dict(result.metadata or {})
        else:
            metadata = _run_here(context, stage, training, store, upstream, inputs, lineage, mlflow)
        metadata["launch"] = dg.MetadataValue.text(launch)
        # The end of the data this model trained on (its train split stops before the dataset's
        # validation period): feature_drift compares newer decision points against it.
        metadata["train_data_until"] = dg.MetadataValue.text(
            str(lineage["dataset"].get("split_validation_start") or "")
        )
        # The newest decision in the dataset it was built from: episodes after it are new data.
        metadata["data_until"] = dg.MetadataValue.text(
            data_until.isoformat() if data_until is not None else ""
        )
        if reason := context.run.tags.get(RETRAIN_REASON_TAG):
            metadata["retrain_reason"] = dg.MetadataValue.text(reason)
        return dg.MaterializeResult(metadata=metadata)

    return _asset


def _run_here(
    context: dg.AssetExecutionContext,
    stage: str,
    training: TrainingResource,
    store: Storage,
    upstream: str,
    inputs: list[dict[str, Any]],
    lineage: dict[str, Any],
    mlflow: MlflowResource,
) -> dict[str, Any]:
    """Train on this machine (in this process or a Pipes subprocess) from local copies of the
    dataset files and the starting model; the materialization's metadata."""
    start = start_model(context, stage, sft_model_uri(context), mlflow) if stage == "dpo" else None
    with contextlib.ExitStack() as stack:
        try:
            files = local_dataset_files(store, inputs, stack)
        except ValueError as err:
            raise dg.Failure(f"{err}; rematerialize {upstream}") from err
        output_dir = str(Path(training.output_root) / stage / context.run_id)
        config = stage_config(
            stage, training, files, output_dir, str(start.path) if start else None
        )
        if stage != "dpo" and is_model_uri(config["model"]["name_or_path"]):
            start = start_model(context, stage, config["model"]["name_or_path"], mlflow)
            config["model"]["name_or_path"] = str(start.path)
        if start is not None:
            # What the stage started from, by registry URI (the folder is a cache entry).
            lineage["start_from"] = start.start_from()
        _log_launch(context, stage, training.launch, lineage, output_dir)
        if training.launch == "pipes":
            client = dg.PipesSubprocessClient(env=mlflow.process_env(), cwd=str(REPO_ROOT))
            invocation = client.run(
                command=stage_command(stage, sys.executable),
                context=context,
                extras=pipes_extras(config, lineage, inputs, mlflow),
            )
            return dict(invocation.get_materialize_result().metadata or {})
        mlflow.apply_env()  # the artifact store's endpoint and credentials
        report = run_stage(stage, config, lineage, mlflow.settings(), inputs, log=context.log.info)
        return to_metadata(materialization_metadata(report))


def _log_launch(
    context: dg.AssetExecutionContext,
    stage: str,
    launch: str,
    lineage: dict[str, Any],
    output_dir: str,
) -> None:
    context.log.info(
        f"{stage}: {launch} launch, {len(lineage['raw_files'])} raw files, "
        f"{len(lineage['episode_partitions'])} episode partitions, output {output_dir}"
    )


def stage_command(stage: str, python: str = "python") -> list[str]:
    """The Pipes child's command line (a subprocess, or the training pod's container)."""
    return [python, "-m", "assets.core.training_run", stage]


def pipes_extras(
    config: dict[str, Any],
    lineage: dict[str, Any],
    inputs: list[dict[str, Any]],
    mlflow: MlflowResource,
    fetch: bool = False,
) -> dict[str, Any]:
    """What the Pipes child reads (assets.core.training_run.main); ``fetch``: the inputs are
    URIs that the child downloads itself (the ``k8s`` launch)."""
    extras = {"config": config, "lineage": lineage, "tracking": mlflow.settings(), "inputs": inputs}
    return {**extras, "fetch": True} if fetch else extras


def k8s_launch_request(
    context: dg.AssetExecutionContext,
    stage: str,
    training: TrainingResource,
    storage: StorageResource,
    inputs: list[dict[str, Any]],
    lineage: dict[str, Any],
    mlflow: MlflowResource,
) -> dict[str, Any]:
    """The keyword arguments of ``PipesK8sClient.run`` for one stage (without the context):
    image, command, namespace, environment, pod spec and extras. Every input is a URI the pod
    can reach: the dataset files on the storage root, the starting model in the registry, the
    tracking server; its output is the MLflow run's artifact and the registered version.
    Failure when the storage root or the tracking store is local to this machine."""
    pod = training.pod
    storage_root = storage.get().root
    if "://" not in storage_root or storage_root.startswith("file://"):
        raise dg.Failure(
            f"the k8s training launch needs a storage root the pod can reach (s3://…), "
            f"not {storage_root}"
        )
    if mlflow.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in mlflow.tracking_uri:
        raise dg.Failure(
            f"the k8s training launch needs a tracking server the pod can reach, "
            f"not {mlflow.tracking_uri}"
        )
    if not pod.image:
        raise dg.Failure("the k8s training launch needs an image (DD_TRAINING_K8S_IMAGE)")
    scratch = pod.scratch.rstrip("/")
    on_pod = training.model_copy(update={"output_root": scratch})
    start = sft_model_uri(context) if stage == "dpo" else None
    config = stage_config(
        stage,
        on_pod,
        [i["uri"] for i in inputs],
        f"{scratch}/{stage}/{context.run_id}",
        start,
        validate=False,  # the pod validates once its inputs are local (run_stage)
    )
    env = {
        "DD_STORAGE_ROOT": storage_root,
        "DD_MODEL_CACHE": f"{scratch}/model-cache",
        # Secrets (S3 keys, MLflow credentials) come from pod.env_secrets, never from here.
        **{k: v for k, v in mlflow.process_env().items() if k not in mlflow.secret_env()},
    }
    if storage.s3_endpoint_url:
        env["AWS_ENDPOINT_URL"] = storage.s3_endpoint_url
    return {
        "image": pod.image,
        "command": stage_command(stage),
        "namespace": pod.namespace,
        "env": env,
        "base_pod_spec": pod.base_pod_spec(),
        "base_pod_meta": {"labels": {"app.kubernetes.io/component": f"training-{stage}"}},
        "extras": pipes_extras(config, lineage, inputs, mlflow, fetch=True),
    }


def _run_k8s(
    context: dg.AssetExecutionContext,
    stage: str,
    training: TrainingResource,
    storage: StorageResource,
    inputs: list[dict[str, Any]],
    lineage: dict[str, Any],
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Train in a Kubernetes pod through Dagster Pipes (``PipesK8sClient``: the Pipes context
    in the pod's environment, messages read back from its log); the pod reports the
    materialization."""
    from dagster_k8s import PipesK8sClient

    request = k8s_launch_request(context, stage, training, storage, inputs, lineage, mlflow)
    config = request["extras"]["config"]
    _log_launch(context, stage, "k8s", lineage, config["train"]["output_dir"])
    invocation = PipesK8sClient().run(context=context, **request)
    return invocation.get_materialize_result()


sft_model = _stage_asset("sft")
dpo_model = _stage_asset("dpo")
prm_model = _stage_asset("prm")
training_assets = [sft_model, dpo_model, prm_model]
