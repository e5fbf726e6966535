"""Is a dataset's decision target learnable from its prompts? Checked before GPUs are spent.

The probe (``training.baselines.Probe``: logistic regression on the prompt's numbers, C picked
by cross-validation on train) and the train-majority forecast (train class frequencies) are both
fitted on the train split and scored on the validation split, item by item:

    metric "accuracy"   d_i = correct_probe_i - correct_majority_i   (argmax accuracy)
    metric "log_loss"   d_i = log p_probe(target_i) - log p_majority(target_i)   (nats)

The check passes when the mean of d is at least ``margin`` and the lower bound of the paired
bootstrap's 95% interval (``training.promotion.paired_bootstrap``) is above 0: the prompts carry
information about the target beyond its base rate, more than noise would show. A target that
is not a function of what the prompt shows (e.g. shuffled labels) fails it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from training.baselines import Probe, prior_probabilities
from training.metrics import choice_scores
from training.promotion import paired_bootstrap

METRICS = ("accuracy", "log_loss")
DEFAULT_METRIC = "accuracy"
DEFAULT_MARGIN = 0.02
MIN_ITEMS = 20


@dataclass(frozen=True)
class LearnabilityResult:
    """passed, the reason in one sentence, and flat metadata (metric, margin, n_train,
    n_validation, probe_C, probe / majority accuracy and log p(target), mean_diff, ci_low,
    ci_high, p_value)."""

    passed: bool
    reason: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _labelled(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    return frame[frame[target].map(lambda t: isinstance(t, str))]


def learnability_check(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    *,
    target: str = "target",
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    n_resamples: int = 2000,
    seed: int = 0,
    min_items: int = MIN_ITEMS,
) -> LearnabilityResult:
    """Probe vs train-majority on the validation split (module docstring).

    train, validation: rows with ``prompt`` and ``target`` (the action; None / NaN rows are
    left out). Fails (with a reason) below ``min_items`` labelled rows in either split.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {METRICS}")
    train, validation = _labelled(train, target), _labelled(validation, target)
    meta: dict[str, Any] = {
        "metric": metric,
        "margin": float(margin),
        "n_train": len(train),
        "n_validation": len(validation),
    }
    if min(len(train), len(validation)) < min_items:
        reason = (
            f"too few labelled rows to judge ({len(train)} train, {len(validation)} "
            f"validation; min_items={min_items})"
        )
        return LearnabilityResult(False, reason, meta)

    probe = Probe(seed=seed).fit(train["prompt"].tolist(), train[target].tolist())
    targets = validation[target].tolist()
    probe_scores = choice_scores(probe.predict_proba(validation["prompt"].tolist()), targets)
    prior = prior_probabilities(train[target].tolist())
    majority_scores = choice_scores(np.tile(prior, (len(validation), 1)), targets)
    column = "correct" if metric == "accuracy" else "logp_target"
    result = paired_bootstrap(
        probe_scores[column].to_numpy(float),
        majority_scores[column].to_numpy(float),
        n_resamples=n_resamples,
        seed=seed,
    )
    meta.update(
        probe_C=probe.C,
        probe_accuracy=float(probe_scores["correct"].mean()),
        majority_accuracy=float(majority_scores["correct"].mean()),
        probe_logp_target=float(probe_scores["logp_target"].mean()),
        majority_logp_target=float(majority_scores["logp_target"].mean()),
        mean_diff=result.mean_diff,
        ci_low=result.ci_low,
        ci_high=result.ci_high,
        p_value=result.p_value,
    )
    passed = result.mean_diff >= margin and result.ci_low > 0
    verdict = "learnable" if passed else "not learnable"
    reason = (
        f"{verdict}: probe - train-majority {metric} on validation {result.mean_diff:+.4f} "
        f"(95% CI [{result.ci_low:+.4f}, {result.ci_high:+.4f}], n={result.n}); needs >= "
        f"{margin:g} with the lower bound above 0"
    )
    return LearnabilityResult(bool(passed), reason, _finite(meta))


def _finite(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in meta.items()
    }
