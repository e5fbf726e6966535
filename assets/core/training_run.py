"""One training stage with its MLflow run: shared by the in-process launch and the Pipes child.

    python -m assets.core.training_run {sft,dpo,prm}     (started by PipesSubprocessClient,
                                                          or as a pod by PipesK8sClient)

The child reads everything from the Pipes extras (``config``: the stage config as a dict,
``lineage``: the lineage dict, ``tracking``: the MLflow settings), trains, streams the Trainer's
log lines to Dagster, logs the MLflow run and reports the asset materialization back. It imports
``dagster_pipes`` and ``mlflow`` but never ``dagster``.

Launched as a Kubernetes pod, the child shares no disk with the run: its extras name the inputs
by URI (``fetch`` set, see :func:`fetch_inputs`): the dataset files on the storage root
(``s3://…``, checked against their SHA-256) and the starting model in the registry
(``models:/decision-data-sft/<n>``); it downloads them into its scratch folder first. Its output
is the MLflow run's ``checkpoint`` artifact and the registered version, also URIs.

The in-process launch (assets.models.training) calls :func:`run_stage` directly, so both launches write
the same MLflow content and the same materialization metadata (:func:`materialization_metadata`,
values typed with Pipes' metadata type names, which the asset turns into ``MetadataValue``s).

MLflow layout, one run per stage in experiment ``decision-data``:

- params: the resolved stage config, flattened with dotted keys (``train.learning_rate``)
- metrics: every Trainer log entry at its global step (``loss``, ``learning_rate``,
  ``eval_loss``, ...), then the final ``train_*`` / ``eval_*`` metrics at the last step
- dataset inputs: one per exported split file (context ``train`` / ``validation``), source = the
  file's URI, digest = its SHA-256 cut to MLflow's 36-character limit (the full one in the input
  tag ``sha256``)
- tags: ``dagster.run_id``, ``dagster.asset_key``, ``episode_partitions.{count,first,last}``,
  ``dbt.models_digest``, ``git.revision``, ``base_model``, ``stage``, ``lineage.sha256``,
  ``lakehouse.snapshot`` (the snapshot the dataset export read)
- artifacts: the checkpoint folder under ``checkpoint/`` (weights, tokenizer, training_config.json,
  lineage.json), on the experiment's artifact location: ``s3://…/mlflow-artifacts/…`` with an S3
  storage root, the tracking server's (proxied ``mlflow-artifacts:/…``) with an ``http://``
  tracking URI, a local folder (``var/mlflow/artifacts``) in the embedded default
- registry: a version of ``decision-data-<stage>`` whose source is ``<run artifact URI>/checkpoint``,
  tagged with ``lineage_sha256`` and given the alias ``challenger`` (promotion to ``champion`` is
  the evaluation gate's job). Later stages and the evaluation load it from there
  (``assets.core.model_store.resolve_model``), never from the local output folder
- base model: the ``base_model`` tag and metadata name the registry URI of the starting model
  when the stage started from a registered version (lineage ``start_from``)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assets.core.model_store import is_model_uri, resolve_model
from assets.core.settings import (
    DEFAULT_ARTIFACT_LOCATION,
    DEFAULT_TRACKING_URI,
    settings_from_env,
    storage_settings_from_env,
)
from assets.core.storage import Storage, file_sha256

EXPERIMENT = "decision-data"
CHECKPOINT_ARTIFACT = "checkpoint"
NEW_VERSION_ALIAS = "challenger"
STAGES = ("sft", "dpo", "prm")

# MLflow's limits (mlflow.utils.validation): 100 params per batch, 6000 characters per param
# value, 36 characters of dataset digest.
_PARAMS_PER_BATCH = 100
_PARAM_CHARS = 6000
_DIGEST_CHARS = 36

LogLine = Callable[[str], None]


def registered_model_name(stage: str) -> str:
    return f"decision-data-{stage}"


# ----------------------------------------------------------------------------- small pieces


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested dict as dotted keys with string values (lists and None as JSON)."""
    out: dict[str, str] = {}
    if isinstance(value, dict) and value:
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    out[prefix.rstrip(".")] = text[:_PARAM_CHARS]
    return out


def models_digest(dbt_models: dict[str, dict[str, str]]) -> str:
    """One digest of the dbt models' checksums (name-sorted)."""
    text = json.dumps({k: v.get("checksum") for k, v in sorted(dbt_models.items())})
    return hashlib.sha256(text.encode()).hexdigest()


def lineage_tags(lineage: dict[str, Any], base_model: str, stage: str) -> dict[str, str]:
    """The MLflow run tags drawn from the caller's lineage dict."""
    dagster = lineage.get("dagster", {})
    months = lineage.get("episode_partitions", [])
    return {
        "stage": stage,
        "base_model": base_model,
        "dagster.run_id": str(dagster.get("run_id", "")),
        "dagster.asset_key": str(dagster.get("asset_key", "")),
        "episode_partitions.count": str(len(months)),
        "episode_partitions.first": months[0] if months else "",
        "episode_partitions.last": months[-1] if months else "",
        "dbt.models_digest": models_digest(lineage.get("dbt_models", {})),
        "git.revision": str(dagster.get("code_revision") or ""),
        "dataset": str(lineage.get("dataset", {}).get("name", "")),
        # The lakehouse snapshot the dataset was exported from (time travel reads it again).
        "lakehouse.snapshot": str(lineage.get("dataset", {}).get("lakehouse_snapshot") or ""),
    }


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI address of a run (the tracking URI itself when it is a database)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else tracking_uri
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def finite_metrics(logs: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and math.isfinite(v)}


# ------------------------------------------------------------------------------ the tracker


class Tracker:
    """An MLflow client bound to one tracking URI and the ``decision-data`` experiment."""

    def __init__(
        self,
        tracking_uri: str = DEFAULT_TRACKING_URI,
        artifact_location: str | None = DEFAULT_ARTIFACT_LOCATION,
        experiment: str = EXPERIMENT,
        registry_uri: str | None = None,
    ) -> None:
        from mlflow import MlflowClient

        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            if artifact_location and "://" not in artifact_location:
                Path(artifact_location).mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_location or None
            )
            found = self.client.get_experiment(self.experiment_id)
        self.experiment_id = found.experiment_id
        # Fixed when the experiment was created: a later MLFLOW_ARTIFACT_LOCATION does not move
        # it (a new experiment name does).
        self.artifact_location = found.artifact_location

    def start(self, stage: str, tags: dict[str, str], params: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{stage}-{tags.get('dagster.run_id', '')[:8] or 'manual'}",
            tags=tags,
        )
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(run.info.run_id, params=items[i : i + _PARAMS_PER_BATCH])
        return run.info.run_id

    def log_metrics(self, run_id: str, step: int, logs: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in finite_metrics(logs).items()]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def log_datasets(self, run_id: str, files: list[dict[str, Any]]) -> None:
        """``files``: dicts with name, context, uri, sha256, rows."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = []
        for item in files:
            dataset = MetaDataset(
                resolve_dataset_source(item["uri"]),
                name=item["name"],
                digest=item["sha256"][:_DIGEST_CHARS],
            )
            tags = [
                InputTag(MLFLOW_DATASET_CONTEXT, item["context"]),
                InputTag("sha256", item["sha256"]),
                InputTag("rows", str(item.get("rows", ""))),
                InputTag("uri", item["uri"]),
            ]
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def finish(
        self, run_id: str, stage: str, checkpoint_dir: str, metrics: dict[str, float], step: int
    ) -> dict[str, Any]:
        """Final metrics, the checkpoint as artifacts, the registered version; ends the run."""
        self.log_metrics(run_id, step, metrics)
        lineage_digest = file_sha256(Path(checkpoint_dir) / "lineage.json")
        self.client.set_tag(run_id, "lineage.sha256", lineage_digest)
        self.client.log_artifacts(run_id, checkpoint_dir, artifact_path=CHECKPOINT_ARTIFACT)
        run = self.client.get_run(run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{CHECKPOINT_ARTIFACT}"
        name = registered_model_name(stage)
        self.ensure_registered_model(name)
        version = self.client.create_model_version(
            name,
            source=source,
            run_id=run_id,
            tags={"lineage_sha256": lineage_digest, "stage": stage},
            description=f"{stage} checkpoint of MLflow run {run_id}",
        )
        self.client.set_registered_model_alias(name, NEW_VERSION_ALIAS, version.version)
        self.client.set_terminated(run_id, "FINISHED")
        return {
            "model_name": name,
            "model_version": str(version.version),
            "model_source": source,
            "lineage_sha256": lineage_digest,
        }

    def ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    name, description=f"decision-data {name.rsplit('-', 1)[-1]} checkpoints"
                )
            except MlflowException:
                self.client.get_registered_model(name)  # created meanwhile by another run

    def fail(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "FAILED")


# ------------------------------------------------------------------------------ the inputs


def local_dataset_files(
    storage: Storage, inputs: list[dict[str, Any]], stack: contextlib.ExitStack
) -> list[str]:
    """Local copies of the dataset files ``inputs`` names by URI (the files themselves on a
    local root, downloads held open by ``stack`` on S3), each checked against its SHA-256;
    ValueError for a file that changed since its export manifest was written."""
    files = []
    for item in inputs:
        local = stack.enter_context(storage.local_copy(storage.relative(item["uri"])))
        if file_sha256(local) != item["sha256"]:
            raise ValueError(f"{item['uri']} changed since its export manifest was written")
        files.append(str(local))
    return files


def start_key(stage: str) -> tuple[str, ...]:
    """Where a stage config names its starting model: DPO's SFT checkpoint, else the base."""
    return ("sft_checkpoint",) if stage == "dpo" else ("model", "name_or_path")


def fetch_inputs(
    stage: str,
    config: dict[str, Any],
    inputs: list[dict[str, Any]],
    tracking: dict[str, Any],
    stack: contextlib.ExitStack,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The pod's side of the ``k8s`` launch: the config with its URIs made local, and the
    starting model's lineage record (None for a plain base model name such as
    ``smollm2-135m-instruct``, which the image carries). The storage root, its S3 settings and
    the model cache come from the pod's environment (assets/core/settings.py)."""
    config = copy.deepcopy(config)
    storage = Storage(**storage_settings_from_env())
    config["data"]["files"] = local_dataset_files(storage, inputs, stack)
    *section, key = start_key(stage)
    holder = config
    for name in section:
        holder = holder[name]
    if not is_model_uri(holder.get(key)):
        return config, None
    resolved = resolve_model(
        holder[key],
        tracking_uri=tracking.get("tracking_uri"),
        registry_uri=tracking.get("registry_uri"),
        cache_dir=settings_from_env().model_cache,
    )
    holder[key] = str(resolved.path)
    return config, resolved.start_from()


# ---------------------------------------------------------------------------- one stage run


def _train_fn(stage: str):
    if stage == "sft":
        from training.sft import train_sft

        return train_sft
    if stage == "dpo":
        from training.dpo import train_dpo

        return train_dpo
    from training.prm import train_prm

    return train_prm


def run_stage(
    stage: str,
    config: dict[str, Any],
    lineage: dict[str, Any],
    tracking: dict[str, Any],
    inputs: list[dict[str, Any]],
    log: LogLine = print,
) -> dict[str, Any]:
    """Train one stage inside an MLflow run; return the report (see :func:`report_metadata`).

    ``config``: the stage config dict (training.config), ``lineage``: what lineage.json records
    beside the trainer's own keys, ``tracking``: Tracker keyword arguments, ``inputs``: the
    dataset files for the run's dataset inputs (name, context, uri, sha256, rows).
    """
    from training.config import STAGES as STAGE_CONFIGS

    cfg = STAGE_CONFIGS[stage].from_dict(config).validate()
    # A registered starting model is named by its registry URI, not its local cache folder.
    start_uri = (lineage.get("start_from") or {}).get("model_uri")
    base_model = start_uri or cfg.start_model()
    tracker = Tracker(**tracking)
    params = flatten({k: v for k, v in cfg.to_dict().items() if k != "stage"})
    run_id = tracker.start(stage, lineage_tags(lineage, base_model, stage), params)
    log(
        f"MLflow run {run_id} in experiment {tracker.experiment_id} ({tracker.tracking_uri}), "
        f"artifacts on {tracker.artifact_location}"
    )
    try:
        tracker.log_datasets(run_id, inputs)

        def on_log(step: int, logs: dict[str, float]) -> None:
            tracker.log_metrics(run_id, step, logs)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in finite_metrics(logs).items())
            log(f"{stage} step {step}: {shown}")

        result = _train_fn(stage)(cfg, lineage, on_log=on_log)
        steps = int(result.metrics.get("train_global_steps", 0) or 0)
        registered = tracker.finish(run_id, stage, result.checkpoint_dir, result.metrics, steps)
    except BaseException:
        tracker.fail(run_id)
        raise
    report = {
        "stage": stage,
        "checkpoint_dir": result.checkpoint_dir,
        "metrics": finite_metrics(result.metrics),
        "mlflow_run_id": run_id,
        "mlflow_experiment_id": tracker.experiment_id,
        "mlflow_run_url": run_url(tracker.tracking_uri, tracker.experiment_id, run_id),
        "base_model": base_model,
        "dataset_digests": {i["context"]: i["sha256"] for i in inputs},
        "raw_files": len(lineage.get("raw_files", [])),
        "episode_partitions": len(lineage.get("episode_partitions", [])),
        **registered,
    }
    log(
        f"{stage}: checkpoint {result.checkpoint_dir}, {report['model_name']} v{report['model_version']}"
    )
    return report


def materialization_metadata(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The asset's materialization metadata as Pipes-typed values ({raw_value, type})."""

    def typed(value: Any, kind: str) -> dict[str, Any]:
        return {"raw_value": value, "type": kind}

    metrics = report["metrics"]
    out = {
        "checkpoint_path": typed(report["checkpoint_dir"], "path"),
        "base_model": typed(report["base_model"], "text"),
        "mlflow_run_id": typed(report["mlflow_run_id"], "text"),
        "mlflow_run_url": typed(report["mlflow_run_url"], "url"),
        "model_name": typed(report["model_name"], "text"),
        "model_version": typed(int(report["model_version"]), "int"),
        "model_uri": typed(f"models:/{report['model_name']}/{report['model_version']}", "text"),
        "model_source": typed(report["model_source"], "text"),
        "lineage_sha256": typed(report["lineage_sha256"], "text"),
        "metrics": typed(metrics, "json"),
        "dataset_digests": typed(report["dataset_digests"], "json"),
        "n_raw_files": typed(int(report["raw_files"]), "int"),
        "n_episode_partitions": typed(int(report["episode_partitions"]), "int"),
    }
    for key in ("train_loss", "eval_loss"):
        if key in metrics:
            out[key] = typed(float(metrics[key]), "float")
    return out


# ------------------------------------------------------------------------------- the child


def main(argv: list[str] | None = None) -> int:
    from dagster_pipes import open_dagster_pipes

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m assets.core.training_run {{{','.join(STAGES)}}}", file=sys.stderr)
        return 2
    stage = argv[0]
    with open_dagster_pipes() as pipes:
        extras = pipes.extras

        def log(line: str) -> None:
            print(line, flush=True)  # the subprocess's stdout, forwarded by the client
            pipes.log.info(line)

        log(f"pipes child pid {os.getpid()}: training {stage}")
        config, lineage = extras["config"], extras["lineage"]
        with contextlib.ExitStack() as stack:
            if extras.get("fetch"):
                config, start_from = fetch_inputs(
                    stage, config, extras["inputs"], extras["tracking"], stack
                )
                if start_from is not None:
                    lineage = {**lineage, "start_from": start_from}
                log(f"fetched {len(extras['inputs'])} dataset files, starting model: {start_from}")
            report = run_stage(
                stage, config, lineage, extras["tracking"], extras["inputs"], log=log
            )
        pipes.report_asset_materialization(metadata=materialization_metadata(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
