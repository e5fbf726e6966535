"""The evaluation gate between a challenger model and the champion.

A challenger replaces the champion only if it is measurably better on the *same* test items:
per-item scores of both models on one set of items go into a paired bootstrap of the mean
difference (higher is better). The gate's score (:data:`GATE_SCORES`, :func:`gate_scores`) is by
default ``logp_target``, the likelihood scorer's log p(target action) per decision point
(``training.scoring``): continuous, so two models that differ at all differ on it, and a tie
(mean difference 0, interval [0, 0]) only happens between identical forecasts, which are then
kept. ``brier`` (negated, so higher is better) is the bounded alternative; ``correct`` (argmax
accuracy) and ``reward`` (realized reward of the argmax action) are coarse or noisy and kept for
comparison.

The test (:func:`paired_bootstrap`)
-----------------------------------
``d_i = challenger_i - champion_i`` for the n items. Each of ``n_resamples`` resamples draws n
item indices uniformly with replacement (one ``numpy.random.default_rng(seed)`` stream, so the
result is a function of the inputs and the seed) and takes the mean of ``d`` over them. Pairing
(both models' scores of an item move together) removes the variance of the items' difficulty,
which is most of the variance of either model's mean.

- ``mean_diff``: the observed mean of ``d``;
- ``ci_low``, ``ci_high``: the two-sided ``1 - alpha`` percentile interval of the resampled
  means (quantiles ``alpha / 2`` and ``1 - alpha / 2``);
- ``p_value``: one-sided, the share of resampled means ``<= 0`` (the bootstrap's estimate of how
  often a challenger no better than the champion would look this good);
- ``better``: ``ci_low > 0``, the challenger's mean is higher with the interval's confidence.
  This is a one-sided test at level ``alpha / 2`` (``p_value < alpha / 2`` up to quantile
  interpolation): conservative on purpose, since a wrong promotion replaces a working model.

Identical scores give ``d = 0`` everywhere, ``ci_low = 0`` and so no promotion. With few items
the percentile bootstrap is too optimistic (with 3 items all +1 every resample is +1), hence
``promotion_decision``'s ``min_items``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

# Per-item columns the gate can compare, and the sign that makes higher better.
GATE_SCORES: dict[str, float] = {"logp_target": 1.0, "brier": -1.0, "correct": 1.0, "reward": 1.0}
DEFAULT_GATE_SCORE = "logp_target"
# Resampled index matrices are built in chunks of about this many cells (memory bound).
_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of ``mean(challenger - champion)`` (module docstring)."""

    n: int
    mean_challenger: float
    mean_champion: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    better: bool
    alpha: float
    n_resamples: int
    seed: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def paired_bootstrap(
    challenger_scores: Sequence[float] | np.ndarray,
    champion_scores: Sequence[float] | np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Paired bootstrap of the mean score difference of two models on the same items.

    ``challenger_scores[i]`` and ``champion_scores[i]`` are the two models' scores of item i
    (higher is better). Raises ValueError for different lengths, no items, or a non-finite
    score. Returns :class:`BootstrapResult`; the test is described in the module docstring.
    """
    a = np.asarray(challenger_scores, dtype=float)
    b = np.asarray(champion_scores, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired scores need equal 1-d shapes, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no items to compare")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores must be finite")
    if n_resamples < 1 or not 0.0 < alpha < 1.0:
        raise ValueError("n_resamples must be >= 1 and alpha in (0, 1)")
    diff = a - b
    n = diff.size
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    ci_low, ci_high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(
        n=n,
        mean_challenger=float(a.mean()),
        mean_champion=float(b.mean()),
        mean_diff=float(diff.mean()),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        p_value=float((means <= 0).mean()),
        better=bool(ci_low > 0),
        alpha=alpha,
        n_resamples=n_resamples,
        seed=seed,
    )


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict.

    promote: whether the challenger becomes the champion.
    reason: one sentence for the run's tags / logs.
    statistics: flat floats (``n_items``, ``mean_challenger`` and, with a champion, the
        :class:`BootstrapResult` fields, ``n_only_challenger``, ``n_only_champion``).
    """

    promote: bool
    reason: str
    statistics: dict[str, float] = field(default_factory=dict)


def promotion_decision(
    challenger: Mapping[Hashable, float],
    champion: Mapping[Hashable, float] | None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    min_items: int = 10,
    require_same_items: bool = True,
) -> PromotionDecision:
    """Decide whether a challenger replaces the champion, from per-item scores.

    challenger, champion: item id (e.g. the prompt or decision point id of a test decision
        point) → score, higher is better, of the same metric. ``champion`` None: there is no
        champion yet, and the first model is promoted.
    require_same_items: both must have scored exactly the same items (else no promotion: score
        the champion on the challenger's test items first); False compares the common items.
    min_items: fewer common items than this → no promotion (the bootstrap needs a sample).

    Otherwise the challenger is promoted iff :func:`paired_bootstrap` of its scores against the
    champion's on the common items says ``better`` (the lower bound of the two-sided
    ``1 - alpha`` interval of the mean difference is above 0).
    """
    scores = {k: float(v) for k, v in challenger.items()}
    stats: dict[str, float] = {
        "n_items": float(len(scores)),
        "mean_challenger": float(np.mean(list(scores.values()))) if scores else math.nan,
    }
    if champion is None:
        return PromotionDecision(True, "no champion yet: the first model is promoted", stats)

    only_challenger = scores.keys() - champion.keys()
    only_champion = champion.keys() - scores.keys()
    common = sorted(scores.keys() & champion.keys(), key=repr)
    stats.update(
        n_items=float(len(common)),
        n_only_challenger=float(len(only_challenger)),
        n_only_champion=float(len(only_champion)),
    )
    if require_same_items and (only_challenger or only_champion):
        reason = (
            f"not promoted: the models were scored on different items ({len(only_challenger)} "
            f"only the challenger's, {len(only_champion)} only the champion's); score both on "
            "the same test items"
        )
        return PromotionDecision(False, reason, stats)
    if len(common) < min_items:
        reason = f"not promoted: {len(common)} common items, fewer than min_items={min_items}"
        return PromotionDecision(False, reason, stats)

    result = paired_bootstrap(
        [scores[k] for k in common],
        [float(champion[k]) for k in common],
        n_resamples=n_resamples,
        seed=seed,
        alpha=alpha,
    )
    stats.update(result.as_dict())
    stats["n_items"] = float(result.n)
    interval = (
        f"mean difference {result.mean_diff:+.4f}, {1 - alpha:.0%} CI "
        f"[{result.ci_low:+.4f}, {result.ci_high:+.4f}], one-sided p={result.p_value:.4f}, "
        f"n={result.n}"
    )
    if result.better:
        return PromotionDecision(True, f"promoted: challenger better ({interval})", stats)
    return PromotionDecision(
        False, f"not promoted: not better than the champion ({interval})", stats
    )


def gate_scores(
    items: pd.DataFrame, score: str = DEFAULT_GATE_SCORE, key: str = "item_id"
) -> dict[str, float]:
    """Per-item gate scores of an evaluation's items frame: ``key`` → the ``score`` column
    (signed so that higher is better; items without a value, e.g. no target, are left out)."""
    if score not in GATE_SCORES:
        raise ValueError(f"gate score {score!r}: expected one of {tuple(GATE_SCORES)}")
    values = items[[key, score]].dropna(subset=[score])
    sign = GATE_SCORES[score]
    return {str(k): sign * float(v) for k, v in zip(values[key], values[score], strict=True)}


def gate_decision(
    challenger_items: pd.DataFrame,
    champion_items: pd.DataFrame | None,
    *,
    score: str = DEFAULT_GATE_SCORE,
    key: str = "item_id",
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    min_items: int = 10,
) -> PromotionDecision:
    """:func:`promotion_decision` on the two models' per-item ``score`` (None: no champion)."""
    champion = None if champion_items is None else gate_scores(champion_items, score, key)
    decision = promotion_decision(
        gate_scores(challenger_items, score, key),
        champion,
        n_resamples=n_resamples,
        seed=seed,
        alpha=alpha,
        min_items=min_items,
    )
    return PromotionDecision(
        decision.promote, f"{decision.reason} on {score!r}", decision.statistics
    )
