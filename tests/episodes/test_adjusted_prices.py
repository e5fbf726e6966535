"""Split/dividend-adjusted prices: a split is not a crash, adjusting twice changes nothing.

stg_bars (dbt) and the point-in-time reference (assets.episodes.point_in_time_features) adjust
the same way; the dbt-vs-reference comparisons of the feature tests cover their agreement.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from assets.episodes.point_in_time_features import adjust_prices, compute_features


def split_bars(days: int = 60, split_day: int = 40) -> pd.DataFrame:
    """Daily bars of one stock with a 2:1 split: delivered prices halve and the volume doubles
    at ``split_day``; the vendor's adjusted close divides the earlier closes by 2."""
    rng = np.random.default_rng(3)
    true_close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, days)))
    ratio = np.where(np.arange(days) < split_day, 2.0, 1.0)  # delivered / adjusted
    delivered = true_close * ratio
    return pd.DataFrame(
        {
            "symbol": "SPLT",
            "interval": "1d",
            "ts": pd.date_range("2024-01-01", periods=days, freq="D", tz="UTC"),
            "open": delivered,
            "high": delivered * 1.01,
            "low": delivered * 0.99,
            "close": delivered,
            "volume": 1000.0 / ratio,
            "adj_close": true_close,
        }
    )


def test_a_split_is_not_a_crash():
    bars = split_bars()
    adjusted = compute_features(bars).set_index("ts")
    delivered = compute_features(bars.drop(columns="adj_close")).set_index("ts")
    split_ts = bars["ts"].iloc[40]
    assert delivered.loc[split_ts, "ret_1"] < np.log(0.55)  # the raw series "crashes" by half
    assert abs(adjusted.loc[split_ts, "ret_1"]) < 0.05
    # Away from the split, adjusted and delivered features agree (ratios of the same series).
    early = bars["ts"].iloc[25]
    assert adjusted.loc[early, "ret_5"] == np.float64(delivered.loc[early, "ret_5"])


def test_adjusting_scales_prices_and_volume_and_is_idempotent():
    bars = split_bars()
    once = adjust_prices(bars)
    assert np.allclose(once["close"], bars["adj_close"])
    assert np.allclose(once["open"].iloc[:40], bars["open"].iloc[:40] / 2)
    assert np.allclose(once["volume"], 1000.0)
    twice = adjust_prices(once)
    pd.testing.assert_frame_equal(once, twice)


def test_bars_without_an_adjusted_close_stay_as_delivered():
    bars = split_bars().assign(adj_close=[None] * 30 + [0.0] * 30)
    out = adjust_prices(bars)
    for column in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(out[column].to_numpy(float), bars[column].to_numpy(float))
