"""Model evaluation and the champion/challenger gate.

Core (plain functions, no Dagster): :func:`evaluate_checkpoints` loads a decision (DPO) checkpoint
and a PRM checkpoint and measures them on the test split, with the model calls of
``training/evaluate.py`` / ``training/prm.py`` and the metrics of ``training/evaluation.py`` /
``training/backtest.py``:

- **decisions**: greedy generation on up to ``max_prompts`` test decision points (a deterministic
  sample: the points first in ``md5(item_id|seed)`` order), accuracy against the ex-ante best
  action, share of well-formed traces, action distribution;
- **preferences**: on the ``ds_dpo`` test pairs, the share where the chosen completion scores
  higher and the mean margin. The score is DPO's implicit reward ``beta * (log p - log p_ref)``
  when the reference (the SFT checkpoint named in the DPO checkpoint's config) is at hand, else
  the plain summed log-probability;
- **PRM**: on the ``ds_prm`` test traces, step ROC AUC, F1 (correct and faulty class), and the
  faulty-step-found rate of perturbed traces against its chance level;
- **backtest** of the decision model's actions on the same decision points against ``hold``,
  ``random`` and every reference policy (return, Sharpe, drawdown: ``training.backtest``).

The per-item frame (one row per decision point: item id, prompt, target, realized counterfactual
rewards, completion, action, size, ``correct`` 0/1, ``reward``) is kept so that a gate can pair
two models on the same items.

The gate (:func:`gate_decision`, used by the blocking check ``beats_champion``): per-item scores
of the challenger and of the champion on the *same* decision points go into
``training.promotion.promotion_decision`` (paired bootstrap; promote only if the lower bound of the
95% interval of the mean difference is above 0). The score is :data:`DEFAULT_GATE_SCORE`,
``correct``: whether the model's action equals the ex-ante best action of the counterfactual
environment (an unparseable completion is wrong). That is the design's notion of decision quality
(ex-ante, not realized PnL: the realized reward of one decision is mostly luck, which would make
the gate noisy); ``reward`` (realized reward of the chosen action, size-scaled) can be chosen in
the asset's config instead. Decision points without an ex-ante target are left out of the
``correct`` comparison.

Dagster (at the end): asset ``model_evaluation``, blocking check ``beats_champion`` and asset
``champion_model`` (moves the registry alias ``champion``), exported as :data:`evaluation_assets`
and :data:`evaluation_checks`.
"""

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from assets.core.resources import MlflowResource, StorageResource, WarehouseResource
from training.backtest import SUMMARY_COLUMNS, backtest, model_rewards
from training.checkpoint import code_digest as training_code_version
from training.evaluation import (
    DecisionMetrics,
    PreferenceMetrics,
    PrmMetrics,
    decision_metrics,
    preference_metrics,
    prm_metrics,
)
from training.promotion import PromotionDecision, promotion_decision

OWNERS = ["team:research-data"]
GROUP = "training"
DPO_REGISTERED_MODEL = "decision-data-dpo"
PRM_REGISTERED_MODEL = "decision-data-prm"
CHAMPION_ALIAS = "champion"
GATE_SCORES = ("correct", "reward")
DEFAULT_GATE_SCORE = "correct"
EVALUATIONS_PREFIX = "evaluations"
# Files written under evaluations/<dagster run id>/.
ITEMS_FILE = "decision_items.parquet"
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
    "policy_id",
    "policy_version",
    "action",
    "size",
    "split",
    "is_mature",
    "best_action_ex_ante",
    "cf_reward_buy",
    "cf_reward_sell",
    "cf_reward_hold",
)
POINT_COLUMNS = (
    "item_id",
    "prompt",
    "best_action_ex_ante",
    "symbol",
    "decision_ts",
    "date",
    "cf_reward_buy",
    "cf_reward_sell",
    "cf_reward_hold",
)
ITEM_COLUMNS = (
    "item_id",
    "prompt",
    "target",
    "symbol",
    "decision_ts",
    "cf_reward_buy",
    "cf_reward_sell",
    "cf_reward_hold",
    "completion",
    "action",
    "size",
    "n_steps",
    "well_formed",
    "correct",
    "reward",
)
# Headline backtest metrics (per strategy model / hold / random) copied into the flat metrics.
BACKTEST_HEADLINE = ("total_return", "mean_reward", "sharpe", "max_drawdown", "hit_rate")


# ---------------------------------------------------------------- sampling and points


def _hash_order(keys: Sequence[str], seed: int) -> list[int]:
    """Indices of ``keys`` sorted by md5(key|seed), ties by key: a seeded, stable order that does
    not depend on the rows' order."""
    digests = [hashlib.md5(f"{k}|{seed}".encode()).hexdigest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: (digests[i], keys[i]))


def sample_rows(frame: pd.DataFrame, key: str, limit: int | None, seed: int) -> pd.DataFrame:
    """At most ``limit`` rows (all when None), the first in md5(key|seed) order, in the frame's
    own order."""
    if limit is None or len(frame) <= limit:
        return frame
    keys = frame[key].astype(str).tolist()
    keep = sorted(_hash_order(keys, seed)[: max(int(limit), 0)])
    return frame.iloc[keep]


def _on_split(frame: pd.DataFrame, split: str | None) -> pd.DataFrame:
    if split is None or "split" not in frame.columns:
        return frame
    return frame[frame["split"] == split]


def _mature(frame: pd.DataFrame) -> pd.DataFrame:
    if "is_mature" in frame.columns:
        frame = frame[frame["is_mature"].fillna(False).astype(bool)]
    return frame.dropna(subset=["cf_reward_buy", "cf_reward_sell"])


def item_id_of(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:24]


def decision_test_points(
    episodes: pd.DataFrame,
    *,
    max_prompts: int | None = None,
    seed: int = 0,
    split: str | None = "test",
) -> pd.DataFrame:
    """The decision points to evaluate: one row per unique prompt of the split's mature episodes
    with realized counterfactual rewards (the points the backtest can price), at most
    ``max_prompts`` of them (the first in md5(item_id|seed) order). Columns :data:`POINT_COLUMNS`;
    ``item_id`` is the episode's ``decision_point_id`` where present, else a hash of the prompt.
    Sorted by decision_ts, symbol, item_id."""
    rows = _mature(_on_split(episodes, split))
    points = rows.drop_duplicates("prompt").copy()
    if "decision_point_id" in points.columns:
        ids = points["decision_point_id"].astype(object)
        fallback = points["prompt"].map(item_id_of)
        points["item_id"] = ids.where(ids.notna(), fallback).astype(str)
    else:
        points["item_id"] = points["prompt"].map(item_id_of)
    if "best_action_ex_ante" not in points.columns:
        points["best_action_ex_ante"] = None
    points["cf_reward_hold"] = (
        points["cf_reward_hold"].fillna(0.0) if "cf_reward_hold" in points.columns else 0.0
    )
    points = sample_rows(points, "item_id", max_prompts, seed)
    points["date"] = pd.to_datetime(points["decision_ts"], utc=True).dt.floor("D")
    points = points.sort_values(["decision_ts", "symbol", "item_id"], kind="stable")
    return points[list(POINT_COLUMNS)].reset_index(drop=True)


def items_digest(points: pd.DataFrame, settings: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of what a model's per-item scores depend on besides the model: the items (id,
    prompt, target, realized rewards) in item order and the generation settings. Two evaluations
    with the same digest scored the same model the same way."""
    frame = points.sort_values("item_id", kind="stable")
    payload = {
        "items": [
            [
                str(row.item_id),
                str(row.prompt),
                row.best_action_ex_ante if isinstance(row.best_action_ex_ante, str) else None,
                *(round(float(getattr(row, c)), 12) for c in ("cf_reward_buy", "cf_reward_sell")),
                round(float(row.cf_reward_hold), 12),
            ]
            for row in frame.itertuples(index=False)
        ],
        "settings": dict(sorted((settings or {}).items())),
    }
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- scoring


def score_decision_points(
    points: pd.DataFrame,
    generate: Callable[[list[str]], list[str]],
    *,
    batch_size: int | None = None,
) -> tuple[DecisionMetrics, pd.DataFrame]:
    """Generate a decision at every point and score it: (metrics, items). ``items`` has
    :data:`ITEM_COLUMNS`, one row per point in the points' order: ``correct`` (1.0 / 0.0, NaN
    without a target) and ``reward`` (the realized reward of the chosen action and size; an
    unparseable completion is a hold, reward 0)."""
    metrics = decision_metrics(points, generate, split=None, batch_size=batch_size)
    decided = metrics.items
    priced = model_rewards(points, decided[["prompt", "action", "size"]], key="prompt")
    items = points.merge(
        decided[["prompt", "completion", "n_steps", "well_formed", "correct"]],
        on="prompt",
        how="left",
        validate="one_to_one",
    )
    items = items.merge(
        decided[["prompt", "action", "size"]], on="prompt", how="left", validate="one_to_one"
    )
    items["reward"] = items["prompt"].map(priced.set_index("prompt")["reward"]).astype(float)
    items = items.rename(columns={"best_action_ex_ante": "target"})
    return metrics, items[list(ITEM_COLUMNS)].reset_index(drop=True)


def gate_scores(items: pd.DataFrame, score: str = DEFAULT_GATE_SCORE) -> dict[str, float]:
    """Per-item scores for the gate: item id → ``correct`` (items with a target only) or
    ``reward``."""
    if score not in GATE_SCORES:
        raise ValueError(f"gate score {score!r}: expected one of {GATE_SCORES}")
    values = items[["item_id", score]].dropna(subset=[score])
    return {str(k): float(v) for k, v in zip(values["item_id"], values[score], strict=True)}


def gate_decision(
    challenger_items: pd.DataFrame,
    champion_items: pd.DataFrame | None,
    *,
    score: str = DEFAULT_GATE_SCORE,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    min_items: int = 10,
) -> PromotionDecision:
    """``promotion_decision`` on the two models' per-item ``score`` (None: no champion yet)."""
    champion = None if champion_items is None else gate_scores(champion_items, score)
    return promotion_decision(
        gate_scores(challenger_items, score),
        champion,
        n_resamples=n_resamples,
        seed=seed,
        alpha=alpha,
        min_items=min_items,
    )


# ---------------------------------------------------------------- the report


@dataclass
class EvaluationReport:
    """Everything one evaluation measured.

    metrics: flat floats (``decision_*``, ``preference_*``, ``prm_*``, ``backtest_<strategy>_*``
        for model / hold / random), ready for MLflow and Dagster metadata.
    items: per decision point (:data:`ITEM_COLUMNS`), what the gate pairs.
    backtest: one row per strategy (``training.backtest.SUMMARY_COLUMNS``).
    digest: :func:`items_digest` of the decision points and generation settings.
    settings: the sampling and generation settings used.
    """

    metrics: dict[str, float]
    items: pd.DataFrame = field(repr=False)
    backtest: pd.DataFrame = field(repr=False)
    decision: DecisionMetrics = field(repr=False)
    preference: PreferenceMetrics | None = field(default=None, repr=False)
    prm: PrmMetrics | None = field(default=None, repr=False)
    digest: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def backtest_markdown(self, digits: int = 4) -> str:
        return backtest_markdown(self.backtest, digits)


def backtest_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """The backtest table as a Markdown table (no tabulate dependency)."""
    columns = [c for c in SUMMARY_COLUMNS if c in table.columns]

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            if math.isnan(value):
                return "nan"
            return str(int(value)) if float(value).is_integer() else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table[columns].itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def _backtest_headline(table: pd.DataFrame) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in table.to_dict("records"):
        if row["strategy"] not in ("model", "hold", "random"):
            continue
        for metric in BACKTEST_HEADLINE:
            out[f"backtest_{row['strategy']}_{metric}"] = float(row[metric])
    return out


def evaluate_callables(
    episodes: pd.DataFrame,
    pairs: pd.DataFrame | None,
    traces: pd.DataFrame | None,
    *,
    generate: Callable[[list[str]], list[str]],
    logp: Callable[[list[str], list[str]], list[float]] | None = None,
    ref_logp: Callable[[list[str], list[str]], list[float]] | None = None,
    beta: float | None = None,
    score_traces: Callable[[list[str], list[list[str]]], list[list[float]]] | None = None,
    max_prompts: int | None = 200,
    max_pairs: int | None = None,
    max_traces: int | None = None,
    seed: int = 0,
    split: str | None = "test",
    periods_per_year: float = 252.0,
    settings: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """:func:`evaluate_checkpoints` with the models as plain callables (fakes in tests).

    ``score_traces(prompts, traces)`` scores a batch of traces (one list of step scores each);
    preferences are skipped without ``logp`` or pairs, PRM metrics without ``score_traces`` or
    traces.
    """
    points = decision_test_points(episodes, max_prompts=max_prompts, seed=seed, split=split)
    decision, items = score_decision_points(points, generate)
    metrics = {f"decision_{k}": v for k, v in decision.as_dict().items()}
    metrics["decision_mean_reward"] = float(items["reward"].mean()) if len(items) else math.nan
    metrics["decision_points_total"] = float(
        _mature(_on_split(episodes, split))["prompt"].nunique()
    )

    sampled = _on_split(episodes, split)
    sampled = sampled[sampled["prompt"].isin(points["prompt"])]
    table = backtest(
        sampled,
        items[["prompt", "action", "size"]],
        split=None,
        seed=seed,
        periods_per_year=periods_per_year,
    )
    metrics.update(_backtest_headline(table))

    preference = None
    if logp is not None and pairs is not None:
        rows = sample_rows(_on_split(pairs, split), "prompt", max_pairs, seed)
        rows = rows.reset_index(drop=True)
        preference = preference_metrics(rows, logp, beta=beta, ref_logp=ref_logp, split=None)
        metrics.update(preference.as_dict("preference_"))
        metrics["preference_implicit_reward"] = float(ref_logp is not None)

    prm = None
    if score_traces is not None and traces is not None:
        key = "trace_id" if "trace_id" in traces.columns else "prompt"
        rows = sample_rows(_on_split(traces, split), key, max_traces, seed)
        rows = rows.reset_index(drop=True)
        scored = score_traces(
            [str(p) for p in rows["prompt"]], [[str(s) for s in c] for c in rows["completions"]]
        )
        queue: Iterator[list[float]] = iter(scored)
        prm = prm_metrics(rows, lambda _prompt, _steps: next(queue), split=None)
        metrics.update(prm.as_dict("prm_"))
        metrics["prm_faulty_step_lift"] = prm.faulty_step_found - prm.faulty_step_chance

    run_settings = {"max_prompts": max_prompts, "seed": seed, **(settings or {})}
    return EvaluationReport(
        metrics=metrics,
        items=items,
        backtest=table,
        decision=decision,
        preference=preference,
        prm=prm,
        digest=items_digest(points, settings),
        settings=run_settings,
    )


# ---------------------------------------------------------------- checkpoints


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _system_prompt(config: Mapping[str, Any]) -> str | None:
    data = config.get("data") or {}
    return data.get("system_prompt") if isinstance(data, Mapping) else None


def decision_generator(
    model: Any, tokenizer: Any, config: Mapping[str, Any], *, max_new_tokens: int, batch_size: int
) -> Callable[[list[str]], list[str]]:
    from training import evaluate

    system = _system_prompt(config)

    def generate(prompts: list[str]) -> list[str]:
        return evaluate.generate(
            model,
            tokenizer,
            prompts,
            system=system,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )

    return generate


def score_checkpoint_decisions(
    checkpoint_dir: str | Path,
    points: pd.DataFrame,
    *,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    device: str | None = None,
) -> pd.DataFrame:
    """Per-item decision scores of a checkpoint on given points (e.g. the champion on the
    challenger's items: pass the challenger's items frame, its ``target`` is the ex-ante best
    action)."""
    from training.checkpoint import load_checkpoint

    if "best_action_ex_ante" not in points.columns and "target" in points.columns:
        points = points.rename(columns={"target": "best_action_ex_ante"})
    if "date" not in points.columns:
        points = points.assign(date=pd.to_datetime(points["decision_ts"], utc=True).dt.floor("D"))
    points = points[list(POINT_COLUMNS)]
    model, tokenizer, config = load_checkpoint(checkpoint_dir, device=device or default_device())
    generate = decision_generator(
        model, tokenizer, config, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return score_decision_points(points, generate)[1]


def evaluate_checkpoints(
    decision_checkpoint: str | Path,
    prm_checkpoint: str | Path | None,
    episodes: pd.DataFrame,
    pairs: pd.DataFrame | None,
    traces: pd.DataFrame | None,
    *,
    max_prompts: int | None = 200,
    seed: int = 0,
    max_pairs: int | None = None,
    max_traces: int | None = None,
    reference_checkpoint: str | Path | None = None,
    use_reference: bool = True,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    device: str | None = None,
    periods_per_year: float = 252.0,
) -> EvaluationReport:
    """Evaluate a decision (DPO or SFT) checkpoint and a PRM checkpoint on the test split.

    episodes: ``fct_decision_episodes`` rows (the test split is picked by ``split``); pairs:
    ``ds_dpo`` rows; traces: ``ds_prm`` rows (None skips them). Decision points: up to
    ``max_prompts`` (deterministic sample, :func:`decision_test_points`); pairs and traces: up to
    ``max_pairs`` / ``max_traces`` (None: all). The preference score is DPO's implicit reward
    against ``reference_checkpoint`` (default: the ``sft_checkpoint`` in the decision
    checkpoint's training config, when that folder exists; ``use_reference=False``: plain
    log-probabilities).
    """
    from training import evaluate, prm
    from training.checkpoint import load_checkpoint

    device = device or default_device()
    model, tokenizer, config = load_checkpoint(decision_checkpoint, device=device)
    system = _system_prompt(config)
    generate = decision_generator(
        model, tokenizer, config, max_new_tokens=max_new_tokens, batch_size=batch_size
    )

    def logp(prompts: list[str], completions: list[str]) -> list[float]:
        return evaluate.completion_logprobs(
            model, tokenizer, prompts, completions, system=system, batch_size=batch_size
        )

    ref_logp, beta = None, None
    if use_reference:
        if reference_checkpoint is None:
            candidate = config.get("sft_checkpoint")
            if candidate and Path(candidate).is_dir():
                reference_checkpoint = candidate
        if reference_checkpoint is not None:
            ref_model, ref_tokenizer, _ = load_checkpoint(reference_checkpoint, device=device)
            beta = float(config.get("beta") or 0.1)

            def ref_logp(prompts: list[str], completions: list[str]) -> list[float]:
                return evaluate.completion_logprobs(
                    ref_model,
                    ref_tokenizer,
                    prompts,
                    completions,
                    system=system,
                    batch_size=batch_size,
                )

    score_traces = None
    if prm_checkpoint is not None:
        prm_model, prm_tokenizer, prm_config = load_checkpoint(prm_checkpoint, device=device)

        def score_traces(prompts: list[str], steps: list[list[str]]) -> list[list[float]]:
            return prm.score_traces(
                prm_model,
                prm_tokenizer,
                prompts,
                steps,
                system=_system_prompt(prm_config),
                batch_size=batch_size,
            )

    return evaluate_callables(
        episodes,
        pairs,
        traces,
        generate=generate,
        logp=logp,
        ref_logp=ref_logp,
        beta=beta,
        score_traces=score_traces,
        max_prompts=max_prompts,
        max_pairs=max_pairs,
        max_traces=max_traces,
        seed=seed,
        periods_per_year=periods_per_year,
        settings={"max_new_tokens": max_new_tokens},
    )


# ---------------------------------------------------------------- registry helpers (MLflow)


def champion_version(client: Any, name: str, alias: str = CHAMPION_ALIAS) -> Any | None:
    """The model version holding ``alias`` on registered model ``name``, or None (no such
    model, or no such alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def download_checkpoint(source: str, tracking_uri: str | None, dst: str | Path) -> Path:
    """A local folder with a registered version's checkpoint (its ``source``, e.g.
    ``<run artifact URI>/checkpoint``): a local folder is used as it is, anything else is
    downloaded into ``dst``. The folder is the one holding ``config.json``."""
    if "://" not in source and Path(source).is_dir():
        return Path(source)
    from mlflow.artifacts import download_artifacts

    local = Path(
        download_artifacts(artifact_uri=source, tracking_uri=tracking_uri, dst_path=str(dst))
    )
    if (local / "config.json").is_file():
        return local
    found = sorted(local.rglob("config.json"))
    if not found:
        raise FileNotFoundError(f"no checkpoint (config.json) under {source}")
    return found[0].parent


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
    scratch: str | Path | None = None,
    score_champion: Callable[[Path, pd.DataFrame], pd.DataFrame] | None = None,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    min_items: int = 10,
) -> GateOutcome:
    """Challenger (the evaluated version) against the registry's ``champion`` of the same
    registered model, on the challenger's decision points.

    ``evaluation`` is the ``model_evaluation`` metadata (plain values): ``dpo_model_name``,
    ``dpo_model_version``, ``items_path`` (relative to the storage root), ``items_digest``,
    ``gate_score``, ``seed``, ``max_new_tokens``, ``batch_size``. The champion's per-item scores
    are its stored ones when its version's tag ``evaluation_items_digest`` equals the
    challenger's digest (same items, same generation settings) and the file exists; else its
    checkpoint is fetched from the registry and scored on the challenger's items
    (``score_champion(checkpoint_dir, items)``, default :func:`score_checkpoint_decisions`).
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
    if champion_items is None:
        if score_champion is None:

            def score_champion(folder: Path, items: pd.DataFrame) -> pd.DataFrame:
                return score_checkpoint_decisions(
                    folder,
                    items,
                    max_new_tokens=int(evaluation.get("max_new_tokens") or 96),
                    batch_size=int(evaluation.get("batch_size") or 8),
                )

        with contextlib.ExitStack() as stack:
            if scratch is None:
                import tempfile

                scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="dd-champion-"))
            folder = download_checkpoint(current.source, tracking_uri, scratch)
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
    reason = f"v{challenger} vs {CHAMPION_ALIAS} v{current.version} on '{score}': {decision.reason}"
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


def read_test_episodes(warehouse_path: str | Path, split: str = "test") -> pd.DataFrame:
    """The split's rows of fct_decision_episodes (the columns of :data:`EPISODE_COLUMNS` that
    exist), read-only. A warehouse locked by a writer is retried for up to a minute."""
    import duckdb

    from assets.episodes.datasets import warehouse_connection

    deadline = time.monotonic() + 60.0
    while True:
        try:
            with warehouse_connection(warehouse_path) as con:
                present = {
                    row[0]
                    for row in con.execute(
                        "select column_name from information_schema.columns"
                        " where table_name = 'fct_decision_episodes'"
                    ).fetchall()
                }
                columns = ", ".join(c for c in EPISODE_COLUMNS if c in present)
                return con.execute(
                    f"select {columns} from fct_decision_episodes where split = ?", [split]
                ).df()
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    """The latest materialization's metadata of ``key`` as plain values (run id under
    ``dagster_run_id``); empty when never materialized."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    out = {k: _plain(v) for k, v in event.asset_materialization.metadata.items()}
    out["dagster_run_id"] = event.run_id
    return out


def _metadata_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return dg.MetadataValue.float(value) if math.isnan(value) else str(value)
    return value


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


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
        metrics = [Metric(k, v, stamp, 0) for k, v in sorted(_finite(report.metrics).items())]
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
    """How model_evaluation samples and generates."""

    max_prompts: int = 200
    max_pairs: int | None = 200
    max_traces: int | None = 200
    seed: int = 0
    max_new_tokens: int = 96
    batch_size: int = 8
    use_reference: bool = True
    gate_score: str = DEFAULT_GATE_SCORE


def _model_info(instance: dg.DagsterInstance, asset: str) -> dict[str, Any]:
    info = latest_metadata(instance, dg.AssetKey(asset))
    if not info.get("checkpoint_path") and not info.get("model_source"):
        raise dg.Failure(f"{asset} has no materialization with a checkpoint to evaluate")
    return info


def _checkpoint_dir(info: Mapping[str, Any], tracker: Any, scratch: Path) -> Path:
    local = info.get("checkpoint_path")
    if local and Path(str(local)).is_dir():
        return Path(str(local))
    if not info.get("model_source"):
        raise dg.Failure(f"checkpoint {local} is not on this machine and has no registry source")
    return download_checkpoint(str(info["model_source"]), tracker.tracking_uri, scratch)


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
        "The latest DPO (decision) and PRM checkpoints on the test split: decision accuracy vs "
        "the ex-ante best action, well-formed traces, preference accuracy and margin, PRM step "
        "AUC / F1 / faulty step found vs chance, and a backtest against hold, random and the "
        "reference policies. Per-item scores and the backtest under "
        "evaluations/<run id>/; an MLflow run nested under the DPO training run."
    ),
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    storage: StorageResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    if config.gate_score not in GATE_SCORES:
        raise dg.Failure(f"gate_score {config.gate_score!r}: expected one of {GATE_SCORES}")
    store = storage.get()
    tracker = mlflow.tracker()
    dpo = _model_info(context.instance, "dpo_model")
    prm = _model_info(context.instance, "prm_model")
    episodes = read_test_episodes(warehouse.path)
    pairs = read_dataset_split(store, "dpo")
    traces = read_dataset_split(store, "prm")
    if episodes.empty:
        raise dg.Failure("fct_decision_episodes has no test rows to evaluate on")

    import tempfile

    folder = f"{EVALUATIONS_PREFIX}/{context.run_id}"
    with tempfile.TemporaryDirectory(prefix="dd-eval-") as tmp:
        scratch = Path(tmp)
        dpo_dir = _checkpoint_dir(dpo, tracker, scratch / "dpo")
        prm_dir = _checkpoint_dir(prm, tracker, scratch / "prm")
        report = evaluate_checkpoints(
            dpo_dir,
            prm_dir,
            episodes,
            pairs,
            traces,
            max_prompts=config.max_prompts,
            max_pairs=config.max_pairs,
            max_traces=config.max_traces,
            seed=config.seed,
            use_reference=config.use_reference,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
        )
        files = {
            ITEMS_FILE: report.items,
            BACKTEST_FILE: report.backtest,
        }
        if report.preference is not None:
            files[PREFERENCE_FILE] = report.preference.items
        if report.prm is not None:
            files[PRM_FILE] = report.prm.items
        uris = {
            name: write_parquet(store, f"{folder}/{name}", frame) for name, frame in files.items()
        }
        summary = {
            "metrics": _finite(report.metrics),
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
        markdown = scratch / "backtest.md"
        markdown.write_text(report.backtest_markdown() + "\n")
        local_files.append(markdown)
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
        f"{prm.get('model_name')} v{prm.get('model_version')}: decision accuracy "
        f"{report.metrics['decision_accuracy']:.3f} on {len(report.items)} points"
    )
    metadata: dict[str, Any] = {k: _metadata_value(v) for k, v in report.metrics.items()}
    metadata.update(
        {
            "backtest": dg.MetadataValue.md(report.backtest_markdown()),
            "dpo_model_name": str(dpo.get("model_name") or DPO_REGISTERED_MODEL),
            "dpo_model_version": str(dpo.get("model_version") or ""),
            "prm_model_name": str(prm.get("model_name") or PRM_REGISTERED_MODEL),
            "prm_model_version": str(prm.get("model_version") or ""),
            "dpo_checkpoint": str(dpo.get("checkpoint_path") or dpo.get("model_source") or ""),
            "train_data_until": str(dpo.get("train_data_until") or ""),
            "data_until": str(dpo.get("data_until") or ""),
            "prm_checkpoint": str(prm.get("checkpoint_path") or prm.get("model_source") or ""),
            "mlflow_run_id": run_id,
            "evaluation_path": dg.MetadataValue.path(store.uri(folder)),
            "items_path": f"{folder}/{ITEMS_FILE}",
            "backtest_path": f"{folder}/{BACKTEST_FILE}",
            "items_digest": report.digest,
            "n_items": len(report.items),
            "gate_score": config.gate_score,
            "seed": config.seed,
            "max_new_tokens": config.max_new_tokens,
            "batch_size": config.batch_size,
            "files": dg.MetadataValue.json(uris),
        }
    )
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
    outcome = champion_gate(tracker.client, store, evaluation, tracking_uri=tracker.tracking_uri)
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
    reason = (verdict.metadata.get("reason") if verdict.metadata else None) or ""
    context.log.info(f"{CHAMPION_ALIAS}: {versions} (was {previous})")
    return dg.MaterializeResult(
        metadata={
            "dpo_model_name": str(dpo_name),
            "dpo_champion_version": str(dpo_version),
            "prm_model_name": str(evaluation.get("prm_model_name") or ""),
            "prm_champion_version": str(evaluation.get("prm_model_version") or ""),
            "previous_champions": dg.MetadataValue.json(previous),
            "gate_reason": str(_plain(reason)),
            "evaluation_run_id": str(evaluation["dagster_run_id"]),
            # The training snapshot feature_drift measures against (end of the train data).
            "snapshot_until": str(evaluation.get("train_data_until") or ""),
            # The newest decision its dataset held: later mature episodes are new data.
            "data_until": str(evaluation.get("data_until") or ""),
        }
    )


evaluation_assets = [model_evaluation, champion_model]
evaluation_checks = [beats_champion]
