"""Tests of assets.monitoring.drift_stats: the statistics on known distributions, then the drift decision on
simulated feature streams.

The simulation (:func:`simulate_stream`) draws episode-like features with the dependence real
ones have: ``ret_5`` and ``ret_20`` are AR(1) with rho 0.8 and 0.95 (overlapping return windows),
``vol_20`` is the exponential of an AR(1) with rho 0.9, ``volume_z_20`` is heavy-tailed and
independent, ``regime`` comes in spells of 10 rows on average and ``action`` is independent.
A sequence is a reference of 3,000 rows followed by windows of 500 rows from the same stream.
The rates printed here are quoted in the module docstring; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.signal import lfilter
from scipy.spatial.distance import jensenshannon

from assets.monitoring.drift_stats import (
    DriftPolicy,
    DriftState,
    FeatureDrift,
    WindowResult,
    autocorrelation_time,
    benjamini_hochberg,
    bh_adjusted_pvalues,
    categorical_autocorrelation_time,
    chi_square_test,
    compare_windows,
    decide,
    effective_sample_size,
    jensen_shannon,
    ks_test,
    normalized_wasserstein,
    profile_reference,
    psi,
    quantile_bin_edges,
    quartiles,
    robust_scale,
    wasserstein,
)

REGIMES = np.array(["up_calm", "up_volatile", "down_calm", "down_volatile"])
ACTIONS = np.array(["buy", "sell", "hold"])
NUMERIC = ["ret_5", "ret_20", "vol_20", "volume_z_20"]
CATEGORICAL = ["regime", "action"]
REFERENCE_ROWS = 3_000
WINDOW_ROWS = 500


# ---------------------------------------------------------------------------------------------
# Simulated feature streams
# ---------------------------------------------------------------------------------------------


def ar1(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """A stationary AR(1) series with unit variance."""
    innovations = rng.normal(size=n) * math.sqrt(1 - rho**2)
    start = rng.normal()
    return lfilter([1.0], [1.0, -rho], innovations, zi=[rho * start])[0]


def regime_spells(
    rng: np.random.Generator, n: int, mix: list[float], mean_spell: float = 10.0
) -> np.ndarray:
    """Regime codes in spells of geometric length; each spell's regime is drawn from ``mix``."""
    lengths = rng.geometric(1 / mean_spell, size=2 * int(n / mean_spell) + 10)
    while lengths.sum() < n:
        lengths = np.concatenate([lengths, rng.geometric(1 / mean_spell, size=lengths.size)])
    states = rng.choice(len(mix), size=lengths.size, p=mix)
    return np.repeat(states, lengths)[:n]


UNIFORM_REGIMES = [0.25, 0.25, 0.25, 0.25]
ACTION_MIX = [0.3, 0.3, 0.4]


def simulate_stream(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Features of ``n`` consecutive episodes (categoricals as integer codes)."""
    return {
        "ret_5": ar1(rng, n, 0.8),
        "ret_20": ar1(rng, n, 0.95),
        "vol_20": np.exp(0.3 * ar1(rng, n, 0.9)),
        "volume_z_20": rng.standard_t(5, size=n),
        "regime": regime_spells(rng, n, UNIFORM_REGIMES),
        "action": rng.choice(len(ACTIONS), size=n, p=ACTION_MIX),
    }


def to_frame(stream: dict[str, np.ndarray], rows: slice) -> pd.DataFrame:
    """The rows as episodes; labels as pandas categoricals (cheap to build; see the test
    that plain strings, as the warehouse returns them, give the same result)."""
    frame = pd.DataFrame({name: values[rows] for name, values in stream.items()})
    frame["regime"] = pd.Categorical.from_codes(frame["regime"], REGIMES)
    frame["action"] = pd.Categorical.from_codes(frame["action"], ACTIONS)
    return frame


def window_rows(index: int) -> slice:
    start = REFERENCE_ROWS + index * WINDOW_ROWS
    return slice(start, start + WINDOW_ROWS)


def apply_shift(
    rng: np.random.Generator, stream: dict[str, np.ndarray], kind: str, rows: slice
) -> None:
    """Inject one kind of drift into ``stream`` on ``rows`` (in place)."""
    n = rows.stop - rows.start
    if kind == "mean shift":  # one standard deviation on an AR(1) feature
        stream["ret_5"][rows] += 1.0
    elif kind == "variance change":  # twice the standard deviation of a heavy-tailed feature
        stream["volume_z_20"][rows] *= 2.0
    elif kind == "regime mix":  # up_calm from 25% to 80% of the time
        stream["regime"][rows] = regime_spells(rng, n, [0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3])
    elif kind == "action mix":  # buy from 30% to 60%
        stream["action"][rows] = rng.choice(len(ACTIONS), size=n, p=[0.6, 0.15, 0.25])
    else:
        raise ValueError(kind)


def run_sequence(
    stream: dict[str, np.ndarray], n_windows: int, policy: DriftPolicy
) -> list[WindowResult]:
    """Compare each window with the reference, as the asset would: the profile built once."""
    episodes = to_frame(stream, slice(0, REFERENCE_ROWS + n_windows * WINDOW_ROWS))
    reference = profile_reference(episodes.iloc[:REFERENCE_ROWS], NUMERIC, CATEGORICAL, policy)
    return [
        compare_windows(reference, episodes.iloc[window_rows(i)], NUMERIC, CATEGORICAL, policy)
        for i in range(n_windows)
    ]


def trigger_windows(results: list[WindowResult], policy: DriftPolicy) -> list[int]:
    """Indices of the windows at which :func:`decide` triggers, starting from a fresh state."""
    state, triggered_at = DriftState(), []
    for index, result in enumerate(results):
        state, triggered, _ = decide(state, result, policy)
        if triggered:
            triggered_at.append(index)
    return triggered_at


# ---------------------------------------------------------------------------------------------
# PSI
# ---------------------------------------------------------------------------------------------


def test_psi_of_identical_samples_is_zero():
    sample = np.random.default_rng(0).normal(size=5_000)
    assert psi(sample, sample) == 0.0
    assert psi(sample, np.random.default_rng(0).permutation(sample)) == 0.0


def test_psi_of_a_normal_mean_shift_matches_the_analytic_value():
    rng = np.random.default_rng(1)
    reference, current = rng.normal(size=200_000), rng.normal(0.5, 1.0, size=200_000)
    # The same bins as psi() uses, with the true probability mass of each under both normals.
    edges = np.concatenate([[-np.inf], quantile_bin_edges(reference), [np.inf]])
    p = np.diff(stats.norm.cdf(edges, loc=0.0))
    q = np.diff(stats.norm.cdf(edges, loc=0.5))
    analytic = float(np.sum((q - p) * np.log(q / p)))
    assert analytic == pytest.approx(0.23, abs=0.02)  # a bit below shift**2 = 0.25 (binning)
    assert psi(reference, current) == pytest.approx(analytic, rel=0.05)


def test_psi_is_invariant_under_increasing_transforms():
    rng = np.random.default_rng(2)
    reference, current = rng.normal(size=3_000), rng.normal(0.3, 1.2, size=800)
    expected = psi(reference, current)
    assert expected > 0.05
    assert psi(np.exp(reference), np.exp(current)) == pytest.approx(expected, abs=1e-12)
    assert psi(100 * reference - 7, 100 * current - 7) == pytest.approx(expected, abs=1e-12)


def test_psi_bins_follow_the_reference_quantiles():
    reference = np.random.default_rng(3).normal(size=10_000)
    edges = quantile_bin_edges(reference, bins=10)
    assert edges.size == 9
    assert np.all(np.isin(edges, reference))  # edges are reference values
    shares = np.bincount(np.searchsorted(edges, reference, side="left")) / reference.size
    assert np.allclose(shares, 0.1, atol=1e-3)


def test_psi_copes_with_ties_and_values_beyond_the_reference():
    rng = np.random.default_rng(4)
    discrete = rng.choice([0.0, 0.0, 0.0, 1.0, 2.0], size=2_000)  # 60% ties at 0
    # Deciles 1-6 are all 0, 7-8 are 1, 9 is 2: three distinct edges, four bins.
    assert quantile_bin_edges(discrete).tolist() == [0.0, 1.0, 2.0]
    assert psi(discrete, rng.permutation(discrete)) == 0.0
    # All current values beyond the reference's maximum: one open outer bin, large but finite.
    shifted = psi(rng.normal(size=2_000), rng.normal(10.0, 1.0, size=500))
    assert 5.0 < shifted < math.inf


def test_psi_sampling_noise_is_near_its_rule_of_thumb():
    rng = np.random.default_rng(5)
    values = [psi(rng.normal(size=3_000), rng.normal(size=500)) for _ in range(200)]
    rule_of_thumb = 9 * (1 / 3_000 + 1 / 500)  # (bins - 1) * (1/n_ref + 1/n_cur) = 0.021
    assert np.mean(values) == pytest.approx(rule_of_thumb, rel=0.25)


# ---------------------------------------------------------------------------------------------
# Wasserstein
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [-1.0, 0.3, 0.5, 2.0])
def test_wasserstein_of_a_normal_mean_shift_is_the_shift(shift: float):
    rng = np.random.default_rng(6)
    reference, current = rng.normal(size=50_000), rng.normal(shift, 1.0, size=50_000)
    assert wasserstein(reference, current) == pytest.approx(abs(shift), abs=0.02)
    assert normalized_wasserstein(reference, current) == pytest.approx(abs(shift), abs=0.03)


def test_wasserstein_agrees_with_scipy_and_is_symmetric():
    rng = np.random.default_rng(7)
    a, b = rng.standard_t(3, size=1_000), rng.exponential(size=300)
    assert wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)
    assert wasserstein(a, b) == pytest.approx(wasserstein(b, a), rel=1e-12)


def test_normalized_wasserstein_is_unitless():
    rng = np.random.default_rng(8)
    reference, current = rng.normal(size=2_000), rng.normal(0.4, 1.5, size=500)
    expected = normalized_wasserstein(reference, current)
    assert normalized_wasserstein(reference * 250 + 3, current * 250 + 3) == pytest.approx(
        expected, rel=1e-9
    )


def test_robust_scale_falls_back_when_the_iqr_is_zero():
    assert robust_scale(np.random.default_rng(9).normal(0, 2, size=100_000)) == pytest.approx(
        2.0, rel=0.02
    )
    mostly_zero = np.array([0.0] * 80 + [1.0] * 20)
    assert robust_scale(mostly_zero) == pytest.approx(np.std(mostly_zero))
    assert robust_scale(np.full(50, 3.0)) == 1.0
    assert normalized_wasserstein(np.full(50, 3.0), np.full(50, 3.5)) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Jensen-Shannon
# ---------------------------------------------------------------------------------------------


def test_jensen_shannon_of_identical_distributions_is_zero():
    labels = ["calm", "calm", "volatile", "up", "calm"]
    assert jensen_shannon(labels, list(reversed(labels))) == 0.0
    assert jensen_shannon({"a": 10, "b": 30}, {"a": 10, "b": 30}) == 0.0


def test_jensen_shannon_of_disjoint_distributions_is_one():
    assert jensen_shannon({"a": 5, "b": 5}, {"c": 7}, pseudo_count=0) == 1.0
    # The default pseudo-count keeps it just below 1 once the counts are large.
    assert 0.999 < jensen_shannon({"a": 10_000}, {"b": 10_000}) < 1.0


def test_jensen_shannon_is_symmetric_and_matches_scipy():
    reference, current = {"buy": 30, "sell": 30, "hold": 40}, {"buy": 60, "hold": 25, "x": 15}
    value = jensen_shannon(reference, current, pseudo_count=0)
    assert value == pytest.approx(jensen_shannon(current, reference, pseudo_count=0))
    categories = ["buy", "hold", "sell", "x"]
    p = [reference.get(c, 0) for c in categories]
    q = [current.get(c, 0) for c in categories]
    assert value == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)


def test_jensen_shannon_takes_labels_or_counts_and_ignores_missing_labels():
    labels = ["a"] * 30 + ["b"] * 10 + [None, float("nan")]
    assert jensen_shannon(labels, {"a": 10, "b": 20}) == pytest.approx(
        jensen_shannon({"a": 30, "b": 10}, {"a": 10, "b": 20})
    )
    assert jensen_shannon(pd.Series(labels), ["a", "b"]) == jensen_shannon(labels, ["b", "a"])


def test_the_js_threshold_matches_psi_on_the_examples_of_the_docstring():
    assert jensen_shannon({"a": 50, "b": 50}, {"a": 75, "b": 25}, 0) == pytest.approx(
        0.049, abs=1e-3
    )
    assert jensen_shannon({"a": 50, "b": 50}, {"a": 85, "b": 15}, 0) == pytest.approx(
        0.105, abs=1e-3
    )


# ---------------------------------------------------------------------------------------------
# Tests, effective sample size
# ---------------------------------------------------------------------------------------------


def test_ks_test_agrees_with_scipy_for_independent_rows():
    rng = np.random.default_rng(10)
    for shift in (0.0, 0.1, 0.2, 0.4):
        a, b = rng.normal(size=2_000), rng.normal(shift, 1.0, size=400)
        ours, scipys = ks_test(a, b), stats.ks_2samp(a, b, method="asymp")
        assert ours.statistic == pytest.approx(scipys.statistic, abs=1e-12)
        assert ours.p_value == pytest.approx(scipys.pvalue, abs=0.01)


def test_ks_test_with_effective_sizes_is_less_confident():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=2_000), rng.normal(0.15, 1.0, size=400)
    plain = ks_test(a, b)
    corrected = ks_test(a, b, effective_sizes=(200, 40))
    assert corrected.statistic == plain.statistic
    assert corrected.p_value > plain.p_value
    assert (corrected.n_reference, corrected.n_current) == (200, 40)
    # Sizes are kept within [1, rows]: no test claims more rows than it has.
    assert ks_test(a, b, effective_sizes=(1e9, 0)).n_current == 1.0


def test_chi_square_test_agrees_with_scipy():
    reference, current = {"a": 120, "b": 60, "c": 20}, {"a": 40, "b": 45, "c": 15, "d": 5}
    ours = chi_square_test(reference, current)
    table = np.array([[120, 60, 20, 0], [40, 45, 15, 5]])
    statistic, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    assert ours.statistic == pytest.approx(statistic)
    assert ours.p_value == pytest.approx(p_value)
    assert chi_square_test({"a": 5}, {"a": 9}).p_value == 1.0  # one category: nothing to test


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_autocorrelation_time_of_ar1_series(rho: float):
    series = ar1(np.random.default_rng(12), 40_000, rho)
    assert autocorrelation_time(series) == pytest.approx((1 + rho) / (1 - rho), rel=0.15, abs=0.1)
    # The ESS counts the indicators "x <= quartile". For a Gaussian AR(1) their lag-k
    # correlation at the median is (2 / pi) * arcsin(rho**k), which is where it is largest.
    lags = np.arange(1, 2_000)
    median_tau = 1 + 2 * np.sum(2 / np.pi * np.arcsin(rho**lags))
    assert effective_sample_size(series) == pytest.approx(40_000 / median_tau, rel=0.15)


def test_effective_sample_size_is_invariant_under_increasing_transforms():
    series = ar1(np.random.default_rng(20), 5_000, 0.7)
    assert effective_sample_size(np.exp(3 * series)) == effective_sample_size(series)
    assert effective_sample_size([np.nan, 1.0, np.inf]) == 1.0
    assert effective_sample_size([]) == 0.0


def test_autocorrelation_time_of_regime_spells():
    codes = regime_spells(np.random.default_rng(13), 40_000, UNIFORM_REGIMES, mean_spell=10)
    # Indicator of a category: lag-k correlation ~ (1 - 1/10)**k, so tau ~ 2 * 10 - 1 = 19.
    assert categorical_autocorrelation_time(REGIMES[codes]) == pytest.approx(19, rel=0.2)
    assert categorical_autocorrelation_time(["a", "b"] * 100) == 1.0  # negative: clipped to 1
    assert autocorrelation_time(np.ones(50)) == 1.0


def test_effective_sizes_calibrate_tests_on_autocorrelated_rows():
    """KS and chi-square on AR(1) / spell data reject far too often without the correction."""
    rng = np.random.default_rng(14)
    plain_ks, corrected_ks, plain_chi, corrected_chi = [], [], [], []
    for _ in range(200):
        a, b = ar1(rng, 3_000, 0.9), ar1(rng, 500, 0.9)
        plain_ks.append(ks_test(a, b).p_value < 0.05)
        sizes = (effective_sample_size(a), effective_sample_size(b, quartiles(a)))
        corrected_ks.append(ks_test(a, b, sizes).p_value < 0.05)
        ra = REGIMES[regime_spells(rng, 3_000, UNIFORM_REGIMES)]
        rb = REGIMES[regime_spells(rng, 500, UNIFORM_REGIMES)]
        plain_chi.append(chi_square_test(ra, rb).p_value < 0.05)
        sizes = (
            ra.size / categorical_autocorrelation_time(ra),
            rb.size / categorical_autocorrelation_time(rb),
        )
        corrected_chi.append(chi_square_test(ra, rb, sizes).p_value < 0.05)
    rates = {
        "ks": (np.mean(plain_ks), np.mean(corrected_ks)),
        "chi2": (np.mean(plain_chi), np.mean(corrected_chi)),
    }
    print(
        "\nrejection rate of equal samples at a nominal 5%: "
        + ", ".join(
            f"{test} {plain:.1%} plain, {fixed:.1%} corrected"
            for test, (plain, fixed) in rates.items()
        )
    )
    for plain, corrected in rates.values():
        assert plain > 0.4  # the iid assumption is badly wrong here
        assert corrected <= 0.08  # nominal 5%, Monte Carlo slack for 200 draws


# ---------------------------------------------------------------------------------------------
# Benjamini-Hochberg
# ---------------------------------------------------------------------------------------------


def test_benjamini_hochberg_hand_worked_example():
    # m = 10, q = 0.05: the line k * q / m is 0.005, 0.010, 0.015, ..., 0.050.
    # Sorted p: 0.001 <= 0.005 yes, 0.008 <= 0.010 yes, 0.039 > 0.015, 0.041 > 0.020,
    # 0.09 > 0.025, and every later p is above its line too. The largest k with p_(k) on or
    # below the line is 2: reject the two smallest p-values, 0.001 and 0.008.
    pvalues = [0.041, 0.001, 0.60, 0.039, 0.008, 0.09, 0.20, 0.75, 0.31, 0.95]
    rejected = benjamini_hochberg(pvalues, q=0.05)
    assert np.flatnonzero(rejected).tolist() == [1, 4]  # the positions of 0.001 and 0.008


def test_benjamini_hochberg_is_step_up():
    # m = 4, q = 0.05: line 0.0125, 0.025, 0.0375, 0.05. p_(1) = 0.02 is above its line, but
    # p_(4) = 0.04 is below its own, so all four are rejected (Bonferroni would reject none).
    assert benjamini_hochberg([0.04, 0.02, 0.03, 0.035], q=0.05).all()
    assert not benjamini_hochberg([0.04, 0.02, 0.03, 0.051], q=0.05).any()


def test_adjusted_pvalues_agree_with_rejections_and_nan_is_untested():
    rng = np.random.default_rng(15)
    pvalues = np.concatenate([rng.uniform(size=30), rng.uniform(0, 0.01, size=10)])
    adjusted = bh_adjusted_pvalues(pvalues)
    for q in (0.01, 0.05, 0.1, 0.25):
        assert np.array_equal(benjamini_hochberg(pvalues, q), adjusted <= q)
    assert np.all(adjusted >= pvalues) and np.all(adjusted <= 1)
    with_nan = np.array([0.01, np.nan, 0.02])
    assert benjamini_hochberg(with_nan, 0.05).tolist() == [True, False, True]  # m = 2
    assert np.isnan(bh_adjusted_pvalues(with_nan)[1])
    assert not benjamini_hochberg([np.nan, np.nan]).any()


# ---------------------------------------------------------------------------------------------
# compare_windows
# ---------------------------------------------------------------------------------------------


def _stream_with_shift(seed: int, kind: str | None, n_windows: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    stream = simulate_stream(rng, REFERENCE_ROWS + n_windows * WINDOW_ROWS)
    if kind:
        apply_shift(rng, stream, kind, slice(REFERENCE_ROWS, len(stream["ret_5"])))
    return stream


def first_window(stream) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, first current window) of a stream."""
    return to_frame(stream, slice(0, REFERENCE_ROWS)), to_frame(stream, window_rows(0))


def test_compare_windows_flags_only_the_shifted_feature():
    stream = _stream_with_shift(16, "mean shift")
    result = compare_windows(*first_window(stream), NUMERIC, CATEGORICAL)
    by_name = {f.feature: f for f in result.features}
    assert [f.feature for f in result.drifted_features] == ["ret_5"]
    shifted = by_name["ret_5"]
    assert shifted.psi > 0.5 and shifted.wasserstein > 0.7 and shifted.q_value < 0.05
    # AR(1) with rho 0.8: the median indicator's tau is 6.4, so 500 rows are worth about 80
    # independent ones (an estimate from 500 rows: wide bounds).
    assert 40 < shifted.n_effective_current < 160
    assert math.isnan(shifted.js) and math.isnan(by_name["regime"].psi)
    assert result.max_psi == shifted.psi and result.severity == shifted.severity


def test_a_profile_gives_the_same_result_as_the_dataframe():
    stream = _stream_with_shift(17, "regime mix")
    reference, current = first_window(stream)
    policy = DriftPolicy()
    direct = compare_windows(reference, current, NUMERIC, CATEGORICAL, policy)
    profile = profile_reference(reference, NUMERIC, CATEGORICAL, policy)
    assert compare_windows(profile, current, NUMERIC, CATEGORICAL, policy) == direct
    with pytest.raises(ValueError, match="psi_bins"):
        compare_windows(profile, current, NUMERIC, CATEGORICAL, DriftPolicy(psi_bins=20))


def test_labels_as_strings_or_categoricals_give_the_same_result():
    stream = _stream_with_shift(21, "regime mix")
    reference, current = first_window(stream)
    as_categorical = compare_windows(reference, current, NUMERIC, CATEGORICAL)
    as_strings = compare_windows(
        reference.astype({"regime": object, "action": object}),
        current.astype({"regime": object, "action": object}),
        NUMERIC,
        CATEGORICAL,
    )
    assert as_strings == as_categorical
    assert {f.feature for f in as_strings.drifted_features} == {"regime"}


EMPTY_SUMMARY = {"supported_severity": 0.0, "drifted": 0.0, "n_drifted_features": 0.0}


def test_small_windows_and_sparse_features_are_not_tested():
    stream = _stream_with_shift(18, None)
    reference = to_frame(stream, slice(0, REFERENCE_ROWS))
    small = compare_windows(reference, reference.head(150), NUMERIC, CATEGORICAL)
    assert small.skipped and "too few rows" in small.skipped_reason
    current = to_frame(stream, window_rows(0))
    current.loc[current.index[:400], "vol_20"] = np.nan  # 100 values left, min_rows is 200
    result = compare_windows(reference, current, NUMERIC, CATEGORICAL)
    by_name = {f.feature: f for f in result.features}
    assert not result.skipped
    assert not by_name["vol_20"].tested and by_name["vol_20"].n_current == 100
    assert by_name["ret_5"].tested
    # Neither the untested feature's NaNs nor the skipped window's break the metadata.
    json.dumps(result.to_metadata(), allow_nan=False)
    assert small.to_metadata() == {"n_reference": 3000.0, "n_current": 150.0, **EMPTY_SUMMARY}
    with pytest.raises(KeyError, match="nope"):
        compare_windows(reference, current, ["nope"], [])


def test_window_metadata_is_a_flat_dict_of_finite_floats():
    stream = _stream_with_shift(19, "action mix")
    result = compare_windows(*first_window(stream), NUMERIC, CATEGORICAL)
    metadata = result.to_metadata()
    assert all(isinstance(v, float) and math.isfinite(v) for v in metadata.values())
    assert metadata["action/drifted"] == 1.0 and metadata["n_drifted_features"] == 1.0
    assert "action/psi" not in metadata and "ret_5/psi" in metadata
    json.dumps(metadata, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# decide
# ---------------------------------------------------------------------------------------------


def window(severity: float, rejected: bool = True) -> WindowResult:
    """A hand-made one-feature window: drifted when rejected and severity above 1."""
    feature = FeatureDrift(
        feature="x",
        kind="numeric",
        n_reference=1_000,
        n_current=500,
        psi=0.25 * severity,
        wasserstein=0.5 * severity,
        p_value=0.001 if rejected else 0.5,
        q_value=0.001 if rejected else 0.5,
        rejected=rejected,
        severity=severity,
        exceeds_threshold=severity > 1,
        drifted=rejected and severity > 1,
    )
    return WindowResult(features=(feature,), n_reference=1_000, n_current=500)


SKIPPED = WindowResult(features=(), n_reference=1_000, n_current=10, skipped_reason="too few")


def run_decisions(windows: list[WindowResult], policy: DriftPolicy | None = None) -> list[str]:
    """One letter per window: T triggered, . otherwise; and the final state's JSON round trip."""
    state, marks = DriftState(), []
    for item in windows:
        state, triggered, reason = decide(state, item, policy)
        assert reason
        marks.append("T" if triggered else ".")
        state = DriftState.from_json(json.dumps(state.to_dict()))  # as a cursor would
    return marks


def test_decide_needs_consecutive_drifted_windows():
    high, low = window(2.0), window(0.5)
    assert run_decisions([high, low, high, low, high]) == list(".....")
    assert run_decisions([high, high]) == list(".T")
    assert run_decisions([high, high, high], DriftPolicy(consecutive_windows=3)) == list("..T")
    assert run_decisions([high], DriftPolicy(consecutive_windows=1)) == list("T")


def test_an_effect_without_a_rejected_test_is_not_drift():
    noisy = window(3.0, rejected=False)
    assert run_decisions([noisy] * 5) == list(".....")


def test_decide_hysteresis_triggers_once_and_rearms_after_clearing():
    high, middle, clear, noisy = window(2.0), window(0.7), window(0.2), window(3.0, False)
    sequence = [
        high,  # drifted 1/2
        high,  # trigger, disarm
        high,  # drift persists: quiet
        middle,  # in the hysteresis band: neither drifted nor clear
        high,
        high,  # still quiet: no re-trigger while disarmed
        clear,  # clear 1/2
        middle,  # back in the band: the clear streak restarts
        clear,  # clear 1/2
        clear,  # clear 2/2: re-armed
        high,  # drifted 1/2
        high,  # trigger again
    ]
    assert "".join(run_decisions(sequence)) == ".T.........T"
    # A large effect the test cannot tell from noise counts as clear (see supported_severity).
    assert "".join(run_decisions([high, high, noisy, noisy, high, high])) == ".T...T"


def test_skipped_windows_change_no_counter():
    high = window(2.0)
    state, triggered, _ = decide(DriftState(), high)
    assert not triggered and state.drifted_streak == 1
    state, triggered, reason = decide(state, SKIPPED)
    assert not triggered and state.drifted_streak == 1 and "skipped" in reason
    state, triggered, _ = decide(state, high)
    assert triggered and state.windows_seen == 3 and state.last_trigger_window == 3


def test_state_round_trips_through_json():
    state = DriftState()
    for item in [window(2.0), window(2.0), window(0.1)]:
        state, _, _ = decide(state, item)
    assert state == DriftState(
        armed=False, clear_streak=1, windows_seen=3, triggers=1, last_trigger_window=2
    )
    assert DriftState.from_json(state.to_json()) == state
    assert DriftState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert DriftState.from_json(None) == DriftState() == DriftState.from_dict({})
    assert DriftState.from_dict({**state.to_dict(), "added_later": 1}) == state
    assert decide(None, window(2.0))[0].drifted_streak == 1  # no cursor yet: initial state
    # decide also takes the plain dict a cursor holds, and never mutates its input.
    as_dict = state.to_dict()
    decide(as_dict, window(0.1))
    assert as_dict == state.to_dict()


def test_policy_rejects_inconsistent_thresholds():
    with pytest.raises(ValueError, match="clear_fraction"):
        DriftPolicy(clear_fraction=1.5)
    with pytest.raises(ValueError, match="fdr_q"):
        DriftPolicy(fdr_q=0)


# ---------------------------------------------------------------------------------------------
# Simulation: false triggers without drift, delay and hysteresis with drift
# ---------------------------------------------------------------------------------------------

NULL_SEQUENCES = 500
NULL_WINDOWS = 8


def test_no_drift_rarely_triggers_over_many_seeded_sequences():
    """500 sequences of 8 windows drawn from the reference process, default policy.

    Bounds: (1) a window has a drifted feature only if BH rejects something, and when nothing
    changed and the p-values are valid BH keeps the chance of any rejection at or below
    q = 5% per window. (2) A trigger needs K = 2 drifted windows in a row; the per-sequence
    false-trigger rate is asserted at or below 1% (at most 5 of 500): one false retrain per
    hundred 8-window periods, and a bound the simulation can resolve (0 of 500 observed means
    below 0.6% with 95% confidence). K = 1 and 3 are printed for comparison, and the first
    50 sequences are rerun without the autocorrelation correction to show what it buys.
    """
    policy = DriftPolicy()
    uncorrected = replace(policy, correct_autocorrelation=False)
    drifted_flags, rejected_any = [], []
    triggers = {1: 0, 2: 0, 3: 0}
    uncorrected_triggers, uncorrected_sequences = 0, 50
    for seed in range(NULL_SEQUENCES):
        stream = simulate_stream(
            np.random.default_rng(seed), REFERENCE_ROWS + NULL_WINDOWS * WINDOW_ROWS
        )
        results = run_sequence(stream, NULL_WINDOWS, policy)
        drifted_flags.extend(r.drifted for r in results)
        rejected_any.extend(any(f.rejected for f in r.features) for r in results)
        for k in triggers:
            triggers[k] += bool(trigger_windows(results, replace(policy, consecutive_windows=k)))
        if seed < uncorrected_sequences:
            results = run_sequence(stream, NULL_WINDOWS, uncorrected)
            uncorrected_triggers += bool(trigger_windows(results, uncorrected))
    window_rate = float(np.mean(drifted_flags))
    rejection_rate = float(np.mean(rejected_any))
    rates = {k: n / NULL_SEQUENCES for k, n in triggers.items()}
    uncorrected_rate = uncorrected_triggers / uncorrected_sequences
    print(
        f"\nno drift: {NULL_SEQUENCES} sequences x {NULL_WINDOWS} windows; windows with a BH "
        f"rejection {rejection_rate:.2%}, drifted windows {window_rate:.2%}; false-trigger "
        f"rate per sequence: "
        + ", ".join(f"K={k}: {rate:.1%}" for k, rate in rates.items())
        + f"; K=2 without the autocorrelation correction: {uncorrected_rate:.0%}"
    )
    assert rejection_rate <= 0.05
    assert rates[policy.consecutive_windows] <= 0.01
    assert uncorrected_rate > 0.2  # iid tests on autocorrelated features: the correction matters


SHIFT_START, SHIFT_WINDOWS, CLEAR_WINDOWS = 3, 6, 4
SHIFT_SEEDS = 10


@pytest.mark.parametrize("kind", ["mean shift", "variance change", "regime mix", "action mix"])
def test_a_shift_triggers_after_k_windows_once_and_again_after_clearing(kind: str):
    """3 clean windows, 6 shifted, 4 clean, 6 shifted again, over 10 seeds.

    Expected: a trigger K = 2 windows into each shift (at most two windows later), none while
    a shift persists or during the clean gap (re-arming takes 2 clear windows), and a second
    trigger for the second shift: exactly two triggers per sequence.
    """
    policy = DriftPolicy()
    first = SHIFT_START
    second = first + SHIFT_WINDOWS + CLEAR_WINDOWS
    n_windows = second + SHIFT_WINDOWS
    delays = []
    for seed in range(SHIFT_SEEDS):
        rng = np.random.default_rng(10_000 + seed)
        stream = simulate_stream(rng, REFERENCE_ROWS + n_windows * WINDOW_ROWS)
        for start in (first, second):
            shifted = slice(window_rows(start).start, window_rows(start + SHIFT_WINDOWS - 1).stop)
            apply_shift(rng, stream, kind, shifted)
        triggered_at = trigger_windows(run_sequence(stream, n_windows, policy), policy)
        assert len(triggered_at) == 2, f"seed {seed}: triggers at {triggered_at}"
        for start, index in zip((first, second), triggered_at, strict=True):
            delays.append(index - start + 1)  # windows of drift seen when it triggered
    print(f"\n{kind}: detection delay in windows {np.bincount(delays).tolist()} (index = delay)")
    assert all(policy.consecutive_windows <= d <= policy.consecutive_windows + 2 for d in delays)
    assert np.mean(np.array(delays) == policy.consecutive_windows) >= 0.8
