"""One evaluation of a decision model, a preference score and a PRM on the test split, from
plain callables (fakes in tests, loaded checkpoints in :func:`evaluate_checkpoints`).

The decision items are every test decision point of ``fct_decision_episodes`` (mature, with
realized counterfactual rewards: the points the backtest can price), one row per unique
prompt, the target its ``target_action`` (or, in marts without it, ``best_action_ex_ante``):

- **likelihood scores** of every item (``action_probs(prompts) -> p_buy / p_sell / p_hold``,
  the likelihood scorer of ``training.scoring``): log p(target), Brier, argmax accuracy;
- **baselines** on the same items (``training.baselines.baselines_table``): the untrained base
  model (``base_action_probs``), train-majority, always buy / sell / hold, random, every
  reference policy and the probe, each with the paired bootstrap of the model's log p(target)
  against it;
- **format**: greedy generations on up to ``max_format_prompts`` items (a seeded sample), read
  with the one decision-line parser; the budget fits the longest completion of the data;
- **backtest** of the argmax action at unit size against hold, random and the policies;
- **preferences** (``ds_dpo`` pairs) and **PRM** step metrics per kind next to the kind-only and
  exact-check baselines, when their callables and rows are given.

The per-item frame (:data:`ITEM_COLUMNS`) is what the gate pairs (``training.promotion``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.backtest import backtest
from training.baselines import (
    STEP_COLUMNS,
    baselines_table,
    prior_probabilities,
    prm_baselines,
    table_markdown,
)
from training.decision_line import ACTIONS, parse_decision
from training.metrics import (
    PROBABILITY_COLUMNS,
    DecisionMetrics,
    PreferenceMetrics,
    PrmMetrics,
    choice_scores,
    choice_summary,
    decision_metrics,
    preference_metrics,
    prm_metrics,
)

# The decision target of an episode: target_action where the marts have it (a function of the
# point-in-time evidence the prompt shows), else the ex-ante best action.
TARGETS = ("target_action", "best_action_ex_ante")
POINT_COLUMNS: tuple[str, ...] = (
    "item_id",
    "prompt",
    "target",
    "symbol",
    "decision_ts",
    "cf_reward_buy",
    "cf_reward_sell",
    "cf_reward_hold",
)
ITEM_COLUMNS: tuple[str, ...] = (
    *POINT_COLUMNS,
    *PROBABILITY_COLUMNS,
    "action_mass",
    "logp_target",
    "brier",
    "correct",
    "action",
    "size",
    "reward",
    "completion",
    "well_formed",
)
# Backtest strategies and metrics copied into the flat metrics.
BACKTEST_HEADLINE = ("total_return", "mean_reward", "sharpe", "max_drawdown", "hit_rate")
ActionProbs = Callable[[list[str]], pd.DataFrame]


# ---------------------------------------------------------------- items


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


def on_split(frame: pd.DataFrame, split: str | None) -> pd.DataFrame:
    if split is None or "split" not in frame.columns:
        return frame
    return frame[frame["split"] == split]


def _mature(frame: pd.DataFrame) -> pd.DataFrame:
    if "is_mature" in frame.columns:
        frame = frame[frame["is_mature"].fillna(False).astype(bool)]
    return frame


def item_id_of(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:24]


def _target(value: Any) -> str | None:
    return value if isinstance(value, str) and value in ACTIONS else None


def target_column(episodes: pd.DataFrame, target: str | None = None) -> str | None:
    """``target`` when given, else the first of :data:`TARGETS` the episodes have."""
    if target is not None:
        return target
    return next((c for c in TARGETS if c in episodes.columns), None)


def decision_items(
    episodes: pd.DataFrame, *, split: str | None = "test", target: str | None = None
) -> pd.DataFrame:
    """The decision points of a split: one row per unique prompt of its mature episodes with
    realized counterfactual rewards. Columns :data:`POINT_COLUMNS`; ``item_id`` is the
    episode's ``decision_point_id`` where present, else a hash of the prompt; ``target`` the
    ``target`` column (:func:`target_column`; None when it is not an action). Sorted by
    decision_ts, symbol, item_id."""
    target = target_column(episodes, target)
    rows = _mature(on_split(episodes, split)).dropna(subset=["cf_reward_buy", "cf_reward_sell"])
    points = rows.drop_duplicates("prompt").copy()
    fallback = points["prompt"].map(item_id_of)
    if "decision_point_id" in points.columns:
        ids = points["decision_point_id"].astype(object)
        points["item_id"] = ids.where(ids.notna(), fallback).astype(str)
    else:
        points["item_id"] = fallback
    points["target"] = points[target].map(_target) if target in points.columns else None
    points["cf_reward_hold"] = (
        points["cf_reward_hold"].fillna(0.0) if "cf_reward_hold" in points.columns else 0.0
    )
    points = points.sort_values(["decision_ts", "symbol", "item_id"], kind="stable")
    return points[list(POINT_COLUMNS)].reset_index(drop=True)


def labelled_prompts(
    episodes: pd.DataFrame, split: str, *, target: str | None = None
) -> pd.DataFrame:
    """prompt, target of a split's mature decision points (one row per prompt; what the
    train-majority forecast and the probe fit on)."""
    target = target_column(episodes, target)
    rows = _mature(on_split(episodes, split)).drop_duplicates("prompt")
    targets = rows[target].map(_target) if target in rows.columns else None
    return pd.DataFrame({"prompt": rows["prompt"].to_numpy(), "target": targets})


def items_digest(points: pd.DataFrame, settings: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of what a model's per-item scores depend on besides the model: the items (id,
    prompt, target, realized rewards) in item order and the scoring settings. Two evaluations
    with the same digest scored the same model the same way."""
    frame = points.sort_values("item_id", kind="stable")
    payload = {
        "items": [
            [
                str(row.item_id),
                str(row.prompt),
                _target(row.target),
                *(round(float(getattr(row, c)), 12) for c in ("cf_reward_buy", "cf_reward_sell")),
                round(float(row.cf_reward_hold), 12),
            ]
            for row in frame.itertuples(index=False)
        ],
        "settings": dict(sorted((settings or {}).items())),
    }
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


def _unit_rewards(points: pd.DataFrame, actions: np.ndarray) -> np.ndarray:
    return np.select(
        [actions == "buy", actions == "sell"],
        [points["cf_reward_buy"].to_numpy(float), points["cf_reward_sell"].to_numpy(float)],
        default=points["cf_reward_hold"].to_numpy(float),
    )


def score_items(points: pd.DataFrame, action_probs: ActionProbs) -> pd.DataFrame:
    """The likelihood scores of every point: :data:`ITEM_COLUMNS` (the generation columns
    empty). ``action`` is the argmax action, ``size`` 1 for a buy or sell, ``reward`` its
    realized unit reward (``cf_reward_<action>``)."""
    probs = action_probs(points["prompt"].tolist()).reset_index(drop=True)
    if len(probs) != len(points):
        raise ValueError(f"action_probs returned {len(probs)} rows for {len(points)} prompts")
    scores = choice_scores(probs, points["target"].tolist())
    items = points.reset_index(drop=True).copy()
    for column in (*PROBABILITY_COLUMNS, "logp_target", "brier", "correct"):
        items[column] = scores[column].to_numpy()
    items["action_mass"] = (
        probs["action_mass"].to_numpy(float) if "action_mass" in probs.columns else math.nan
    )
    p = scores[list(PROBABILITY_COLUMNS)].to_numpy()
    actions = np.asarray(ACTIONS, dtype=object)[p.argmax(axis=1)] if len(p) else np.array([])
    items["action"] = actions
    items["size"] = np.where(actions == "hold", 0.0, 1.0)
    items["reward"] = _unit_rewards(items, actions) * (actions != "hold")
    items["completion"] = None
    items["well_formed"] = np.nan
    return items[list(ITEM_COLUMNS)]


# ---------------------------------------------------------------- PRM steps


def prm_steps(traces: pd.DataFrame, step_info: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per step of ``ds_prm`` traces (:data:`training.baselines.STEP_COLUMNS` plus
    ``split``): the hard label, the trace's perturbation, and the step's ``kind`` and
    ``verified`` (exact check) from ``step_info`` (fct_step_labels rows: trace_id, step_index,
    kind, verified). Without it, a step is ``decision`` when it parses as a decision line and
    ``unknown`` otherwise, and nothing is verified."""
    rows = []
    for trace in traces.itertuples(index=False):
        perturbed = bool(getattr(trace, "is_perturbed", False))
        faulty = getattr(trace, "faulty_step_index", None)
        faulty = int(faulty) if perturbed and faulty is not None and not pd.isna(faulty) else None
        for index, (text, label) in enumerate(zip(trace.completions, trace.labels, strict=True)):
            rows.append(
                {
                    "trace_id": str(getattr(trace, "trace_id", trace.prompt)),
                    "step_index": index + 1,
                    "kind": "decision" if parse_decision(str(text)) else "unknown",
                    "verified": None,
                    "label": bool(label),
                    "is_perturbed": perturbed,
                    "faulty_step_index": faulty,
                    "split": getattr(trace, "split", None),
                }
            )
    steps = pd.DataFrame(rows, columns=[*STEP_COLUMNS, "split"])
    if step_info is not None and len(steps):
        info = step_info[["trace_id", "step_index", "kind", "verified"]].copy()
        info["trace_id"] = info["trace_id"].astype(str)
        info["step_index"] = info["step_index"].astype(int)
        merged = steps.drop(columns=["kind", "verified"]).merge(
            info, on=["trace_id", "step_index"], how="left", validate="many_to_one"
        )
        merged["kind"] = merged["kind"].fillna(steps["kind"])
        steps = merged[[*STEP_COLUMNS, "split"]]
    return steps


PAIR_COLUMNS: tuple[str, ...] = ("name", "pairs", "accuracy", "delta", "ci_low", "ci_high")


def decision_pair_table(
    pairs: pd.DataFrame,
    items: pd.DataFrame,
    models: Mapping[str, pd.DataFrame],
    *,
    reference: str = "model",
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """How each model ranks the decisions of every preference pair whose prompt is an item.

    A pair is won when the model gives its chosen action a higher probability than its
    rejected one at the pair's prompt (the likelihood scorer's p(action): the decision tokens,
    reference-free, so the same score for every model; a tie loses). The probabilities are the
    ones the decision table scored, so the pairs cost no extra forward pass and all of them are
    used. ``delta``: the reference's accuracy minus the row's, with the paired bootstrap's 95%
    interval (``ci_low`` > 0: the reference ranks the pairs better beyond noise).

    pairs: ``prompt``, ``chosen_action``, ``rejected_action``. models: name -> per-item
    :data:`PROBABILITY_COLUMNS` in the items' order (a constant row, e.g. train-majority, too).
    """
    from training.promotion import paired_bootstrap

    at = pd.Series(np.arange(len(items)), index=items["prompt"].to_numpy())
    known = pairs[pairs["prompt"].isin(at.index)]
    # dtype int: an empty selection would otherwise be an object array, not an index.
    rows = at.loc[known["prompt"]].to_numpy(dtype=int)
    chosen = known["chosen_action"].map(ACTIONS.index).to_numpy(dtype=int)
    rejected = known["rejected_action"].map(ACTIONS.index).to_numpy(dtype=int)
    won = {}
    for name, probs in models.items():
        values = probs[list(PROBABILITY_COLUMNS)].to_numpy(dtype=float)[rows]
        picked = np.arange(len(rows))
        won[name] = (values[picked, chosen] > values[picked, rejected]).astype(float)
    table = []
    for name, wins in won.items():
        row = {
            "name": name,
            "pairs": len(wins),
            "accuracy": float(wins.mean()) if len(wins) else math.nan,
        }
        if name != reference and reference in won and len(wins):
            test = paired_bootstrap(won[reference], wins, n_resamples=n_resamples, seed=seed)
            row.update(delta=test.mean_diff, ci_low=test.ci_low, ci_high=test.ci_high)
        table.append(row)
    return pd.DataFrame(table, columns=list(PAIR_COLUMNS))


# ---------------------------------------------------------------- the report


@dataclass
class EvaluationReport:
    """Everything one evaluation measured.

    metrics: flat floats (``decision_*`` likelihood scores and format, ``base_*``,
        ``baseline_<name>_<metric>``, ``preference_*``, ``prm_*``, ``backtest_<strategy>_*``),
        ready for MLflow and Dagster metadata.
    items: per decision point (:data:`ITEM_COLUMNS`), what the gate pairs.
    baselines: the model, the base model and every baseline (``baselines_table``).
    prm_baselines: the PRM's step metrics per kind next to the kind-only and exact-check ones.
    backtest: one row per strategy (``training.backtest.SUMMARY_COLUMNS``).
    digest: :func:`items_digest` of the items and scoring settings.
    """

    metrics: dict[str, float]
    items: pd.DataFrame = field(repr=False)
    baselines: pd.DataFrame = field(repr=False)
    backtest: pd.DataFrame = field(repr=False)
    decision_format: DecisionMetrics | None = field(default=None, repr=False)
    preference: PreferenceMetrics | None = field(default=None, repr=False)
    prm: PrmMetrics | None = field(default=None, repr=False)
    prm_baselines: pd.DataFrame | None = field(default=None, repr=False)
    pair_table: pd.DataFrame | None = field(default=None, repr=False)
    digest: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        """The baselines table, and the PRM table when there is one, as Markdown."""
        parts = ["Decisions (log p(target), Brier, accuracy):", table_markdown(self.baselines)]
        if self.pair_table is not None and len(self.pair_table):
            parts += [
                "",
                "Preference pairs (p(chosen action) > p(rejected action), every test pair):",
                table_markdown(self.pair_table),
            ]
        if self.prm_baselines is not None:
            parts += ["", "PRM steps (ROC AUC):", table_markdown(self.prm_baselines)]
        return "\n".join(parts)


def metric_name(text: str) -> str:
    """A name MLflow accepts (alphanumerics, _ - . / and space): other characters become _."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", text)


def _flat_table(table: pd.DataFrame, prefix: str, columns: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in table.to_dict("records"):
        for column in columns:
            value = row.get(column)
            if isinstance(value, int | float | np.floating | np.integer):
                out[metric_name(f"{prefix}{row['name']}_{column}")] = float(value)
    return out


def evaluate_callables(
    episodes: pd.DataFrame,
    pairs: pd.DataFrame | None,
    traces: pd.DataFrame | None,
    *,
    action_probs: ActionProbs,
    base_action_probs: ActionProbs | None = None,
    reference_action_probs: ActionProbs | None = None,
    generate: Callable[[list[str]], list[str]] | None = None,
    max_new_tokens: int | None = None,
    logp: Callable[[list[str], list[str]], list[float]] | None = None,
    ref_logp: Callable[[list[str], list[str]], list[float]] | None = None,
    beta: float | None = None,
    score_traces: Callable[[list[str], list[list[str]]], list[list[float]]] | None = None,
    step_info: pd.DataFrame | None = None,
    train_traces: pd.DataFrame | None = None,
    target: str | None = None,
    max_format_prompts: int | None = 64,
    max_pairs: int | None = None,
    max_traces: int | None = None,
    seed: int = 0,
    split: str | None = "test",
    periods_per_year: float = 252.0,
    settings: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """Evaluate a decision model given as callables (module docstring).

    reference_action_probs: the model it was trained from (a DPO model's SFT reference): a row
        ``sft`` in the decision table and in the pair table, which every model ranks on all the
        split's pairs from the same probabilities (:func:`decision_pair_table`).

    episodes: ``fct_decision_episodes`` rows of every split (train and validation rows fit the
        train-majority forecast and the probe; the ``split`` rows are the items).
    generate, max_new_tokens: the format metric on up to ``max_format_prompts`` items (None:
        all); skipped without ``generate``. ``max_new_tokens`` is only recorded here.
    score_traces(prompts, traces): a batch of traces' step scores; with ``traces`` (``ds_prm``
        rows of the split) the PRM metrics, and with ``train_traces`` (its train rows) and
        ``step_info`` (fct_step_labels' trace_id, step_index, kind, verified) the PRM table.
    """
    points = decision_items(episodes, split=split, target=target)
    items = score_items(points, action_probs)
    summary = choice_summary(items)
    metrics: dict[str, float] = {f"decision_{k}": v for k, v in summary.items()}
    metrics["decision_points"] = float(len(items))
    metrics["decision_action_mass"] = float(items["action_mass"].mean()) if len(items) else math.nan
    for action in ACTIONS:
        metrics[f"decision_argmax_{action}"] = (
            float((items["action"] == action).mean()) if len(items) else math.nan
        )

    models = {"model": items[list(PROBABILITY_COLUMNS)]}
    if base_action_probs is not None:
        base = score_items(points, base_action_probs)
        models["base"] = base[list(PROBABILITY_COLUMNS)]
        metrics.update({f"base_{k}": v for k, v in choice_summary(base).items()})
    if reference_action_probs is not None:
        reference = score_items(points, reference_action_probs)
        models["sft"] = reference[list(PROBABILITY_COLUMNS)]
        metrics.update({f"sft_{k}": v for k, v in choice_summary(reference).items()})
    train_prompts = labelled_prompts(episodes, "train", target=target)
    baselines = baselines_table(
        items,
        train=train_prompts,
        validation=labelled_prompts(episodes, "validation", target=target),
        episodes=_mature(on_split(episodes, split)),
        models=models,
        key="prompt",
        seed=seed,
    )
    metrics.update(
        _flat_table(
            baselines[baselines["name"] != "model"],
            "baseline_",
            ("logp_target", "brier", "accuracy", "delta_logp", "delta_ci_low"),
        )
    )

    decision_format = None
    if generate is not None and len(items):
        sample = sample_rows(items, "item_id", max_format_prompts, seed)
        decision_format = decision_metrics(
            sample.rename(columns={"target": "best_action_ex_ante"}), generate, split=None
        )
        generated = decision_format.items.set_index("prompt")
        picked = items["prompt"].isin(generated.index)
        items.loc[picked, "completion"] = items.loc[picked, "prompt"].map(generated["completion"])
        items.loc[picked, "well_formed"] = (
            items.loc[picked, "prompt"].map(generated["well_formed"]).astype(float)
        )
        metrics.update(
            {
                "format_n": float(decision_format.n),
                "format_well_formed": decision_format.well_formed,
                "format_mean_steps": decision_format.mean_steps,
                "format_generated_accuracy": decision_format.accuracy,
            }
        )
        if max_new_tokens is not None:
            metrics["format_max_new_tokens"] = float(max_new_tokens)

    table = backtest(
        _mature(on_split(episodes, split)),
        items[["prompt", "action", "size"]],
        split=None,
        seed=seed,
        periods_per_year=periods_per_year,
    )
    for row in table.to_dict("records"):
        if row["strategy"] in ("model", "hold", "random"):
            for metric in BACKTEST_HEADLINE:
                metrics[f"backtest_{row['strategy']}_{metric}"] = float(row[metric])

    pair_table = None
    if pairs is not None and {"chosen_action", "rejected_action"} <= set(pairs.columns):
        prior = prior_probabilities([t for t in train_prompts["target"] if isinstance(t, str)])
        majority = pd.DataFrame(np.tile(prior, (len(items), 1)), columns=list(PROBABILITY_COLUMNS))
        pair_table = decision_pair_table(
            on_split(pairs, split), items, {**models, "train-majority": majority}, seed=seed
        )
        metrics.update(_flat_table(pair_table, "pairs_", ("pairs", "accuracy", "delta", "ci_low")))

    preference = None
    if logp is not None and pairs is not None:
        rows = sample_rows(on_split(pairs, split), "prompt", max_pairs, seed).reset_index(drop=True)
        preference = preference_metrics(rows, logp, beta=beta, ref_logp=ref_logp, split=None)
        metrics.update(preference.as_dict("preference_"))
        metrics["preference_implicit_reward"] = float(ref_logp is not None)

    prm, prm_table = None, None
    if score_traces is not None and traces is not None:
        key = "trace_id" if "trace_id" in traces.columns else "prompt"
        rows = sample_rows(on_split(traces, split), key, max_traces, seed).reset_index(drop=True)
        scored = score_traces(
            [str(p) for p in rows["prompt"]], [[str(s) for s in c] for c in rows["completions"]]
        )
        queue: Iterator[list[float]] = iter(scored)
        prm = prm_metrics(rows, lambda _prompt, _steps: next(queue), split=None)
        metrics.update(prm.as_dict("prm_"))
        metrics["prm_faulty_step_lift"] = prm.faulty_step_found - prm.faulty_step_chance
        if train_traces is not None and len(train_traces):
            steps = prm_steps(rows, step_info)
            train_steps = prm_steps(train_traces, step_info)
            flat_scores = [s for trace in prm.items["scores"] for s in trace]
            prm_table = prm_baselines(train_steps, steps, {"prm": flat_scores})
            metrics.update(
                _flat_table(
                    prm_table,
                    "prm_table_",
                    ("auc", "auc_observation", "auc_inference", "auc_decision", "auc_perturbed"),
                )
            )

    run_settings = {"seed": seed, "max_format_prompts": max_format_prompts, **(settings or {})}
    return EvaluationReport(
        metrics=metrics,
        items=items,
        baselines=baselines,
        backtest=table,
        decision_format=decision_format,
        preference=preference,
        prm=prm,
        prm_baselines=prm_table,
        pair_table=pair_table,
        digest=items_digest(points, settings),
        settings=run_settings,
    )


# ---------------------------------------------------------------- checkpoints


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def system_prompt(config: Mapping[str, Any]) -> str | None:
    data = config.get("data") or {}
    return data.get("system_prompt") if isinstance(data, Mapping) else None


def probability_scorer(
    model: Any,
    tokenizer: Any,
    config: Mapping[str, Any],
    *,
    batch_size: int = 8,
    cache: Any = None,
) -> ActionProbs:
    """The likelihood scorer of a loaded model as an ``action_probs`` callable (``cache``: a
    ``training.scoring.BackboneStates`` shared with other models of the same backbone)."""
    from training import scoring

    system = system_prompt(config)

    def action_probs(prompts: list[str]) -> pd.DataFrame:
        return scoring.action_probabilities(
            model, tokenizer, prompts, system=system, batch_size=batch_size, cache=cache
        )

    return action_probs


def score_checkpoint_items(
    checkpoint_dir: str | Path,
    points: pd.DataFrame,
    *,
    batch_size: int = 8,
    device: str | None = None,
) -> pd.DataFrame:
    """Per-item likelihood scores of a checkpoint on given points (e.g. the champion on the
    challenger's items, whose frame has :data:`POINT_COLUMNS`)."""
    from training.checkpoint import load_checkpoint

    model, tokenizer, config = load_checkpoint(checkpoint_dir, device=device or default_device())
    scorer = probability_scorer(model, tokenizer, config, batch_size=batch_size)
    return score_items(points[list(POINT_COLUMNS)], scorer)


def evaluate_checkpoints(
    decision_checkpoint: str | Path,
    prm_checkpoint: str | Path | None,
    episodes: pd.DataFrame,
    pairs: pd.DataFrame | None,
    traces: pd.DataFrame | None,
    *,
    base_model: str | None = None,
    train_traces: pd.DataFrame | None = None,
    step_info: pd.DataFrame | None = None,
    reference_checkpoint: str | Path | None = None,
    use_reference: bool = True,
    max_format_prompts: int | None = 64,
    max_new_tokens: int | None = None,
    max_pairs: int | None = None,
    max_traces: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    periods_per_year: float = 252.0,
    feature_cache: str | Path | None = None,
) -> EvaluationReport:
    """Evaluate a decision (DPO or SFT) checkpoint and a PRM checkpoint on the test split.

    base_model: the untrained base (a ``ModelConfig.name_or_path``: 'tiny', a folder, ...) for
    the baselines table; None: the decision checkpoint's lineage ``base_model`` walked back to a
    model that is not a checkpoint folder, else no base row. max_new_tokens: the format check's
    budget; None: :func:`training.scoring.generation_budget` of the episodes' completions. The
    preference score is DPO's implicit reward against ``reference_checkpoint`` (default: the
    ``sft_checkpoint`` of the decision checkpoint's config when that folder exists;
    ``use_reference=False``: plain log-probabilities). feature_cache: the folder of backbone
    states the head-mode stages filled (``HeadConfig.feature_cache``): a test split scored once
    is not run through the same backbone again.
    """
    from training import prm, scoring
    from training.checkpoint import load_checkpoint

    device = device or default_device()
    model, tokenizer, config = load_checkpoint(decision_checkpoint, device=device)
    system = system_prompt(config)
    # Head-mode checkpoints share their backbone with their reference and the truncated base:
    # one backbone pass serves all three likelihood scorers.
    states = scoring.BackboneStates(feature_cache)
    if max_new_tokens is None:
        completions = episodes["completion"] if "completion" in episodes.columns else []
        max_new_tokens = scoring.generation_budget(tokenizer, list(completions))

    def generate(prompts: list[str]) -> list[str]:
        return scoring.generate(
            model,
            tokenizer,
            prompts,
            system=system,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )

    def logp(prompts: list[str], completions: list[str]) -> list[float]:
        return scoring.completion_logprobs(
            model, tokenizer, prompts, completions, system=system, batch_size=batch_size
        )

    base_probs = None
    base_name = untrained_base(decision_checkpoint) if base_model is None else base_model
    if base_name:
        from training.config import ModelConfig
        from training.models import load_model

        seed_of_base = int((config.get("train") or {}).get("seed", 42))
        try:
            base, base_tokenizer = load_model(
                ModelConfig(
                    name_or_path=base_name,
                    num_hidden_layers=base_layers(decision_checkpoint)
                    if base_model is None
                    else None,
                ),
                seed=seed_of_base,
            )
        except (OSError, ValueError) as error:  # not on this machine: no base row
            base_name = f"unavailable ({base_name}: {error})"[:300]
        else:
            base.to(device).eval()
            base_probs = probability_scorer(
                base, base_tokenizer, config, batch_size=batch_size, cache=states
            )

    ref_logp, beta, ref_probs = None, None, None
    if use_reference:
        if reference_checkpoint is None:
            candidate = config.get("sft_checkpoint")
            if candidate and Path(candidate).is_dir():
                reference_checkpoint = candidate
        if reference_checkpoint is not None:
            ref_model, ref_tokenizer, _ = load_checkpoint(reference_checkpoint, device=device)
            beta = float(config.get("beta") or 0.1)
            ref_probs = probability_scorer(
                ref_model, ref_tokenizer, config, batch_size=batch_size, cache=states
            )

            def ref_logp(prompts: list[str], completions: list[str]) -> list[float]:
                return scoring.completion_logprobs(
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
                system=system_prompt(prm_config),
                batch_size=batch_size,
            )

    report = evaluate_callables(
        episodes,
        pairs,
        traces,
        action_probs=probability_scorer(
            model, tokenizer, config, batch_size=batch_size, cache=states
        ),
        base_action_probs=base_probs,
        reference_action_probs=ref_probs,
        generate=generate,
        max_new_tokens=max_new_tokens,
        logp=logp,
        ref_logp=ref_logp,
        beta=beta,
        score_traces=score_traces,
        step_info=step_info,
        train_traces=train_traces,
        max_format_prompts=max_format_prompts,
        max_pairs=max_pairs,
        max_traces=max_traces,
        seed=seed,
        periods_per_year=periods_per_year,
        settings={"scorer": "likelihood"},
    )
    report.settings["base_model"] = base_name or ""
    # Measurements of this run (MLflow metrics and metadata), not settings.
    report.metrics["backbone_states_computed"] = float(states.misses)
    report.metrics["backbone_states_reused"] = float(states.hits)
    report.metrics["backbone_states_saved"] = float(states.save())
    return report


def base_layers(checkpoint_dir: str | Path, max_depth: int = 5) -> int | None:
    """The ``model.num_hidden_layers`` the first stage of a checkpoint's lineage kept of its
    base (the untrained model of the baselines table is that truncated base); None: all."""
    from training.checkpoint import read_metadata

    current = Path(checkpoint_dir)
    for _ in range(max_depth):
        config, lineage = read_metadata(current)
        parent = Path(str(lineage.get("base_model") or "")).expanduser()
        if lineage.get("base_model") and (parent / "lineage.json").is_file():
            current = parent
            continue
        return (config.get("model") or {}).get("num_hidden_layers")
    return None


def untrained_base(checkpoint_dir: str | Path, max_depth: int = 5) -> str | None:
    """The base model a checkpoint was trained from: its lineage ``base_model``, followed back
    through checkpoint folders (DPO → SFT → base); None when unknown or when it names a folder
    that is not on this machine."""
    from training.checkpoint import read_metadata

    current = Path(checkpoint_dir)
    for _ in range(max_depth):
        _, lineage = read_metadata(current)
        base = lineage.get("base_model")
        if not base:
            return None
        folder = Path(str(base)).expanduser()
        if (folder / "lineage.json").is_file():
            current = folder
            continue
        looks_like_path = str(base).startswith((".", "/", "~")) or str(base).count("/") > 1
        return None if looks_like_path and not folder.exists() else str(base)
    return None
