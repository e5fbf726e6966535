"""Feature drift statistics and the drift decision with hysteresis, in plain Python.

No Dagster here. The asset ``feature_drift`` compares a *current* window of episode features
with the champion model's training snapshot (the *reference*): :func:`compare_windows` (or
:func:`profile_reference` once, then :func:`compare_windows` per window) gives a
:class:`WindowResult` (:meth:`WindowResult.to_metadata` is a flat dict of floats);
:func:`decide` folds it into the :class:`DriftState` stored last time (``to_dict`` /
``from_dict``, JSON) and says whether to trigger a retrain. When the champion changes, the
reference changes: start again from ``DriftState()``.

Statistics
----------
Every feature gets an **effect size** (how far did it move?) and a **p-value** (could sampling
noise alone explain it?). Large windows make tiny, harmless changes significant; small or
autocorrelated windows make large effect sizes out of noise. A feature therefore counts as
drifted only when both agree: its effect size is above its threshold *and* its test is rejected.

- numeric features: :func:`psi` (Population Stability Index on deciles of the reference) and
  :func:`normalized_wasserstein` (earth mover's distance in robust standard deviations of the
  reference); p-value from the two-sample Kolmogorov-Smirnov test (:func:`ks_test`).
- categorical features (regime, action, labels): :func:`jensen_shannon` (base 2, in [0, 1]);
  p-value from the chi-square test of the 2 x k table of counts (:func:`chi_square_test`).
- multiple testing: the p-values of all features of one window go through
  :func:`benjamini_hochberg`, which controls the false discovery rate across the features.

Autocorrelation. Episodes are not independent draws: ``ret_20`` of consecutive bars shares 19 of
its 20 returns, a regime lasts for many bars. KS and chi-square assume independent rows; fed
autocorrelated rows their p-values are far too small. In the tests, at a nominal 5%, KS rejects
74% of equal AR(1) samples with rho = 0.9 (3,000 vs 500 rows) and chi-square 95% of equal
regime sequences with spells of 10 rows. Both tests therefore use *effective sample sizes*
``n / tau``, ``tau`` the integrated autocorrelation time (Geyer's initial positive sequence
estimate) of the indicator series the test actually counts: ``x <= c`` at the reference's
quartiles for KS (:func:`effective_sample_size`), "row is category c" for chi-square
(:func:`categorical_autocorrelation_time`), the largest over the cut points or categories. With
that the rejection rates above become 1.5% and 4.5%: valid, KS on the conservative side. This
needs the rows in time order within each series: sort episodes by ``(symbol, decision_ts)``
before calling :func:`compare_windows`. Shuffled rows hide the dependence and bring the false
alarms back.

Default thresholds (:class:`DriftPolicy`)
-----------------------------------------
- ``psi_threshold = 0.25``: the credit-scoring convention for PSI on deciles, "< 0.1 no
  significant change, 0.1-0.25 moderate, > 0.25 major shift" (:data:`PSI_MODERATE`,
  :data:`PSI_MAJOR`). For a mean shift of a normal feature PSI ~= shift**2 (in standard
  deviations), so 0.25 is about half a standard deviation.
- ``wasserstein_threshold = 0.5``: half a robust standard deviation, the mean shift that gives
  PSI 0.25, so both numeric measures agree on a pure shift. Wasserstein also sees mass that
  moves far into a tail, which PSI (whose outer decile bins are open) underrates.
- ``js_threshold = 0.05`` bits: for small changes JS ~= PSI / (8 ln 2), so PSI 0.25 over the
  categories corresponds to JS ~= 0.045. A 50/50 mix that becomes 75/25 has JS 0.049 (PSI
  0.27); 50/50 to 85/15 has JS 0.105, so 0.1 would demand about twice the change the numeric
  threshold does.
- ``fdr_q = 0.05``: at most 5% of the features flagged in a window are expected to be noise;
  when nothing changed at all, BH also keeps the chance of any rejection at or below 5%.
- ``min_rows = 200``: 20 expected rows per decile bin; PSI's noise floor is about
  ``(bins - 1) * (1 / n_ref + 1 / n_cur)``, 0.045 from a 200-row window alone, well below 0.25.
- ``consecutive_windows = 2`` (K): one window beyond the thresholds is not enough; K in a row
  are. The simulation in ``tests/monitoring/test_drift_stats.py`` draws 500 sequences of 8 windows of 500
  rows from the reference process (3,000 rows) with six features: AR(1) with rho 0.8 and 0.95,
  the exponential of an AR(1) with rho 0.9, a heavy-tailed one, regimes in spells of 10 rows
  and an independent action. 2.4% of its windows had a BH rejection and 1.4% a drifted feature
  (the effect-size thresholds filter the rest). False-trigger rate per 8-window sequence:
  K = 1: 11%; K = 2: 0 of 500 (below 0.6% at 95% confidence); K = 3: 0. Without the
  autocorrelation correction K = 2 triggered in 27 of the first 50 sequences. The price of K is
  K windows of delay: a one-standard-deviation mean shift of the rho 0.8 feature and a doubled
  standard deviation of the heavy-tailed one triggered exactly 2 windows into the shift in 20
  of 20 shifts; regimes going from 25% to 80% "up_calm", and buys from 30% to 60%, in 19 of 20
  (the others one or two windows later).
- ``clear_fraction = 0.4`` and ``clear_windows = 2``: after a trigger the detector is disarmed
  until, for 2 windows in a row, every feature is either below 40% of its thresholds (PSI < 0.1,
  the "no significant change" band; Wasserstein < 0.2; JS < 0.02) or not distinguishable from
  the reference by its test (:attr:`WindowResult.supported_severity`). A drift that persists
  (the usual case until a retrained model is champion) thus triggers one retrain, not one per
  window; in the simulation each sequence triggered once per shift and once more for a second
  shift after 4 clean windows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special

PSI_MODERATE = 0.1
"""PSI at or above this: a moderate shift, worth watching (credit-scoring convention)."""
PSI_MAJOR = 0.25
"""PSI at or above this: a major shift, the population has changed (credit-scoring convention)."""
PSI_EPSILON = 1e-4
"""Share added to every PSI bin so an empty bin gives a large but finite term, not log(0)."""
JS_PSEUDO_COUNT = 0.5
"""Count added to every category before JS (Jeffreys prior): a category seen 0 times in a small
window is "rare", not "impossible", which keeps small windows from overstating the change."""

ArrayLike = Sequence[float] | np.ndarray | pd.Series
Labels = Mapping[Any, float] | Iterable[Any]


# ---------------------------------------------------------------------------------------------
# Numeric features
# ---------------------------------------------------------------------------------------------


def _finite_values(values: ArrayLike) -> np.ndarray:
    """The values as a float array in their order, without NaN and infinities (= missing)."""
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _sorted_finite(values: ArrayLike, name: str) -> np.ndarray:
    array = np.sort(_finite_values(values))
    if array.size == 0:
        raise ValueError(f"{name} has no finite values")
    return array


def _edges_of_sorted(ref_sorted: np.ndarray, bins: int) -> np.ndarray:
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    n = ref_sorted.size
    # The i/bins quantile is the ceil(n * i / bins)-th smallest value ("inverted_cdf");
    # integer arithmetic avoids 3000 * 0.1 = 300.00000000000006 rounding up to the next rank.
    ranks = -(-n * np.arange(1, bins) // bins)
    return np.unique(ref_sorted[ranks - 1])


def quantile_bin_edges(reference: ArrayLike, bins: int = 10) -> np.ndarray:
    """Inner edges of ``bins`` quantile bins of the reference, duplicates removed.

    The outer bins are open (``(-inf, e0]`` and ``(e_last, inf)``), so current values beyond the
    reference's range still land in a bin. The edges are reference values themselves (the
    ``inverted_cdf`` quantiles), which makes PSI invariant under any strictly increasing
    transform of the feature (log prices, percent vs fraction). A feature with many ties (zero
    returns, discrete sizes) gets fewer bins instead of empty duplicates.
    """
    return _edges_of_sorted(_sorted_finite(reference, "reference"), bins)


def _bin_shares(values: np.ndarray, inner_edges: np.ndarray, epsilon: float) -> np.ndarray:
    """Share of the values in each bin, with ``epsilon`` added to each share and renormalized."""
    # side="left": a value equal to an edge belongs to the bin below it, (e_i-1, e_i].
    index = np.searchsorted(inner_edges, values, side="left")
    counts = np.bincount(index, minlength=inner_edges.size + 1).astype(float)
    shares = counts / counts.sum()
    return (shares + epsilon) / (1.0 + epsilon * shares.size)


def _psi_of_shares(ref_shares: np.ndarray, cur_shares: np.ndarray) -> float:
    return float(np.sum((cur_shares - ref_shares) * np.log(cur_shares / ref_shares)))


def psi(
    reference: ArrayLike, current: ArrayLike, bins: int = 10, epsilon: float = PSI_EPSILON
) -> float:
    """Population Stability Index of ``current`` against ``reference``.

    ``sum((c_i - r_i) * ln(c_i / r_i))`` over the quantile bins of the reference
    (:func:`quantile_bin_edges`), each bin's share smoothed by ``epsilon``. 0 for identical
    samples; conventionally < 0.1 no significant change, 0.1-0.25 moderate, > 0.25 major
    (:data:`PSI_MODERATE`, :data:`PSI_MAJOR`). Sampling noise alone gives about
    ``(bins - 1) * (1 / n_ref + 1 / n_cur)``, with effective sizes for autocorrelated rows.
    """
    ref = _sorted_finite(reference, "reference")
    cur = _sorted_finite(current, "current")
    edges = _edges_of_sorted(ref, bins)
    return _psi_of_shares(_bin_shares(ref, edges, epsilon), _bin_shares(cur, edges, epsilon))


def _robust_scale_of_sorted(ref_sorted: np.ndarray) -> float:
    q25, q75 = np.quantile(ref_sorted, [0.25, 0.75])
    iqr_sigma = (q75 - q25) / 1.349
    if iqr_sigma > 0:
        return float(iqr_sigma)
    std = float(np.std(ref_sorted))
    return std if std > 0 else 1.0


def robust_scale(reference: ArrayLike) -> float:
    """A standard deviation that ignores the tails: IQR / 1.349 (equal to sigma for a normal).

    Falls back to the standard deviation when more than half the values are tied (IQR 0), and
    to 1.0 for a constant reference, which has no natural unit (distances are then in the
    feature's own units).
    """
    return _robust_scale_of_sorted(_sorted_finite(reference, "reference"))


def _ecdf_differences(
    ref_sorted: np.ndarray, cur_sorted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pooled values, sorted, and ``F_cur - F_ref`` at each of them.

    The common core of KS (the largest difference) and Wasserstein-1 (the area between the two
    ECDFs), computed once per feature: the drift asset evaluates many features per window, and
    scipy's wrappers cost several times more on windows of a few hundred rows.
    """
    pooled = np.concatenate([ref_sorted, cur_sorted])
    # Two sorted runs: a stable sort merges them in linear time.
    order = np.argsort(pooled, kind="stable")
    pooled = pooled[order]
    from_current = order >= ref_sorted.size
    differences = np.cumsum(from_current) / cur_sorted.size
    differences -= np.cumsum(~from_current) / ref_sorted.size
    # Among tied values only the last one has seen all of them: that is where the ECDFs are.
    last_of_value = np.append(pooled[1:] != pooled[:-1], True)
    return pooled[last_of_value], differences[last_of_value]


def _area(pooled: np.ndarray, differences: np.ndarray) -> float:
    return float(np.sum(np.abs(differences[:-1]) * np.diff(pooled)))


def wasserstein(reference: ArrayLike, current: ArrayLike) -> float:
    """Wasserstein-1 (earth mover's) distance between the two samples, in the feature's units."""
    ref = _sorted_finite(reference, "reference")
    cur = _sorted_finite(current, "current")
    return _area(*_ecdf_differences(ref, cur))


def normalized_wasserstein(reference: ArrayLike, current: ArrayLike) -> float:
    """Wasserstein-1 distance divided by :func:`robust_scale` of the reference: unitless.

    A mean shift of ``d`` robust standard deviations gives ``d``, whatever the feature's units.
    """
    ref = _sorted_finite(reference, "reference")
    cur = _sorted_finite(current, "current")
    return _area(*_ecdf_differences(ref, cur)) / _robust_scale_of_sorted(ref)


# ---------------------------------------------------------------------------------------------
# Effective sample size and the two-sample tests
# ---------------------------------------------------------------------------------------------


def _autocorrelation_times(series: np.ndarray) -> np.ndarray:
    """:func:`autocorrelation_time` of each row of a 2-D array, in one batch of FFTs."""
    x = np.atleast_2d(np.asarray(series, dtype=float))
    n = x.shape[1]
    taus = np.ones(x.shape[0])
    if n < 4:
        return taus
    varying = np.ptp(x, axis=1) > 0
    if not varying.any():
        return taus
    centered = x[varying]
    centered = centered - centered.mean(axis=1, keepdims=True)
    # Autocovariance by FFT, zero-padded to 2n so that the circular correlation is a linear one.
    power = np.abs(np.fft.rfft(centered, 2 * n, axis=1)) ** 2
    autocovariance = np.fft.irfft(power, 2 * n, axis=1)[:, :n]
    rho = autocovariance / autocovariance[:, :1]
    half = n // 2
    pairs = rho[:, 0 : 2 * half : 2] + rho[:, 1 : 2 * half : 2]
    # Geyer: sum the pairs up to (not including) the first one that is not positive.
    before_first_non_positive = np.cumprod(pairs > 0, axis=1).astype(bool)
    tau = -1.0 + 2.0 * np.sum(pairs * before_first_non_positive, axis=1)
    taus[varying] = np.maximum(tau, 1.0)
    return taus


def autocorrelation_time(values: ArrayLike) -> float:
    """Integrated autocorrelation time ``tau = 1 + 2 * sum_k rho_k`` of a series, in row order.

    Geyer's initial positive sequence estimator: the autocorrelations are summed in pairs
    ``rho_2m + rho_2m+1`` while a pair is positive, which cuts the sum off where the estimates
    turn into noise. ``tau`` is clipped to at least 1: negative autocorrelation would claim more
    information than independent rows, and the drift tests should not lean on that. For an
    AR(1) series ``tau = (1 + rho) / (1 - rho)``: 3 at rho = 0.5, 19 at rho = 0.9.
    """
    return float(_autocorrelation_times(np.asarray(values, dtype=float).ravel())[0])


def quartiles(values: ArrayLike) -> np.ndarray:
    """The distinct quartiles of the finite values: the default cut points of the ESS."""
    return np.unique(np.quantile(_finite_values(values), [0.25, 0.5, 0.75]))


def effective_sample_size(values: ArrayLike, cut_points: ArrayLike | None = None) -> float:
    """``n / tau``: how many independent rows the series is worth to a test of its distribution.

    ``tau`` is the largest :func:`autocorrelation_time` of the indicator series
    ``x <= c`` over the cut points ``c`` (default: the quartiles of ``values``; pass the
    reference's quartiles to measure two samples alike). Indicators rather than the values,
    because the ECDF that KS compares is at each ``c`` the mean of exactly that indicator: its
    variance grows with the indicator's ``tau``, not the series'. For a Gaussian AR(1) the
    indicator's lag correlations are ``(2 / pi) * arcsin(rho**k) <= rho**k`` (at rho = 0.9,
    ``tau`` 13.5 at the median instead of 19). Indicators are also invariant under increasing
    transforms, like KS itself. Three cut points rather than one catch dependence that lives
    off the median (volatility clustering), at the price of some conservatism. Non-finite
    values are dropped first (their neighbours are then treated as adjacent).
    """
    x = _finite_values(values)
    if x.size == 0:
        return 0.0
    cuts = quartiles(x) if cut_points is None else np.asarray(cut_points, dtype=float)
    return x.size / _indicator_time(x, cuts)


def _indicator_time(values: np.ndarray, cut_points: np.ndarray) -> float:
    """The largest autocorrelation time of the series ``values <= c`` over the cut points."""
    if cut_points.size == 0:
        return 1.0
    indicators = values[np.newaxis, :] <= cut_points[:, np.newaxis]
    return float(_autocorrelation_times(indicators).max())


@dataclass(frozen=True)
class TwoSampleTest:
    """A two-sample test: its statistic, p-value and the (effective) sample sizes it used."""

    statistic: float
    p_value: float
    n_reference: float
    n_current: float


def _clip_sizes(
    effective_sizes: tuple[float, float] | None, n_ref: float, n_cur: float
) -> tuple[float, float]:
    """Effective sizes, defaulting to the row counts, kept within ``[1, rows]``."""
    eff_ref, eff_cur = effective_sizes if effective_sizes is not None else (n_ref, n_cur)
    return float(np.clip(eff_ref, 1.0, n_ref)), float(np.clip(eff_cur, 1.0, n_cur))


def _ks_from_differences(
    differences: np.ndarray, n_ref: float, n_cur: float
) -> tuple[float, float]:
    statistic = float(np.max(np.abs(differences)))
    root_n = math.sqrt(n_ref * n_cur / (n_ref + n_cur))
    # Stephens' (1970) finite-size correction of the Kolmogorov limit distribution, at a
    # ufunc's cost: from 4 effective rows on within 0.025 of the exact two-sided p-value
    # (scipy.stats.kstwo), and within 0.003 where p < 0.1, the region decisions are made in.
    scaled = (root_n + 0.12 + 0.11 / root_n) * statistic
    p_value = float(np.clip(special.kolmogorov(scaled), 0.0, 1.0))
    return statistic, p_value


def ks_test(
    reference: ArrayLike,
    current: ArrayLike,
    effective_sizes: tuple[float, float] | None = None,
) -> TwoSampleTest:
    """Two-sample Kolmogorov-Smirnov test, optionally with effective sample sizes.

    The statistic ``D = max |F_cur - F_ref|`` is the usual one. The p-value is the two-sided one
    from the Kolmogorov distribution at ``n = n_ref * n_cur / (n_ref + n_cur)`` with Stephens'
    finite-size correction (close to ``scipy.stats.ks_2samp(method="asymp")``, and much
    cheaper), with ``effective_sizes = (n_eff_ref, n_eff_cur)`` in place of the row counts when
    given. For autocorrelated rows pass :func:`effective_sample_size` of each sample, both at
    the reference's quartiles (``effective_sample_size(current, quartiles(reference))``): the
    ECDF of ``n`` correlated rows varies like that of ``n / tau`` independent ones.
    """
    ref = _sorted_finite(reference, "reference")
    cur = _sorted_finite(current, "current")
    n_ref, n_cur = _clip_sizes(effective_sizes, ref.size, cur.size)
    _, differences = _ecdf_differences(ref, cur)
    statistic, p_value = _ks_from_differences(differences, n_ref, n_cur)
    return TwoSampleTest(statistic, p_value, n_ref, n_cur)


def _chi_square_from_counts(
    ref_counts: np.ndarray,
    cur_counts: np.ndarray,
    effective_sizes: tuple[float, float] | None,
) -> TwoSampleTest:
    n_ref, n_cur = float(ref_counts.sum()), float(cur_counts.sum())
    if n_ref <= 0 or n_cur <= 0:
        raise ValueError("both samples need at least one labelled row")
    eff_ref, eff_cur = _clip_sizes(effective_sizes, n_ref, n_cur)
    table = np.vstack([ref_counts * (eff_ref / n_ref), cur_counts * (eff_cur / n_cur)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return TwoSampleTest(0.0, 1.0, eff_ref, eff_cur)
    # Pearson's statistic, as scipy.stats.chi2_contingency(table, correction=False), inlined
    # because that wrapper costs more than the rest of a categorical feature together.
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    p_value = float(special.chdtrc(table.shape[1] - 1, statistic))
    return TwoSampleTest(statistic, p_value, eff_ref, eff_cur)


# ---------------------------------------------------------------------------------------------
# Categorical features
# ---------------------------------------------------------------------------------------------


def category_counts(labels_or_counts: Labels) -> dict[Any, float]:
    """Counts per category, from a mapping ``{category: count}`` or from a sequence of labels.

    Missing labels (None, NaN) are dropped.
    """
    if isinstance(labels_or_counts, Mapping):
        return {key: float(count) for key, count in labels_or_counts.items()}
    series = (
        labels_or_counts
        if isinstance(labels_or_counts, pd.Series)
        else pd.Series(list(labels_or_counts))
    )
    return {key: float(count) for key, count in series.value_counts(dropna=True).items()}


def _aligned_counts(reference: Labels, current: Labels) -> tuple[np.ndarray, np.ndarray]:
    """Each side's counts over the union of the categories of both."""
    ref_counts = category_counts(reference)
    cur_counts = category_counts(current)
    categories = sorted(set(ref_counts) | set(cur_counts), key=str)
    return (
        np.array([ref_counts.get(c, 0.0) for c in categories]),
        np.array([cur_counts.get(c, 0.0) for c in categories]),
    )


def _js_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray, pseudo_count: float) -> float:
    if ref_counts.sum() <= 0 or cur_counts.sum() <= 0:
        raise ValueError("both samples need at least one labelled row")
    p = (ref_counts + pseudo_count) / (ref_counts + pseudo_count).sum()
    q = (cur_counts + pseudo_count) / (cur_counts + pseudo_count).sum()
    mixture = (p + q) / 2

    def kl_to_mixture(dist: np.ndarray) -> float:
        present = dist > 0  # 0 * log 0 = 0
        return float(np.sum(dist[present] * np.log2(dist[present] / mixture[present])))

    return float(np.clip(0.5 * kl_to_mixture(p) + 0.5 * kl_to_mixture(q), 0.0, 1.0))


def jensen_shannon(
    reference: Labels, current: Labels, pseudo_count: float = JS_PSEUDO_COUNT
) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two categorical distributions.

    Each argument is a sequence of labels or a mapping ``{category: count}``. The distributions
    are over the union of the categories, with ``pseudo_count`` added to every count
    (:data:`JS_PSEUDO_COUNT`; with 0, disjoint supports give exactly 1). Symmetric; 0 for
    identical distributions. This is the divergence, the square of scipy's ``jensenshannon``
    distance.
    """
    return _js_from_counts(*_aligned_counts(reference, current), pseudo_count)


def _indicator_autocorrelation_time(codes: np.ndarray, n_categories: int) -> float:
    """The largest autocorrelation time of the 0/1 series "row is category c", over c."""
    if codes.size == 0 or n_categories < 2:
        return 1.0
    indicators = codes[np.newaxis, :] == np.arange(n_categories)[:, np.newaxis]
    return float(_autocorrelation_times(indicators).max())


def categorical_autocorrelation_time(labels: Iterable[Any]) -> float:
    """The largest :func:`autocorrelation_time` of the category indicator series.

    The chi-square statistic sums over categories and the most persistent category inflates it
    most, so its ``tau`` is the conservative design effect for the whole table.
    """
    codes, categories = pd.factorize(pd.Series(list(labels)).dropna())
    return _indicator_autocorrelation_time(codes, categories.size)


def chi_square_test(
    reference: Labels,
    current: Labels,
    effective_sizes: tuple[float, float] | None = None,
) -> TwoSampleTest:
    """Chi-square test of homogeneity on the 2 x k table of category counts (no Yates).

    Each argument is a sequence of labels or a mapping ``{category: count}``. With
    ``effective_sizes = (n_eff_ref, n_eff_cur)`` each row of the table is scaled to its
    effective size first (a first-order design-effect correction in the spirit of Rao-Scott),
    so persistent labels like the regime do not look like drift. Categories absent from both are
    not in the table; with fewer than two categories there is nothing to test (p = 1).
    """
    return _chi_square_from_counts(*_aligned_counts(reference, current), effective_sizes)


# ---------------------------------------------------------------------------------------------
# Multiple testing
# ---------------------------------------------------------------------------------------------


def benjamini_hochberg(pvalues: ArrayLike, q: float = 0.05) -> np.ndarray:
    """Which hypotheses the Benjamini-Hochberg step-up procedure rejects at FDR level ``q``.

    With the p-values sorted, ``p_(1) <= ... <= p_(m)``, find the largest ``k`` with
    ``p_(k) <= k * q / m`` and reject the ``k`` smallest. Returns a boolean array in the input
    order. NaN p-values (features not tested) are never rejected and do not count in ``m``.
    """
    p = np.asarray(pvalues, dtype=float)
    rejected = np.zeros(p.shape, dtype=bool)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return rejected
    order = tested[np.argsort(p[tested], kind="stable")]
    below_line = p[order] <= q * np.arange(1, m + 1) / m
    if below_line.any():
        k = int(np.flatnonzero(below_line)[-1]) + 1
        rejected[order[:k]] = True
    return rejected


def bh_adjusted_pvalues(pvalues: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values ("q-values"): reject at level q iff adjusted <= q.

    ``min over j >= i of p_(j) * m / j``, capped at 1; NaN stays NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return adjusted
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted


# ---------------------------------------------------------------------------------------------
# Policy, per-window comparison
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftPolicy:
    """Thresholds of the drift decision; the module docstring justifies each default."""

    psi_threshold: float = PSI_MAJOR  # numeric effect size, population stability index
    wasserstein_threshold: float = 0.5  # numeric effect size, in robust standard deviations
    js_threshold: float = 0.05  # categorical effect size, Jensen-Shannon divergence in bits
    fdr_q: float = 0.05  # Benjamini-Hochberg level across the features of one window
    min_rows: int = 200  # fewer in a window (or a feature's non-missing values): not tested
    consecutive_windows: int = 2  # K drifted windows in a row trigger
    clear_fraction: float = 0.4  # re-arm level, as a fraction of every threshold
    clear_windows: int = 2  # windows in a row below the re-arm level to re-arm
    psi_bins: int = 10  # quantile bins of the reference for PSI (deciles)
    correct_autocorrelation: bool = True  # effective sample sizes in the tests

    def __post_init__(self) -> None:
        for name in ("psi_threshold", "wasserstein_threshold", "js_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.fdr_q < 1:
            raise ValueError("fdr_q must be in (0, 1)")
        if not 0 < self.clear_fraction < 1:
            raise ValueError(
                "clear_fraction must be in (0, 1): the clear level is below the trigger"
            )
        if self.consecutive_windows < 1 or self.clear_windows < 1 or self.min_rows < 1:
            raise ValueError("consecutive_windows, clear_windows and min_rows must be at least 1")


@dataclass(frozen=True)
class FeatureDrift:
    """The statistics of one feature in one window.

    ``severity`` is the largest effect size divided by its threshold (1.0 = at the threshold):
    the one number that compares numeric and categorical features, used for the clear level.
    Statistics that do not apply to the feature's kind, or to a feature with fewer than
    ``min_rows`` values in a sample (``tested`` False), are NaN.
    """

    feature: str
    kind: Literal["numeric", "categorical"]
    n_reference: int
    n_current: int
    n_effective_reference: float = math.nan
    n_effective_current: float = math.nan
    psi: float = math.nan
    wasserstein: float = math.nan
    js: float = math.nan
    test_statistic: float = math.nan
    p_value: float = math.nan
    q_value: float = math.nan
    rejected: bool = False
    severity: float = math.nan
    exceeds_threshold: bool = False
    drifted: bool = False

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p_value)


@dataclass(frozen=True)
class WindowResult:
    """All features of one window compared with the reference."""

    features: tuple[FeatureDrift, ...]
    n_reference: int
    n_current: int
    skipped_reason: str | None = None

    @property
    def skipped(self) -> bool:
        """True when the window cannot say anything (too few rows, no testable feature)."""
        return self.skipped_reason is not None

    @property
    def drifted_features(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.drifted]

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in self.features)

    def _max(self, attribute: str) -> float:
        values = [getattr(f, attribute) for f in self.features if f.tested]
        values = [v for v in values if not math.isnan(v)]
        return max(values) if values else math.nan

    @property
    def severity(self) -> float:
        """The largest feature severity (1.0 = some feature at its threshold); NaN if skipped."""
        return self._max("severity")

    @property
    def supported_severity(self) -> float:
        """The largest severity among features whose test is rejected; 0.0 when none is.

        The score that must fall below the clear level to re-arm :func:`decide`. A difference
        the test cannot tell from noise does not hold the detector disarmed: on small or
        strongly autocorrelated windows the effect sizes of an unchanged feature scatter well
        above 40% of their thresholds, and a raw maximum would then never clear.
        """
        values = [f.severity for f in self.features if f.rejected]
        return max(values) if values else 0.0

    @property
    def max_psi(self) -> float:
        return self._max("psi")

    @property
    def max_js(self) -> float:
        return self._max("js")

    def to_metadata(self) -> dict[str, float]:
        """A flat ``{name: float}`` for Dagster metadata: the window's summary, then per feature
        ``<feature>/<statistic>``. NaN entries are left out (not JSON)."""
        summary = {
            "n_reference": float(self.n_reference),
            "n_current": float(self.n_current),
            "severity": self.severity,
            "supported_severity": self.supported_severity,
            "max_psi": self.max_psi,
            "max_js": self.max_js,
            "drifted": float(self.drifted),
            "n_drifted_features": float(len(self.drifted_features)),
        }
        per_feature = {}
        for f in self.features:
            for name in (
                "psi",
                "wasserstein",
                "js",
                "p_value",
                "q_value",
                "severity",
                "n_effective_reference",
                "n_effective_current",
            ):
                per_feature[f"{f.feature}/{name}"] = float(getattr(f, name))
            per_feature[f"{f.feature}/rejected"] = float(f.rejected)
            per_feature[f"{f.feature}/drifted"] = float(f.drifted)
        return {k: v for k, v in {**summary, **per_feature}.items() if not math.isnan(v)}


@dataclass(frozen=True, eq=False)  # arrays: compare by identity
class NumericReference:
    """What the comparisons of one numeric feature need from the reference."""

    sorted_values: np.ndarray
    n_effective: float
    cut_points: np.ndarray
    bin_edges: np.ndarray
    bin_shares: np.ndarray
    scale: float


@dataclass(frozen=True)
class CategoricalReference:
    """What the comparisons of one categorical feature need from the reference."""

    counts: Mapping[Any, float]
    n_effective: float

    @property
    def n_rows(self) -> int:
        return int(sum(self.counts.values()))


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference reduced to what :func:`compare_windows` needs, per feature.

    Build it once with :func:`profile_reference` and pass it instead of the DataFrame when many
    windows are compared with the same reference (the champion's training snapshot does not
    change between windows): sorting it and estimating its autocorrelation is then done once.
    """

    n_rows: int
    numeric: Mapping[str, NumericReference]
    categorical: Mapping[str, CategoricalReference]
    psi_bins: int
    correct_autocorrelation: bool


def _numeric_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """The finite values of a column, in row order; text that is not a number counts as missing."""
    column = frame[name]
    if not pd.api.types.is_numeric_dtype(column):
        column = pd.to_numeric(column, errors="coerce")
    return _finite_values(column.to_numpy(dtype=float, na_value=np.nan))


def _label_codes(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of the non-missing labels of a column, in row order, and the labels."""
    codes, labels = pd.factorize(frame[name])
    return codes[codes >= 0], pd.Index(labels)  # missing labels have code -1


def profile_reference(
    reference: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    policy: DriftPolicy | None = None,
) -> ReferenceProfile:
    """Summarize ``reference`` for :func:`compare_windows`: sorted values, quantile bins and
    effective sizes per feature. Rows in time order within each series, as there."""
    policy = policy or DriftPolicy()
    missing = [c for c in [*numeric, *categorical] if c not in reference]
    if missing:
        raise KeyError(f"features missing from the reference: {missing}")
    numeric_profiles = {}
    for name in numeric:
        values = _numeric_column(reference, name)
        sorted_values = np.sort(values)
        # An all-missing feature keeps one bin; it is reported untested (fewer than min_rows).
        edges = _edges_of_sorted(sorted_values, policy.psi_bins) if values.size else values
        cuts = quartiles(values) if values.size else values
        tau = _indicator_time(values, cuts) if policy.correct_autocorrelation else 1.0
        numeric_profiles[name] = NumericReference(
            sorted_values=sorted_values,
            n_effective=values.size / tau,
            cut_points=cuts,
            bin_edges=edges,
            bin_shares=_bin_shares(sorted_values, edges, PSI_EPSILON),
            scale=_robust_scale_of_sorted(sorted_values) if values.size else 1.0,
        )
    categorical_profiles = {}
    for name in categorical:
        codes, categories = _label_codes(reference, name)
        counts = np.bincount(codes, minlength=categories.size)
        tau = (
            _indicator_autocorrelation_time(codes, categories.size)
            if policy.correct_autocorrelation
            else 1.0
        )
        categorical_profiles[name] = CategoricalReference(
            counts={c: float(n) for c, n in zip(categories, counts, strict=True)},
            n_effective=codes.size / tau,
        )
    return ReferenceProfile(
        n_rows=len(reference),
        numeric=numeric_profiles,
        categorical=categorical_profiles,
        psi_bins=policy.psi_bins,
        correct_autocorrelation=policy.correct_autocorrelation,
    )


def _numeric_feature(
    name: str, ref: NumericReference, cur: np.ndarray, policy: DriftPolicy
) -> FeatureDrift:
    """Statistics of one numeric feature; ``cur`` is finite and in time order."""
    # The current window's dependence, measured at the reference's quartiles like the
    # reference's own, before sorting destroys the time order.
    tau = _indicator_time(cur, ref.cut_points) if policy.correct_autocorrelation else 1.0
    n_ref, n_cur = ref.n_effective, cur.size / tau
    cur_sorted = np.sort(cur)
    pooled, differences = _ecdf_differences(ref.sorted_values, cur_sorted)
    statistic, p_value = _ks_from_differences(differences, n_ref, n_cur)
    psi_value = _psi_of_shares(ref.bin_shares, _bin_shares(cur, ref.bin_edges, PSI_EPSILON))
    wasserstein_value = _area(pooled, differences) / ref.scale
    severity = max(
        psi_value / policy.psi_threshold, wasserstein_value / policy.wasserstein_threshold
    )
    return FeatureDrift(
        feature=name,
        kind="numeric",
        n_reference=ref.sorted_values.size,
        n_current=cur.size,
        n_effective_reference=n_ref,
        n_effective_current=n_cur,
        psi=psi_value,
        wasserstein=wasserstein_value,
        test_statistic=statistic,
        p_value=p_value,
        severity=severity,
        exceeds_threshold=severity > 1.0,
    )


def _categorical_feature(
    name: str,
    ref: CategoricalReference,
    cur_codes: np.ndarray,
    cur_categories: pd.Index,
    policy: DriftPolicy,
) -> FeatureDrift:
    """Statistics of one categorical feature, from :func:`_label_codes` of the current window."""
    cur_count_of = dict(
        zip(cur_categories, np.bincount(cur_codes, minlength=cur_categories.size), strict=True)
    )
    categories = [*ref.counts, *(c for c in cur_categories if c not in ref.counts)]
    ref_counts = np.array([ref.counts.get(c, 0.0) for c in categories])
    cur_counts = np.array([float(cur_count_of.get(c, 0)) for c in categories])
    tau = (
        _indicator_autocorrelation_time(cur_codes, cur_categories.size)
        if policy.correct_autocorrelation
        else 1.0
    )
    test = _chi_square_from_counts(ref_counts, cur_counts, (ref.n_effective, cur_codes.size / tau))
    js_value = _js_from_counts(ref_counts, cur_counts, JS_PSEUDO_COUNT)
    severity = js_value / policy.js_threshold
    return FeatureDrift(
        feature=name,
        kind="categorical",
        n_reference=ref.n_rows,
        n_current=cur_codes.size,
        n_effective_reference=test.n_reference,
        n_effective_current=test.n_current,
        js=js_value,
        test_statistic=test.statistic,
        p_value=test.p_value,
        severity=severity,
        exceeds_threshold=severity > 1.0,
    )


def compare_windows(
    reference: pd.DataFrame | ReferenceProfile,
    current: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    policy: DriftPolicy | None = None,
) -> WindowResult:
    """Compare every listed feature of ``current`` with ``reference`` and decide which drifted.

    ``reference`` is the DataFrame or its :func:`profile_reference`. Rows must be in time order
    within each series (sort by ``(symbol, decision_ts)``) so that the autocorrelation
    correction sees the real dependence. Missing values are dropped per feature. A feature with
    fewer than ``policy.min_rows`` values on either side is reported but not tested; if either
    window has fewer rows, or no feature could be tested, the result is ``skipped`` and
    :func:`decide` leaves the state's counters alone.

    A feature is drifted when its severity exceeds 1 (some effect size above its threshold)
    *and* its test is rejected by Benjamini-Hochberg at ``policy.fdr_q`` across all tested
    features of the window.
    """
    policy = policy or DriftPolicy()
    if isinstance(reference, ReferenceProfile):
        profile = reference
        if (profile.psi_bins, profile.correct_autocorrelation) != (
            policy.psi_bins,
            policy.correct_autocorrelation,
        ):
            raise ValueError("the reference profile was built with another psi_bins or correction")
    else:
        profile = profile_reference(reference, numeric, categorical, policy)
    missing = [c for c in numeric if c not in profile.numeric or c not in current]
    missing += [c for c in categorical if c not in profile.categorical or c not in current]
    if missing:
        raise KeyError(f"features missing from reference or current: {missing}")
    if len(current) < policy.min_rows or profile.n_rows < policy.min_rows:
        return WindowResult(
            features=(),
            n_reference=profile.n_rows,
            n_current=len(current),
            skipped_reason=(
                f"too few rows: reference {profile.n_rows}, current {len(current)}, "
                f"need {policy.min_rows}"
            ),
        )

    features: list[FeatureDrift] = []
    for name in numeric:
        ref = profile.numeric[name]
        cur = _numeric_column(current, name)
        if min(ref.sorted_values.size, cur.size) < policy.min_rows:
            features.append(FeatureDrift(name, "numeric", ref.sorted_values.size, cur.size))
        else:
            features.append(_numeric_feature(name, ref, cur, policy))
    for name in categorical:
        ref = profile.categorical[name]
        codes, categories = _label_codes(current, name)
        if min(ref.n_rows, codes.size) < policy.min_rows:
            features.append(FeatureDrift(name, "categorical", ref.n_rows, codes.size))
        else:
            features.append(_categorical_feature(name, ref, codes, categories, policy))

    pvalues = np.array([f.p_value for f in features])
    rejected = benjamini_hochberg(pvalues, policy.fdr_q)
    qvalues = bh_adjusted_pvalues(pvalues)
    features = [
        replace(
            f,
            q_value=float(q_value),
            rejected=bool(is_rejected),
            drifted=bool(is_rejected and f.exceeds_threshold),
        )
        for f, q_value, is_rejected in zip(features, qvalues, rejected, strict=True)
    ]
    skipped_reason = None
    if not any(f.tested for f in features):
        skipped_reason = f"no feature has {policy.min_rows} non-missing values in both windows"
    return WindowResult(tuple(features), profile.n_rows, len(current), skipped_reason)


# ---------------------------------------------------------------------------------------------
# The decision with hysteresis
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftState:
    """What :func:`decide` remembers between windows; plain ints and bools, so JSON-able.

    ``armed``: a trigger is possible (False from a trigger until the scores have cleared).
    ``drifted_streak``: consecutive drifted windows while armed.
    ``clear_streak``: consecutive windows below the clear level while disarmed.
    """

    armed: bool = True
    drifted_streak: int = 0
    clear_streak: int = 0
    windows_seen: int = 0
    triggers: int = 0
    last_trigger_window: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DriftState:
        """Inverse of :meth:`to_dict`; ``None`` or ``{}`` give the initial state, and keys this
        version does not know (a newer writer) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> DriftState:
        return cls.from_dict(json.loads(text) if text else None)


def _describe(features: Iterable[FeatureDrift]) -> str:
    parts = []
    for f in features:
        effect = (
            f"psi={f.psi:.3f} w={f.wasserstein:.2f}" if f.kind == "numeric" else f"js={f.js:.3f}"
        )
        parts.append(f"{f.feature} {effect} q={f.q_value:.2g}")
    return "; ".join(parts)


def decide(
    state: DriftState | Mapping[str, Any] | None,
    window: WindowResult,
    policy: DriftPolicy | None = None,
) -> tuple[DriftState, bool, str]:
    """Fold one window into the state: ``(new_state, triggered, reason)``.

    While armed, a drifted window extends the streak and any other window resets it; the
    ``policy.consecutive_windows``-th drifted window in a row triggers and disarms. While
    disarmed, nothing triggers; ``policy.clear_windows`` windows in a row whose
    :attr:`WindowResult.supported_severity` is below ``policy.clear_fraction`` (every feature
    either below that fraction of its thresholds or not distinguishable from the reference)
    re-arm it with a fresh streak. Between the clear level and the thresholds lies the
    hysteresis band: a drift hovering around its threshold triggers once, not on every crossing.
    A skipped window changes no counter: too little data neither confirms nor refutes a drift.
    Pure: the input state is not modified.
    """
    policy = policy or DriftPolicy()
    if not isinstance(state, DriftState):
        state = DriftState.from_dict(state)
    seen = state.windows_seen + 1
    if window.skipped:
        return replace(state, windows_seen=seen), False, f"window skipped: {window.skipped_reason}"

    if not state.armed:
        if window.supported_severity < policy.clear_fraction:
            clear_streak = state.clear_streak + 1
            if clear_streak >= policy.clear_windows:
                new_state = replace(
                    state, armed=True, drifted_streak=0, clear_streak=0, windows_seen=seen
                )
                return new_state, False, f"re-armed after {clear_streak} clear windows"
            reason = f"disarmed: clear window {clear_streak}/{policy.clear_windows}"
        else:
            clear_streak = 0
            reason = (
                f"disarmed: supported severity {window.supported_severity:.2f} not below the "
                f"clear level {policy.clear_fraction:.2f}"
            )
        return replace(state, clear_streak=clear_streak, windows_seen=seen), False, reason

    if not window.drifted:
        return replace(state, drifted_streak=0, windows_seen=seen), False, "no drift"
    streak = state.drifted_streak + 1
    detail = _describe(window.drifted_features)
    if streak < policy.consecutive_windows:
        reason = f"drifted window {streak}/{policy.consecutive_windows}: {detail}"
        return replace(state, drifted_streak=streak, windows_seen=seen), False, reason
    new_state = replace(
        state,
        armed=False,
        drifted_streak=0,
        clear_streak=0,
        windows_seen=seen,
        triggers=state.triggers + 1,
        last_trigger_window=seen,
    )
    return new_state, True, f"drift in {streak} consecutive windows: {detail}"


__all__ = [
    "PSI_MAJOR",
    "PSI_MODERATE",
    "CategoricalReference",
    "DriftPolicy",
    "DriftState",
    "FeatureDrift",
    "NumericReference",
    "ReferenceProfile",
    "TwoSampleTest",
    "WindowResult",
    "autocorrelation_time",
    "benjamini_hochberg",
    "bh_adjusted_pvalues",
    "categorical_autocorrelation_time",
    "category_counts",
    "chi_square_test",
    "compare_windows",
    "decide",
    "effective_sample_size",
    "jensen_shannon",
    "ks_test",
    "normalized_wasserstein",
    "profile_reference",
    "psi",
    "quantile_bin_edges",
    "quartiles",
    "robust_scale",
    "wasserstein",
]
