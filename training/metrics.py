"""Pure metrics of decision, preference and process reward models (no torch, no model).

Every metric takes what a model produced (per-item action probabilities, generated text, or a
model as a plain callable), so it runs and is tested without a model:

- :func:`choice_scores` / :func:`choice_summary`: per-item p(buy / sell / hold) (the likelihood
  scorer's output, ``training.scoring``, or a baseline's, ``training.baselines``) against the
  target action: log p(target), Brier score, argmax accuracy;
- :func:`decision_metrics`: generated completions (``generate(prompts) -> completions``) read
  with the one decision-line parser (``training.decision_line``): the format metric;
- :func:`preference_metrics`: ``logp(prompts, completions) -> log-probs`` on preference pairs;
- :func:`prm_metrics`, :func:`step_metrics`, :func:`step_kind_metrics`: step scores of a PRM
  against step labels, pooled, per step kind and on perturbed traces.

The inputs are the marts' frames: ``fct_decision_episodes`` rows for :func:`decision_metrics`,
``ds_dpo`` rows for :func:`preference_metrics`, ``ds_prm`` rows for :func:`prm_metrics`. Each
metric is computed on one split (``test`` by default; ``split=None`` takes every row). Nothing
here imports dagster, mlflow or torch: the results' ``as_dict()`` give flat floats to log
anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd

from training.decision_line import ACTIONS, parse_decision

# ---------------------------------------------------------------- helpers


def _on_split(frame: pd.DataFrame, split: str | None) -> pd.DataFrame:
    if split is None or "split" not in frame.columns:
        return frame
    return frame[frame["split"] == split]


def _batched(
    call: Callable[..., Sequence[Any]], columns: Sequence[list[Any]], batch_size: int | None
) -> list[Any]:
    """Call ``call(*columns)`` in batches of ``batch_size`` rows and check the output length."""
    n = len(columns[0]) if columns else 0
    step = max(batch_size or n, 1)
    out: list[Any] = []
    for start in range(0, n, step):
        chunk = [list(column[start : start + step]) for column in columns]
        result = list(call(*chunk))
        if len(result) != len(chunk[0]):
            raise ValueError(f"the model callable returned {len(result)} items for {len(chunk[0])}")
        out.extend(result)
    return out


def _nan_if_empty(values: Sequence[float] | np.ndarray) -> float:
    array = np.asarray(values, dtype=float)
    return float(array.mean()) if array.size else math.nan


# ---------------------------------------------------------------- action probabilities

PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{a}" for a in ACTIONS)
CHOICE_COLUMNS: tuple[str, ...] = (
    *PROBABILITY_COLUMNS,
    "target",
    "logp_target",
    "brier",
    "correct",
)
# Probabilities are floored here before the log: a confident miss costs at most ~20.7 nats.
PROBABILITY_FLOOR = 1e-9


def choice_scores(
    probabilities: np.ndarray | pd.DataFrame | Sequence[Sequence[float]],
    targets: Sequence[str | None],
) -> pd.DataFrame:
    """Per-item scores of p(buy), p(sell), p(hold) against the target action.

    ``probabilities``: one row per item, columns in :data:`ACTIONS` order (or a frame with
    :data:`PROBABILITY_COLUMNS`); each row is renormalised to sum to 1. ``targets``: the target
    action per item (None or NaN: not scored). Returns :data:`CHOICE_COLUMNS`, one row per item:

    logp_target  natural log of p(target) (floored at :data:`PROBABILITY_FLOOR`); higher is better
    brier        multi-class Brier score, sum over the actions of (p - 1[action = target])^2, in
                 [0, 2]; lower is better (uniform: 2/3)
    correct      argmax accuracy; a tie between k actions that include the target counts 1/k (so a
                 uniform forecast scores exactly 1/3, the chance of picking it at random)
    """
    if isinstance(probabilities, pd.DataFrame):
        probabilities = probabilities[list(PROBABILITY_COLUMNS)].to_numpy(dtype=float)
    p = np.asarray(probabilities, dtype=float).reshape(-1, len(ACTIONS))
    if len(p) != len(targets):
        raise ValueError(f"{len(p)} probability rows for {len(targets)} targets")
    if not np.isfinite(p).all() or (p < 0).any() or (p.sum(axis=1) <= 0).any():
        raise ValueError("probabilities must be finite, non-negative and not all zero")
    p = p / p.sum(axis=1, keepdims=True)
    target = [t if isinstance(t, str) else None for t in targets]
    unknown = {t for t in target if t is not None} - set(ACTIONS)
    if unknown:
        raise ValueError(f"targets {sorted(unknown)}: expected one of {ACTIONS}")
    index = np.array([ACTIONS.index(t) if t is not None else -1 for t in target])
    scored = index >= 0
    onehot = np.zeros_like(p)
    onehot[np.flatnonzero(scored), index[scored]] = 1.0
    picked = p[np.arange(len(p)), np.where(scored, index, 0)]
    is_max = np.isclose(p, p.max(axis=1, keepdims=True), rtol=0.0, atol=1e-12)
    on_target = is_max[np.arange(len(p)), np.where(scored, index, 0)]
    frame = pd.DataFrame(p, columns=list(PROBABILITY_COLUMNS))
    frame["target"] = target
    frame["logp_target"] = np.where(scored, np.log(np.maximum(picked, PROBABILITY_FLOOR)), np.nan)
    frame["brier"] = np.where(scored, ((p - onehot) ** 2).sum(axis=1), np.nan)
    frame["correct"] = np.where(scored, on_target / is_max.sum(axis=1), np.nan)
    return frame


def choice_summary(scores: pd.DataFrame) -> dict[str, float]:
    """Means of :func:`choice_scores` over the scored items: n, logp_target, brier, accuracy."""
    scored = scores.dropna(subset=["logp_target"])
    return {
        "n": float(len(scored)),
        "logp_target": _nan_if_empty(scored["logp_target"].to_numpy(float)),
        "brier": _nan_if_empty(scored["brier"].to_numpy(float)),
        "accuracy": _nan_if_empty(scored["correct"].to_numpy(float)),
    }


# ---------------------------------------------------------------- decisions


class _FlatMetrics:
    """``as_dict(prefix)``: a result's metrics as flat floats to log: its number fields (ints as
    floats) in field order, then the entries of its dict fields keyed ``<flat_prefix><key>``
    (the field's metadata); the items frame is left out."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        scalars: dict[str, float] = {}
        entries: dict[str, float] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                entries.update({f"{f.metadata['flat_prefix']}{k}": v for k, v in value.items()})
            elif isinstance(value, Real):
                scalars[f.name] = float(value)
        return {f"{prefix}{k}": v for k, v in {**scalars, **entries}.items()}


@dataclass
class DecisionMetrics(_FlatMetrics):
    """Generated decisions of a policy model on one split's decision points: the format metric.

    Decision quality is measured by likelihood (:func:`choice_scores`); generation only tells
    whether the model writes its decision in the contract's form.

    n: decision points (unique prompts).
    n_scored: decision points with a target (``best_action_ex_ante`` not null).
    well_formed: share of completions that open with a valid decision line
        (:func:`training.decision_line.parse_decision`).
    accuracy: share of scored points whose generated action equals the target; a completion
        that is not well-formed counts as wrong.
    mean_steps: mean number of reasoning lines after the decision line, over well-formed ones.
    action_distribution: share of each generated action over n, plus ``invalid`` (no decision).
    majority_accuracy: accuracy of always answering the most frequent target (context for
        ``accuracy``).
    items: one row per decision point: prompt, target, completion, action (None when invalid),
        size, n_steps, well_formed, correct (NaN without a target). Its prompt / action / size
        columns are the ``decisions`` input of :func:`training.backtest.backtest`.
    """

    n: int
    n_scored: int
    accuracy: float
    well_formed: float
    mean_steps: float
    action_distribution: dict[str, float] = field(metadata={"flat_prefix": "action_"})
    majority_accuracy: float
    items: pd.DataFrame = field(repr=False)


def decision_metrics(
    episodes: pd.DataFrame,
    generate: Callable[[list[str]], list[str]],
    *,
    split: str | None = "test",
    batch_size: int | None = None,
) -> DecisionMetrics:
    """Generate a decision for every decision point of a split and read it (format metric).

    A decision point is a unique ``prompt`` (the prompt renders the point's symbol, interval,
    time and features, and is the same for every policy's episode there); its target is the
    point's ``best_action_ex_ante`` (the argmax of the counterfactual environment's ex-ante
    expected rewards: what a good decision is, independently of the realized outcome). Rows with
    ``is_mature`` false are skipped where the column exists. ``generate`` is called with the
    prompts in their order of first appearance, in batches of ``batch_size`` (all at once when
    None).
    """
    rows = _on_split(episodes, split)
    if "is_mature" in rows.columns:
        rows = rows[rows["is_mature"].fillna(False).astype(bool)]
    points = rows.drop_duplicates("prompt")[["prompt", "best_action_ex_ante"]]
    prompts = points["prompt"].tolist()
    targets = [t if isinstance(t, str) else None for t in points["best_action_ex_ante"]]
    completions = _batched(generate, [prompts], batch_size)

    records = []
    for prompt, target, completion in zip(prompts, targets, completions, strict=True):
        parsed = parse_decision(completion)
        action = parsed.action if parsed else None
        records.append(
            {
                "prompt": prompt,
                "target": target,
                "completion": completion,
                "action": action,
                "size": parsed.size if parsed else math.nan,
                "n_steps": parsed.n_steps if parsed else 0,
                "well_formed": parsed is not None,
                "correct": math.nan if target is None else float(action == target),
            }
        )
    columns = ["prompt", "target", "completion", "action", "size", "n_steps", "well_formed"]
    items = pd.DataFrame.from_records(records, columns=[*columns, "correct"])
    n = len(items)
    scored = items.dropna(subset=["correct"])
    distribution = {a: float((items["action"] == a).sum()) / n if n else math.nan for a in ACTIONS}
    distribution["invalid"] = float(items["action"].isna().sum()) / n if n else math.nan
    majority = (
        float(scored["target"].value_counts().iloc[0]) / len(scored) if len(scored) else math.nan
    )
    return DecisionMetrics(
        n=n,
        n_scored=len(scored),
        accuracy=_nan_if_empty(scored["correct"].to_numpy()),
        well_formed=_nan_if_empty(items["well_formed"].to_numpy(dtype=float)),
        mean_steps=_nan_if_empty(items.loc[items["well_formed"], "n_steps"].to_numpy(float)),
        action_distribution=distribution,
        majority_accuracy=majority,
        items=items,
    )


# ---------------------------------------------------------------- preferences


@dataclass
class PreferenceMetrics(_FlatMetrics):
    """How a model ranks the chosen and rejected completions of preference pairs.

    n: pairs.
    accuracy: share of pairs whose chosen completion gets the strictly higher score (a tie
        counts as wrong, as TRL's ``rewards/accuracies``).
    mean_margin: mean of ``score(chosen) - score(rejected)``. The score is the summed
        log-probability, minus the reference model's when ``ref_logp`` is given, times ``beta``
        when given: with both, it is DPO's implicit reward and the margin is TRL's
        ``rewards/margins``.
    items: per pair: prompt, score_chosen, score_rejected, margin, correct.
    """

    n: int
    accuracy: float
    mean_margin: float
    items: pd.DataFrame = field(repr=False)


def preference_metrics(
    pairs: pd.DataFrame,
    logp: Callable[[list[str], list[str]], list[float]],
    *,
    beta: float | None = None,
    ref_logp: Callable[[list[str], list[str]], list[float]] | None = None,
    split: str | None = "test",
    batch_size: int | None = None,
) -> PreferenceMetrics:
    """Preference accuracy and mean reward margin of ``ds_dpo`` pairs (prompt, chosen, rejected).

    ``logp(prompts, completions)`` returns the summed log-probability of each completion given
    its prompt; it is called once for the chosen and once for the rejected completions (in
    batches of ``batch_size``), and so is ``ref_logp`` when given.
    """
    rows = _on_split(pairs, split)
    prompts = rows["prompt"].tolist()
    chosen_texts, rejected_texts = rows["chosen"].tolist(), rows["rejected"].tolist()

    def score(completions: list[str]) -> np.ndarray:
        values = np.asarray(_batched(logp, [prompts, completions], batch_size), dtype=float)
        if ref_logp is not None:
            values -= np.asarray(_batched(ref_logp, [prompts, completions], batch_size), float)
        return values * (1.0 if beta is None else beta)

    chosen, rejected = score(chosen_texts), score(rejected_texts)
    margin = chosen - rejected
    correct = (chosen > rejected).astype(float)
    items = pd.DataFrame(
        {
            "prompt": prompts,
            "score_chosen": chosen,
            "score_rejected": rejected,
            "margin": margin,
            "correct": correct,
        }
    )
    return PreferenceMetrics(
        n=len(items),
        accuracy=_nan_if_empty(correct),
        mean_margin=_nan_if_empty(margin),
        items=items,
    )


# ---------------------------------------------------------------- process reward model


def roc_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of ``scores`` for the positive class ``labels == True``, ties counted half.

    This is the Mann-Whitney statistic: ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with
    ``R_pos`` the sum of the positives' mid-ranks (tied scores share their average rank), i.e.
    P(score of a positive > score of a negative) + 0.5 P(tie). NaN when a class is empty.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError("labels and scores differ in length")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_score(labels: Sequence[bool] | np.ndarray, predicted: Sequence[bool] | np.ndarray) -> float:
    """F1 of boolean predictions for the positive class True; NaN when it is neither predicted
    nor present (no positive to find), 0.0 when only one side has positives."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    tp = int((y & p).sum())
    denominator = int(y.sum()) + int(p.sum())
    return math.nan if denominator == 0 else 2 * tp / denominator


@dataclass
class PrmMetrics(_FlatMetrics):
    """A PRM's step scores against the step labels of ``ds_prm`` traces.

    n_traces, n_steps: traces and steps scored.
    auc: step-level ROC AUC of the scores for the hard label (True = correct step), all steps
        of all traces pooled (:func:`roc_auc`, ties counted half).
    f1: F1 of "correct step" (positive class True) predicted as ``score >= threshold``.
    f1_faulty: F1 of "faulty step" (positive class False) predicted as ``score < threshold``;
        the error-finding view, which the majority of correct steps does not flatter.
    n_perturbed: perturbed traces with a known faulty step.
    faulty_step_found: on those, the share where the lowest-scored step is the faulty one; a
        tie for the lowest score between k steps that include the faulty one counts 1/k (the
        chance of picking it at random among them), so a constant scorer scores exactly chance.
    faulty_step_chance: the chance level of that, mean of 1 / n_steps over the same traces.
    items: per trace: prompt, is_perturbed, faulty_step_index, scores, lowest_step (1-based),
        found (NaN for unperturbed traces).
    """

    n_traces: int
    n_steps: int
    auc: float
    f1: float
    f1_faulty: float
    n_perturbed: int
    faulty_step_found: float
    faulty_step_chance: float
    items: pd.DataFrame = field(repr=False)


def _is_set(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def prm_metrics(
    traces: pd.DataFrame,
    score_steps: Callable[[str, list[str]], list[float]],
    *,
    threshold: float = 0.5,
    split: str | None = "test",
) -> PrmMetrics:
    """Score every trace's steps with ``score_steps(prompt, steps)`` and compare with the labels.

    ``traces`` are ``ds_prm`` rows: prompt, completions (the step texts, the decision last),
    labels (hard, one per step), and for perturbed traces ``is_perturbed`` and
    ``faulty_step_index`` (1-based, as ``step_index`` in the marts). ``score_steps`` returns one
    score per step, higher = more likely correct (a probability for ``threshold`` to mean
    anything).
    """
    rows = _on_split(traces, split)
    has_perturbed = "is_perturbed" in rows.columns and "faulty_step_index" in rows.columns
    all_labels: list[bool] = []
    all_scores: list[float] = []
    records = []
    for row in rows.itertuples(index=False):
        steps = [str(step) for step in row.completions]
        labels = [bool(label) for label in row.labels]
        scores = [float(score) for score in score_steps(row.prompt, steps)]
        if not len(steps) == len(labels) == len(scores):
            raise ValueError(
                f"a trace has {len(steps)} steps, {len(labels)} labels and {len(scores)} scores"
            )
        all_labels.extend(labels)
        all_scores.extend(scores)
        perturbed = has_perturbed and bool(row.is_perturbed) and _is_set(row.faulty_step_index)
        faulty = int(row.faulty_step_index) if perturbed else None
        lowest = int(np.argmin(scores)) + 1 if scores else None
        found, chance = math.nan, math.nan
        if faulty is not None and scores:
            minima = np.flatnonzero(np.asarray(scores) == min(scores)) + 1
            found = (1.0 / minima.size) if faulty in minima else 0.0
            chance = 1.0 / len(scores)
        records.append(
            {
                "prompt": row.prompt,
                "is_perturbed": perturbed,
                "faulty_step_index": faulty,
                "scores": scores,
                "lowest_step": lowest,
                "found": found,
                "chance": chance,
            }
        )
    items = pd.DataFrame.from_records(
        records,
        columns=[
            "prompt",
            "is_perturbed",
            "faulty_step_index",
            "scores",
            "lowest_step",
            "found",
            "chance",
        ],
    )
    y = np.asarray(all_labels, dtype=bool)
    s = np.asarray(all_scores, dtype=float)
    perturbed_items = items.dropna(subset=["found"])
    return PrmMetrics(
        n_traces=len(items),
        n_steps=int(y.size),
        auc=roc_auc(y, s),
        f1=f1_score(y, s >= threshold),
        f1_faulty=f1_score(~y, s < threshold),
        n_perturbed=len(perturbed_items),
        faulty_step_found=_nan_if_empty(perturbed_items["found"].to_numpy(dtype=float)),
        faulty_step_chance=_nan_if_empty(perturbed_items["chance"].to_numpy(dtype=float)),
        items=items,
    )


def step_metrics(
    scores: Sequence[Sequence[float]],
    labels: Sequence[Sequence[bool]],
    faulty_steps: Sequence[int | None],
    threshold: float = 0.5,
) -> dict[str, float]:
    """Step-level metrics of PRM scores (probability that a step is correct), as the PRM trainer
    reports them on its evaluation split.

    step_auc                 correct steps ranked above faulty ones (:func:`roc_auc`)
    step_f1                  F1 of "faulty" (the class a PRM exists to find): score < threshold
    step_accuracy            share of steps on the right side of the threshold
    faulty_step_found_rate   perturbed traces whose lowest-scored step is the faulty one
                             (faulty_steps here are 0-based; None for unperturbed traces)
    """
    flat_scores = np.asarray([s for trace in scores for s in trace], dtype=float)
    flat_labels = np.asarray(
        [bool(v) for trace, lab in zip(scores, labels, strict=True) for v in lab[: len(trace)]],
        dtype=bool,
    )
    predicted_faulty = flat_scores < threshold
    found = [
        int(np.argmin(trace)) == faulty
        for trace, faulty in zip(scores, faulty_steps, strict=True)
        if faulty is not None and 0 <= faulty < len(trace)
    ]
    return {
        "step_auc": roc_auc(flat_labels, flat_scores),
        "step_f1": f1_score(~flat_labels, predicted_faulty) if flat_labels.size else math.nan,
        "step_accuracy": _nan_if_empty(predicted_faulty == ~flat_labels),
        "faulty_step_found_rate": _nan_if_empty(np.asarray(found, dtype=float)),
        "n_perturbed_traces": float(len(found)),
        "n_steps": float(flat_scores.size),
    }


STEP_KINDS: tuple[str, ...] = ("observation", "inference", "decision")


def step_kind_metrics(steps: pd.DataFrame, score: str = "score") -> dict[str, float]:
    """A step scorer's metrics pooled, per step kind and on perturbed traces.

    ``steps``: one row per step: trace_id, step_index (1-based), kind, label (hard, True =
    correct), is_perturbed, faulty_step_index (1-based, NaN for unperturbed traces) and the
    ``score`` column (higher = more likely correct).

    auc                 ROC AUC over all steps (:func:`roc_auc`)
    auc_<kind>          within one kind (a scorer that only knows the kind scores 0.5 there)
    auc_perturbed       over the steps of perturbed traces (the faulty step against its
                        trace-mates and the other perturbed traces' steps)
    faulty_step_found   perturbed traces whose lowest-scored step is the faulty one, a tie of k
                        steps that include it counting 1/k; faulty_step_chance: mean 1 / n_steps
    n_steps, n_<kind>   steps scored
    """
    label = steps["label"].astype(bool).to_numpy()
    values = steps[score].to_numpy(dtype=float)
    out: dict[str, float] = {"n_steps": float(len(steps)), "auc": roc_auc(label, values)}
    for kind in STEP_KINDS:
        mask = (steps["kind"] == kind).to_numpy()
        out[f"auc_{kind}"] = roc_auc(label[mask], values[mask])
        out[f"n_{kind}"] = float(mask.sum())
    perturbed = steps["is_perturbed"].fillna(False).astype(bool).to_numpy()
    out["auc_perturbed"] = roc_auc(label[perturbed], values[perturbed])
    found, chance = [], []
    for _, trace in steps[perturbed].groupby("trace_id", sort=False):
        faulty = trace["faulty_step_index"].dropna()
        if faulty.empty:
            continue
        trace_scores = trace[score].to_numpy(dtype=float)
        lowest = trace["step_index"].to_numpy()[np.isclose(trace_scores, trace_scores.min())]
        found.append(1.0 / lowest.size if int(faulty.iloc[0]) in lowest else 0.0)
        chance.append(1.0 / len(trace))
    out["faulty_step_found"] = _nan_if_empty(found)
    out["faulty_step_chance"] = _nan_if_empty(chance)
    return out
