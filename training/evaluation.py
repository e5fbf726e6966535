"""Model-agnostic evaluation of decision models, preference models and process reward models.

Every metric takes the model as a plain callable, so it runs (and is tested) without a model:

- ``generate(prompts) -> completions``: the policy's completion text for each prompt;
- ``logp(prompts, completions) -> log-probs``: the summed log-probability of each completion
  given its prompt;
- ``score_steps(prompt, steps) -> scores``: a PRM's probability that each step is correct.

A completion is the reasoning, one step per line, and on its last line the decision, in the
grammar of the episode contract (``assets/policies.py``, ``dbt_project/macros/reasoning.sql``)::

    20-bar momentum is +1.20 sigma, above the +1.00 sigma entry band: the trend is up.
    buy 0.5000 of capital                  (or "sell 0.2500 of capital", "hold: no trade")

The inputs are the marts' frames: ``fct_decision_episodes`` rows for :func:`decision_metrics`,
``ds_dpo`` rows for :func:`preference_metrics`, ``ds_prm`` rows for :func:`prm_metrics`. Each
metric is computed on one split (``test`` by default; ``split=None`` takes every row). Nothing
here imports dagster or mlflow: the results' ``as_dict()`` give flat floats to log anywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

ACTIONS: tuple[str, ...] = ("buy", "sell", "hold")

# "buy 0.5000 of capital" / "sell .25 of capital" / "hold: no trade" (case-insensitive, the
# line stripped). The size is a plain decimal; a size outside [0, 1] is not a decision.
_TRADE = re.compile(r"(buy|sell)\s+(\d+(?:\.\d*)?|\.\d+)\s+of\s+capital", re.IGNORECASE)
_HOLD = re.compile(r"hold\s*:\s*no\s+trade", re.IGNORECASE)


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedDecision:
    """The decision at the end of a completion.

    action: ``buy`` / ``sell`` / ``hold``.
    size: fraction of capital in [0, 1]; 0.0 for hold.
    n_steps: reasoning lines before the decision line (non-empty lines; the decision line itself
        is not counted).
    well_formed: at least one reasoning step before the decision line.
    """

    action: str
    size: float
    n_steps: int
    well_formed: bool


def parse_decision(text: str | None) -> ParsedDecision | None:
    """Parse the decision of a completion, or None when its last non-empty line is no decision.

    The last non-empty line (stripped) must match, in full, ``buy <size> of capital``,
    ``sell <size> of capital`` or ``hold: no trade`` (case-insensitive) with ``0 <= size <= 1``;
    anything else (no text, an out-of-range size, extra words, a decision followed by more text)
    gives None. A valid decision line with no reasoning line before it parses, with
    ``well_formed=False``.
    """
    if not isinstance(text, str):
        return None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None
    last, steps = lines[-1], lines[:-1]
    if _HOLD.fullmatch(last):
        action, size = "hold", 0.0
    else:
        match = _TRADE.fullmatch(last)
        if match is None:
            return None
        action, size = match.group(1).lower(), float(match.group(2))
        if not 0.0 <= size <= 1.0:
            return None
    return ParsedDecision(action, size, len(steps), len(steps) >= 1)


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


# ---------------------------------------------------------------- decisions


@dataclass
class DecisionMetrics:
    """Decisions of a policy model on one split's decision points.

    n: decision points (unique prompts).
    n_scored: decision points with a target (``best_action_ex_ante`` not null).
    accuracy: share of scored points whose parsed action equals the ex-ante best action; an
        unparseable completion counts as wrong.
    well_formed: share of completions that parse with at least one reasoning step.
    parsed: share of completions whose last line is a valid decision (well-formed or not).
    action_distribution: share of each parsed action over n, plus ``invalid`` (no decision).
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
    parsed: float
    action_distribution: dict[str, float]
    majority_accuracy: float
    items: pd.DataFrame = field(repr=False)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        flat = {
            "n": float(self.n),
            "n_scored": float(self.n_scored),
            "accuracy": self.accuracy,
            "well_formed": self.well_formed,
            "parsed": self.parsed,
            "majority_accuracy": self.majority_accuracy,
        }
        flat.update({f"action_{k}": v for k, v in self.action_distribution.items()})
        return {f"{prefix}{k}": v for k, v in flat.items()}


def decision_metrics(
    episodes: pd.DataFrame,
    generate: Callable[[list[str]], list[str]],
    *,
    split: str | None = "test",
    batch_size: int | None = None,
) -> DecisionMetrics:
    """Generate a decision for every decision point of a split and score it.

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
                "well_formed": bool(parsed and parsed.well_formed),
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
        parsed=_nan_if_empty(items["action"].notna().to_numpy(dtype=float)),
        action_distribution=distribution,
        majority_accuracy=majority,
        items=items,
    )


# ---------------------------------------------------------------- preferences


@dataclass
class PreferenceMetrics:
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

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        flat = {"n": float(self.n), "accuracy": self.accuracy, "mean_margin": self.mean_margin}
        return {f"{prefix}{k}": v for k, v in flat.items()}


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
class PrmMetrics:
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

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        flat = {
            "n_traces": float(self.n_traces),
            "n_steps": float(self.n_steps),
            "auc": self.auc,
            "f1": self.f1,
            "f1_faulty": self.f1_faulty,
            "n_perturbed": float(self.n_perturbed),
            "faulty_step_found": self.faulty_step_found,
            "faulty_step_chance": self.faulty_step_chance,
        }
        return {f"{prefix}{k}": v for k, v in flat.items()}


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
