"""Model evaluation and the champion/challenger gate (Dagster and MLflow around
``training.report``).

``model_evaluation`` loads the latest DPO (decision) and PRM checkpoints from the registry (the
versions their training assets registered, ``models:/decision-data-dpo/<n>``; the files come
from the artifact store through ``assets.core.model_store``, cached per version, so any process
on any machine can run it) and runs :func:`training.report.evaluate_checkpoints` on the test
split:

- **decisions**, every test decision point: the likelihood scorer's p(buy / sell / hold) (one
  forward pass per item, ``training.scoring``), log p(target), Brier, argmax accuracy against
  the ex-ante best action;
- **baselines table** on the same items with the same metrics: the untrained base model,
  train-majority, always buy / sell / hold, random, every reference policy and the probe
  (``training.baselines``), each with the paired bootstrap of the model's log p(target) against
  it; shown as Markdown in the metadata and logged to the MLflow run (table + metrics);
- **format**: share of greedy generations that open with a decision line on a sample, with a
  token budget that fits the longest completion of the data;
- **preferences** on the ``ds_dpo`` test pairs (DPO's implicit reward against the SFT reference
  when at hand), **PRM** step metrics per kind next to the kind-only and exact-check
  baselines (step kinds and exact checks from fct_step_labels), and a **backtest**.

The gate (blocking check ``beats_champion``): the challenger's and the champion's per-item
scores on the *same* decision points, by default ``logp_target`` (continuous: only identical
forecasts tie), go into ``training.promotion.gate_decision`` (paired bootstrap; promote only if
the lower bound of the 95% interval of the mean difference is above 0). ``champion_model`` then
moves the registry alias ``champion``. Exported as :data:`evaluation_assets` and
:data:`evaluation_checks`.
"""

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from assets.core.lakehouse import Lakehouse, lakehouse_connection
from assets.core.materializations import latest_metadata, plain_metadata
from assets.core.model_store import resolve_model
from assets.core.resources import (
    MlflowResource,
    StorageResource,
    TrainingResource,
    WarehouseResource,
)
from assets.core.training_run import finite_metrics
from training.baselines import table_markdown
from training.checkpoint import code_digest as training_code_version
from training.promotion import DEFAULT_GATE_SCORE, GATE_SCORES, gate_decision
from training.report import EvaluationReport, evaluate_checkpoints, score_checkpoint_items

OWNERS = ["team:research-data"]
GROUP = "training"
DPO_REGISTERED_MODEL = "decision-data-dpo"
PRM_REGISTERED_MODEL = "decision-data-prm"
CHAMPION_ALIAS = "champion"
EVALUATIONS_PREFIX = "evaluations"
# Files written under evaluations/<dagster run id>/.
ITEMS_FILE = "decision_items.parquet"
BASELINES_FILE = "baselines.parquet"
PRM_BASELINES_FILE = "prm_baselines.parquet"
BACKTEST_FILE = "backtest.parquet"
PREFERENCE_FILE = "preference_items.parquet"
PRM_FILE = "prm_items.parquet"
REPORT_FILE = "report.json"
CHAMPION_ITEMS_FILE = "champion_decision_items.parquet"
# Model version tags written by champion_model so the next gate can reuse the champion's scores.
TAG_ITEMS = "evaluation_items"
TAG_DIGEST = "evaluation_items_digest"
TAG_EVAL_RUN = "evaluation_dagster_run_id"
TAG_EVAL_MLFLOW_RUN = "evaluation_mlflow_run_id"
# Columns of fct_decision_episodes the evaluation reads (those missing are left out).
EPISODE_COLUMNS = (
    "episode_id",
    "decision_point_id",
    "symbol",
    "bar_interval",
    "decision_ts",
    "prompt",
    "completion",
    "policy_id",
    "policy_version",
    "action",
    "size",
    "split",
    "is_mature",
    "target_action",
    "best_action_ex_ante",
    "cf_reward_buy",
    "cf_reward_sell",
    "cf_reward_hold",
)
EVALUATED_SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------- registry helpers (MLflow)


def champion_version(client: Any, name: str, alias: str = CHAMPION_ALIAS) -> Any | None:
    """The model version holding ``alias`` on registered model ``name``, or None (no such
    model, or no such alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def registry_uri_of(name: str, version: Any) -> str:
    """``models:/<name>/<version>``: the pinned registry URI of a version."""
    return f"models:/{name}/{version}"


def download_checkpoint(
    source: str, tracking_uri: str | None, cache_dir: str | Path | None = None
) -> Path:
    """A local folder with a checkpoint (a registry URI, a version's ``source`` or a folder),
    through assets.core.model_store (downloaded once per version into ``cache_dir``, by default
    ``var/model-cache``)."""
    extra = {"cache_dir": cache_dir} if cache_dir is not None else {}
    return resolve_model(source, tracking_uri=tracking_uri, **extra).path


@dataclass
class GateOutcome:
    """The verdict of the champion gate and how it was reached.

    promote: pass the check (move ``champion`` to the challenger).
    reason: one sentence. champion_version: the current champion's version (None: none).
    champion_scores: ``reused`` (its stored per-item scores, same item digest), ``evaluated``
        (scored now on the challenger's items) or ``none``.
    statistics: ``training.promotion`` statistics (paired bootstrap).
    champion_items: the champion's per-item frame when one was used.
    """

    promote: bool
    reason: str
    champion_version: str | None = None
    champion_scores: str = "none"
    statistics: dict[str, float] = field(default_factory=dict)
    champion_items: pd.DataFrame | None = field(default=None, repr=False)


def champion_gate(
    client: Any,
    storage: Any,
    evaluation: Mapping[str, Any],
    *,
    tracking_uri: str | None = None,
    load_model: Callable[[str], Path] | None = None,
    score_champion: Callable[[Path, pd.DataFrame], pd.DataFrame] | None = None,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    min_items: int = 10,
) -> GateOutcome:
    """Challenger (the evaluated version) against the registry's ``champion`` of the same
    registered model, on the challenger's decision points.

    ``evaluation`` is the ``model_evaluation`` metadata (plain values): ``dpo_model_name``,
    ``dpo_model_version``, ``items_path`` (relative to the storage root), ``items_digest``,
    ``gate_score``, ``seed``, ``batch_size``. The champion's per-item scores are its stored
    ones when its version's tag ``evaluation_items_digest`` equals the challenger's digest (same
    items, same scorer) and the file exists with the gate's score; else its checkpoint is
    loaded from the registry (``load_model("models:/<name>/<champion version>")``, default
    :func:`download_checkpoint` on ``tracking_uri``: the version's artifacts, downloaded once
    into the model cache) and scored on the challenger's items
    (``score_champion(checkpoint_dir, items)``, default
    :func:`training.report.score_checkpoint_items`, the likelihood scorer).
    """
    name = str(evaluation["dpo_model_name"])
    challenger = str(evaluation["dpo_model_version"])
    score = str(evaluation.get("gate_score") or DEFAULT_GATE_SCORE)
    current = champion_version(client, name)
    if current is None:
        return GateOutcome(True, f"no {CHAMPION_ALIAS} of {name} yet: the first model is promoted")
    if str(current.version) == challenger:
        return GateOutcome(
            True,
            f"{name} v{challenger} is already the {CHAMPION_ALIAS}",
            champion_version=str(current.version),
        )

    challenger_items = read_parquet(storage, str(evaluation["items_path"]))
    tags = dict(current.tags or {})
    stored = tags.get(TAG_ITEMS)
    champion_items, how = None, "evaluated"
    if stored and tags.get(TAG_DIGEST) == evaluation.get("items_digest") and storage.exists(stored):
        champion_items, how = read_parquet(storage, stored), "reused"
        if score not in champion_items.columns:  # stored by an older evaluation
            champion_items, how = None, "evaluated"
    if champion_items is None:
        if score_champion is None:

            def score_champion(folder: Path, items: pd.DataFrame) -> pd.DataFrame:
                return score_checkpoint_items(
                    folder, items, batch_size=int(evaluation.get("batch_size") or 8)
                )

        if load_model is None:

            def load_model(uri: str) -> Path:
                return download_checkpoint(uri, tracking_uri)

        folder = load_model(registry_uri_of(name, current.version))
        champion_items = score_champion(folder, challenger_items)

    decision = gate_decision(
        challenger_items,
        champion_items,
        score=score,
        n_resamples=n_resamples,
        seed=int(evaluation.get("seed") or 0),
        alpha=alpha,
        min_items=min_items,
    )
    reason = f"v{challenger} vs {CHAMPION_ALIAS} v{current.version}: {decision.reason}"
    return GateOutcome(
        decision.promote,
        reason,
        champion_version=str(current.version),
        champion_scores=how,
        statistics=decision.statistics,
        champion_items=champion_items,
    )


def move_champion(
    client: Any,
    versions: Mapping[str, str],
    *,
    tags: Mapping[str, str] | None = None,
    tagged_model: str | None = None,
) -> dict[str, str | None]:
    """Point ``champion`` of each registered model (name → version) at the given version;
    ``tags`` are set on ``tagged_model``'s new champion version. Returns name → previous
    champion version (None: none)."""
    previous: dict[str, str | None] = {}
    for name, version in versions.items():
        old = champion_version(client, name)
        previous[name] = None if old is None else str(old.version)
        client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
        if name == tagged_model:
            for key, value in (tags or {}).items():
                client.set_model_version_tag(name, str(version), key, str(value))
    return previous


# ---------------------------------------------------------------- storage helpers


def read_parquet(storage: Any, rel: str) -> pd.DataFrame:
    with storage.local_copy(rel) as local:
        return pd.read_parquet(local)


def write_parquet(storage: Any, rel: str, frame: pd.DataFrame) -> str:
    """Write ``frame`` atomically at ``rel``; returns its URI."""
    with storage.staging_dir() as tmp:
        local = Path(tmp) / Path(rel).name
        frame.to_parquet(local, index=False)
        storage.commit_file(local, rel)
    return storage.uri(rel)


def read_dataset_split(storage: Any, name: str, split: str = "test") -> pd.DataFrame | None:
    """``datasets/<name>/<split>.parquet`` (the ds_<name>_files export), None when missing."""
    rel = f"datasets/{name}/{split}.parquet"
    if not storage.exists(rel):
        return None
    return read_parquet(storage, rel)


def _read_warehouse(
    where: Lakehouse | str | Path, read: Callable[[Any], pd.DataFrame]
) -> pd.DataFrame:
    """``read(con)`` on a read-only lakehouse connection (a dbt run writing meanwhile does not
    block it: readers read a committed snapshot)."""
    with lakehouse_connection(where) as con:
        return read(con)


def read_episodes(
    where: Lakehouse | str | Path, splits: Sequence[str] = EVALUATED_SPLITS
) -> pd.DataFrame:
    """The rows of fct_decision_episodes in ``splits`` (the columns of :data:`EPISODE_COLUMNS`
    that exist), read-only: the test split is evaluated, train and validation fit the
    train-majority forecast and the probe."""

    def read(con: Any) -> pd.DataFrame:
        present = {
            row[0]
            for row in con.execute(
                "select column_name from information_schema.columns"
                " where table_name = 'fct_decision_episodes'"
            ).fetchall()
        }
        columns = ", ".join(c for c in EPISODE_COLUMNS if c in present)
        return con.execute(
            f"select {columns} from fct_decision_episodes where split in"
            f" ({', '.join('?' for _ in splits)})",
            list(splits),
        ).df()

    return _read_warehouse(where, read)


def read_step_info(where: Lakehouse | str | Path, trace_ids: Sequence[str]) -> pd.DataFrame:
    """trace_id, step_index, kind, verified of fct_step_labels for the given traces (empty
    when the warehouse has no such table)."""
    wanted = pd.DataFrame({"trace_id": [str(t) for t in trace_ids]}).drop_duplicates()

    def read(con: Any) -> pd.DataFrame:
        tables = {
            row[0]
            for row in con.execute("select table_name from information_schema.tables").fetchall()
        }
        if "fct_step_labels" not in tables:
            return pd.DataFrame(columns=["trace_id", "step_index", "kind", "verified"])
        con.register("wanted_traces", wanted)
        return con.execute(
            "select s.trace_id, s.step_index, s.kind, s.verified from fct_step_labels s"
            " inner join wanted_traces w on s.trace_id = w.trace_id"
        ).df()

    return _read_warehouse(where, read)


def _metadata_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return dg.MetadataValue.float(value) if math.isnan(value) else str(value)
    return value


def log_evaluation_run(
    tracker: Any,
    report: EvaluationReport,
    *,
    dpo: Mapping[str, Any],
    prm: Mapping[str, Any],
    dagster_run_id: str,
    artifacts: Sequence[Path],
) -> str:
    """An MLflow run with the evaluation's metrics, params and files, nested under the DPO
    model's training run (tag ``mlflow.parentRunId``, in that run's experiment when it exists);
    the evaluated DPO version gets the tag ``evaluation_mlflow_run_id``. Returns the run id."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    client = tracker.client
    parent = str(dpo.get("mlflow_run_id") or "")
    experiment_id = tracker.experiment_id
    tags = {
        "dagster.run_id": dagster_run_id,
        "dagster.asset_key": "model_evaluation",
        "stage": "evaluation",
        "evaluated.dpo": f"{dpo.get('model_name')}/{dpo.get('model_version')}",
        "evaluated.prm": f"{prm.get('model_name')}/{prm.get('model_version')}",
        "items_digest": report.digest,
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
        with contextlib.suppress(MlflowException):
            experiment_id = client.get_run(parent).info.experiment_id
    run = client.create_run(experiment_id, run_name=f"evaluation-{dagster_run_id[:8]}", tags=tags)
    run_id = run.info.run_id
    try:
        stamp = int(time.time() * 1000)
        params = [Param(k, str(v)) for k, v in sorted(report.settings.items())]
        metrics = [
            Metric(k, v, stamp, 0) for k, v in sorted(finite_metrics(report.metrics).items())
        ]
        for start in range(0, max(len(metrics), 1), 500):
            client.log_batch(
                run_id,
                metrics=metrics[start : start + 500],
                params=params if start == 0 else [],
            )
        for path in artifacts:
            client.log_artifact(run_id, str(path), artifact_path="evaluation")
        if dpo.get("model_name") and dpo.get("model_version") is not None:
            with contextlib.suppress(MlflowException):
                client.set_model_version_tag(
                    str(dpo["model_name"]),
                    str(dpo["model_version"]),
                    TAG_EVAL_MLFLOW_RUN,
                    run_id,
                )
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


# ---------------------------------------------------------------- Dagster definitions


EVALUATION_KEY = dg.AssetKey("model_evaluation")
GATE_CHECK = "beats_champion"


class EvaluationConfig(dg.Config):
    """How model_evaluation scores. Decisions: every test decision point, always."""

    max_format_prompts: int | None = 64  # greedy generations for the format metric (None: all)
    max_new_tokens: int | None = None  # None: fits the longest completion of the episodes
    max_pairs: int | None = None  # ds_dpo test pairs (None: all)
    max_traces: int | None = None  # ds_prm test traces (None: all)
    seed: int = 0
    batch_size: int = 8
    use_reference: bool = True
    base_model: str | None = None  # None: the checkpoint lineage's base; "": no base row
    gate_score: str = DEFAULT_GATE_SCORE


def _model_info(instance: dg.DagsterInstance, asset: str) -> dict[str, Any]:
    info = latest_metadata(instance, dg.AssetKey(asset))
    if not info.get("checkpoint_path") and not info.get("model_source"):
        raise dg.Failure(f"{asset} has no materialization with a checkpoint to evaluate")
    return info


def model_uri(info: Mapping[str, Any]) -> str:
    """How a training asset's latest materialization names its checkpoint, most portable
    first: the registered version (``models:/<name>/<version>``), the version's source, the
    local folder it was written to."""
    if info.get("model_uri"):
        return str(info["model_uri"])
    if info.get("model_name") and info.get("model_version") not in (None, ""):
        return registry_uri_of(str(info["model_name"]), info["model_version"])
    return str(info.get("model_source") or info.get("checkpoint_path"))


def _load(info: Mapping[str, Any], mlflow: MlflowResource, asset: str, log: Any) -> Path:
    """The checkpoint of ``info`` as a local folder, from the registry (any process), and the
    registered model it started from (lineage ``start_from``, DPO: the SFT version).

    The report walks a checkpoint's lineage ``base_model`` (the local folder the stage started
    from) back to the SFT reference and the untrained base; that folder is a model-cache entry
    of the training process, and the cache puts the same version at the same path in every
    process with the same settings, so fetching ``start_from`` here makes the walk work on
    another machine too."""
    uri = model_uri(info)
    try:
        folder = mlflow.local_model(uri).path
        lineage_file = folder / "lineage.json"
        lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
        start = (lineage.get("start_from") or {}).get("model_uri")
        if start:
            parent = mlflow.local_model(str(start)).path
            if str(parent) != str(lineage.get("base_model")):
                log.warning(
                    f"{asset}: started from {start}, fetched to {parent}, but its lineage "
                    f"names {lineage.get('base_model')} (another model cache setting?)"
                )
    except Exception as err:  # MlflowException, FileNotFoundError, botocore errors
        raise dg.Failure(f"cannot load the {asset} checkpoint {uri}: {err}") from err
    return folder


@dg.asset(
    name="model_evaluation",
    code_version=training_code_version(),
    group_name=GROUP,
    owners=OWNERS,
    kinds={"pytorch", "mlflow"},
    deps=[
        dg.AssetKey("dpo_model"),
        dg.AssetKey("prm_model"),
        dg.AssetKey("ds_dpo_files"),
        dg.AssetKey("ds_prm_files"),
        dg.AssetKey("fct_decision_episodes"),
    ],
    description=(
        "The latest DPO (decision) and PRM checkpoints on the test split: the likelihood "
        "scorer's log p(target), Brier and accuracy on every test decision point, next to the "
        "untrained base model, train-majority, always buy / sell / hold, random, every "
        "reference policy and a probe (baselines table); well-formed generations on a sample; "
        "preference accuracy and margin; PRM step AUC per kind next to the kind-only and "
        "exact-check baselines; a backtest. Files under evaluations/<run id>/; an MLflow run "
        "nested under the DPO training run."
    ),
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    storage: StorageResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    training: TrainingResource,
) -> dg.MaterializeResult:
    if config.gate_score not in GATE_SCORES:
        raise dg.Failure(f"gate_score {config.gate_score!r}: expected one of {tuple(GATE_SCORES)}")
    store = storage.get()
    tracker = mlflow.tracker()
    dpo = _model_info(context.instance, "dpo_model")
    prm = _model_info(context.instance, "prm_model")
    episodes = read_episodes(warehouse.lakehouse())
    pairs = read_dataset_split(store, "dpo")
    traces = read_dataset_split(store, "prm")
    train_traces = read_dataset_split(store, "prm", "train")
    if not (episodes["split"] == "test").any():
        raise dg.Failure("fct_decision_episodes has no test rows to evaluate on")
    step_info = None
    if traces is not None and "trace_id" in traces.columns:
        ids = list(traces["trace_id"])
        if train_traces is not None and "trace_id" in train_traces.columns:
            ids += list(train_traces["trace_id"])
        step_info = read_step_info(warehouse.lakehouse(), ids)

    import tempfile

    folder = f"{EVALUATIONS_PREFIX}/{context.run_id}"
    with tempfile.TemporaryDirectory(prefix="dd-eval-") as tmp:
        scratch = Path(tmp)
        dpo_dir = _load(dpo, mlflow, "dpo_model", context.log)
        prm_dir = _load(prm, mlflow, "prm_model", context.log)
        report = evaluate_checkpoints(
            dpo_dir,
            prm_dir,
            episodes,
            pairs,
            traces,
            base_model=config.base_model,
            train_traces=train_traces,
            step_info=step_info,
            max_format_prompts=config.max_format_prompts,
            max_new_tokens=config.max_new_tokens,
            max_pairs=config.max_pairs,
            max_traces=config.max_traces,
            seed=config.seed,
            use_reference=config.use_reference,
            batch_size=config.batch_size,
            feature_cache=training.feature_cache(),
        )
        files = {
            ITEMS_FILE: report.items,
            BASELINES_FILE: report.baselines,
            BACKTEST_FILE: report.backtest,
        }
        if report.prm_baselines is not None:
            files[PRM_BASELINES_FILE] = report.prm_baselines
        if report.preference is not None:
            files[PREFERENCE_FILE] = report.preference.items
        if report.prm is not None:
            files[PRM_FILE] = report.prm.items
        uris = {
            name: write_parquet(store, f"{folder}/{name}", frame) for name, frame in files.items()
        }
        summary = {
            "metrics": finite_metrics(report.metrics),
            "settings": report.settings,
            "items_digest": report.digest,
            "dpo": {k: dpo.get(k) for k in ("model_name", "model_version", "mlflow_run_id")},
            "prm": {k: prm.get(k) for k in ("model_name", "model_version", "mlflow_run_id")},
        }
        store.write_bytes(
            f"{folder}/{REPORT_FILE}", json.dumps(summary, indent=2, default=str).encode()
        )
        local_files = []
        for name, frame in files.items():
            path = scratch / name
            frame.to_parquet(path, index=False)
            local_files.append(path)
        for name, text in (
            ("baselines.md", report.markdown()),
            ("backtest.md", table_markdown(report.backtest)),
        ):
            (scratch / name).write_text(text + "\n")
            local_files.append(scratch / name)
        run_id = log_evaluation_run(
            tracker,
            report,
            dpo=dpo,
            prm=prm,
            dagster_run_id=context.run_id,
            artifacts=local_files,
        )

    context.log.info(
        f"evaluated {dpo.get('model_name')} v{dpo.get('model_version')} and "
        f"{prm.get('model_name')} v{prm.get('model_version')} on {len(report.items)} test "
        f"decision points:\n{report.markdown()}"
    )
    metadata: dict[str, Any] = {k: _metadata_value(v) for k, v in report.metrics.items()}
    metadata.update(
        {
            "baselines": dg.MetadataValue.md(table_markdown(report.baselines)),
            "backtest": dg.MetadataValue.md(table_markdown(report.backtest)),
            "dpo_model_name": str(dpo.get("model_name") or DPO_REGISTERED_MODEL),
            "dpo_model_version": str(dpo.get("model_version") or ""),
            "prm_model_name": str(prm.get("model_name") or PRM_REGISTERED_MODEL),
            "prm_model_version": str(prm.get("model_version") or ""),
            "dpo_checkpoint": model_uri(dpo),
            "train_data_until": str(dpo.get("train_data_until") or ""),
            "data_until": str(dpo.get("data_until") or ""),
            "prm_checkpoint": model_uri(prm),
            "mlflow_run_id": run_id,
            "evaluation_path": dg.MetadataValue.path(store.uri(folder)),
            "items_path": f"{folder}/{ITEMS_FILE}",
            "backtest_path": f"{folder}/{BACKTEST_FILE}",
            "baselines_path": f"{folder}/{BASELINES_FILE}",
            "items_digest": report.digest,
            "n_items": len(report.items),
            "gate_score": config.gate_score,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "base_model": str(report.settings.get("base_model") or ""),
            "files": dg.MetadataValue.json(uris),
        }
    )
    if report.prm_baselines is not None:
        metadata["prm_baselines"] = dg.MetadataValue.md(table_markdown(report.prm_baselines))
    if report.pair_table is not None:
        metadata["pair_ranking"] = dg.MetadataValue.md(table_markdown(report.pair_table))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset=EVALUATION_KEY,
    name=GATE_CHECK,
    blocking=True,
    description=(
        "Challenger vs champion: the evaluated decision-data-dpo version against the version "
        "with alias 'champion', per-item scores on the same test decision points (paired "
        "bootstrap, training.promotion); passes with no champion yet (first model) or when "
        "the challenger is better beyond noise. Blocking: champion_model does not run otherwise."
    ),
)
def beats_champion(
    context: dg.AssetCheckExecutionContext, storage: StorageResource, mlflow: MlflowResource
) -> dg.AssetCheckResult:
    evaluation = latest_metadata(context.instance, EVALUATION_KEY)
    if not evaluation:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "no evaluation yet"})
    store = storage.get()
    tracker = mlflow.tracker()
    outcome = champion_gate(
        tracker.client,
        store,
        evaluation,
        tracking_uri=tracker.tracking_uri,
        load_model=lambda uri: mlflow.local_model(uri).path,
    )
    context.log.info(outcome.reason)
    metadata: dict[str, Any] = {
        "reason": outcome.reason,
        "challenger_version": str(evaluation.get("dpo_model_version")),
        "champion_version": outcome.champion_version or "",
        "champion_scores": outcome.champion_scores,
        "gate_score": str(evaluation.get("gate_score") or DEFAULT_GATE_SCORE),
    }
    metadata.update({k: _metadata_value(v) for k, v in outcome.statistics.items()})
    if outcome.champion_items is not None and outcome.champion_scores == "evaluated":
        folder = str(evaluation["items_path"]).rsplit("/", 1)[0]
        rel = f"{folder}/{CHAMPION_ITEMS_FILE}"
        write_parquet(store, rel, outcome.champion_items)
        metadata["champion_items_path"] = rel
    return dg.AssetCheckResult(passed=outcome.promote, metadata=metadata)


@dg.asset(
    name="champion_model",
    code_version="1",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"mlflow"},
    deps=[EVALUATION_KEY],
    description=(
        "Moves the registry alias 'champion' of decision-data-dpo and decision-data-prm to the "
        "versions model_evaluation evaluated, once its blocking check beats_champion passed "
        "(the first model becomes champion). The DPO version is tagged with its per-item "
        "scores so the next gate can reuse them."
    ),
)
def champion_model(
    context: dg.AssetExecutionContext, mlflow: MlflowResource
) -> dg.MaterializeResult:
    instance = context.instance
    evaluation = latest_metadata(instance, EVALUATION_KEY)
    record = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(EVALUATION_KEY, GATE_CHECK)
    )
    verdict = record.evaluation if record is not None else None
    target = verdict.target_materialization_data if verdict is not None else None
    if verdict is None or not verdict.passed:
        raise dg.Failure(f"{GATE_CHECK} has not passed for the latest model_evaluation")
    if target is not None and target.run_id != evaluation.get("dagster_run_id"):
        raise dg.Failure(f"{GATE_CHECK} passed for an older model_evaluation, not the latest")
    client = mlflow.tracker().client  # tracker() also sets the credentials' environment
    dpo_name, dpo_version = evaluation["dpo_model_name"], evaluation["dpo_model_version"]
    versions = {str(dpo_name): str(dpo_version)}
    if evaluation.get("prm_model_version"):
        versions[str(evaluation["prm_model_name"])] = str(evaluation["prm_model_version"])
    previous = move_champion(
        client,
        versions,
        tags={
            TAG_ITEMS: str(evaluation["items_path"]),
            TAG_DIGEST: str(evaluation["items_digest"]),
            TAG_EVAL_RUN: str(evaluation["dagster_run_id"]),
            TAG_EVAL_MLFLOW_RUN: str(evaluation.get("mlflow_run_id") or ""),
        },
        tagged_model=str(dpo_name),
    )
    reason = plain_metadata(verdict.metadata or {}).get("reason") or ""
    context.log.info(f"{CHAMPION_ALIAS}: {versions} (was {previous})")
    return dg.MaterializeResult(
        metadata={
            "dpo_model_name": str(dpo_name),
            "dpo_champion_version": str(dpo_version),
            "prm_model_name": str(evaluation.get("prm_model_name") or ""),
            "prm_champion_version": str(evaluation.get("prm_model_version") or ""),
            "previous_champions": dg.MetadataValue.json(previous),
            "gate_reason": str(reason),
            "evaluation_run_id": str(evaluation["dagster_run_id"]),
            # The training snapshot feature_drift measures against (end of the train data).
            "snapshot_until": str(evaluation.get("train_data_until") or ""),
            # The newest decision its dataset held: later mature episodes are new data.
            "data_until": str(evaluation.get("data_until") or ""),
        }
    )


evaluation_assets = [model_evaluation, champion_model]
evaluation_checks = [beats_champion]
