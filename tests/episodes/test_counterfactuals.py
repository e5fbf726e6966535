"""int_counterfactuals (dbt) against the pandas oracle (assets/episodes/counterfactuals_oracle.py), the
no-future property of its counterfactual environment, and day-ordered incremental builds.

Random daily bars over 2023 and 2024 (volatility and drift redrawn every few weeks, so every
regime recurs) are written as raw Parquet partitions for four series: AAA, BBB, C.X and AAA.P,
a copy of AAA whose bars from CUTOFF on follow another random path (prices and which days have
bars). Analogs never cross symbols, so AAA.P is AAA with its future changed.

- ``built``: one ``dbt build --select +int_counterfactuals`` of both years (default vars,
  lookback 400; every data test, the singular int_counterfactuals_no_future too). Checks: dbt
  equals the oracle; decisions of AAA and AAA.P taken before CUTOFF have the same ex-ante values
  (and realized ones when their horizon ends before it); luck + ev_action == reward.
- ``split_built`` (slow): the same bars built in two windows in date order; equals the one-shot
  build where its outcomes had landed, and everywhere ex ante.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import dbt
from helpers.bars import CUTOFF, END, PERTURBED, START, perturbed_bars, write_raw_bars

from assets.episodes.counterfactuals_oracle import compute_counterfactuals

SPLIT = date(2024, 6, 30)
HORIZONS, COST_BPS, LOOKBACK = [1, 5, 20], 5, 400
EV_COLUMNS = ["n_analogs", "latest_analog_matured_at", "ev_buy", "ev_sell", "ev_hold"]
EV_COLUMNS += ["ev_se_buy", "ev_se_sell", "ev_se_hold", "best_action_ex_ante"]
EV_COLUMNS += ["advantage", "advantage_se", "decision_quality"]
REALIZED = ["is_mature", "cf_reward_buy", "cf_reward_sell", "cf_reward_hold", "reward"]
FLOATS = ["size", "cf_reward_buy", "cf_reward_sell", "cf_reward_hold", "reward", "ev_buy"]
FLOATS += ["ev_sell", "ev_hold", "ev_se_buy", "ev_se_sell", "ev_se_hold", "ev_action"]
FLOATS += ["advantage", "advantage_se", "luck"]
EXACT = ["action", "is_mature", "n_analogs", "latest_analog_matured_at"]
EXACT += ["best_action_ex_ante", "decision_quality"]


def build(work: Path, name: str, windows: list[tuple[date, date]], tests: bool) -> None:
    """``dbt build --select +int_counterfactuals`` of each window in turn on <name>.duckdb;
    every data test too, or none."""
    skip = [] if tests else ["--exclude-resource-type", "test"]
    dbt.build_windows(
        work,
        name,
        work / f"{name}.duckdb",
        work / "root",
        "+int_counterfactuals",
        windows,
        *skip,
        lookback_days=LOOKBACK,
    )


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ("ts", "decision_ts", "matured_at", "latest_analog_matured_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
    return frame


def export(warehouse: Path, table: str) -> pd.DataFrame:
    return normalized(dbt.read(warehouse, f"select * from {table}"))


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return perturbed_bars(11)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, bars: pd.DataFrame) -> dict:
    work = tmp_path_factory.mktemp("counterfactuals")
    write_raw_bars(work / "root", bars)
    build(work, "full", [(START, END)], tests=True)
    return {
        "full": export(work / "full.duckdb", "int_counterfactuals"),
        "points": export(work / "full.duckdb", "int_decision_points"),
        "decisions": export(work / "full.duckdb", "int_decisions"),
        "bars": bars,
    }


@pytest.fixture(scope="module")
def split_built(tmp_path_factory: pytest.TempPathFactory, bars: pd.DataFrame) -> pd.DataFrame:
    work = tmp_path_factory.mktemp("counterfactuals_split")
    write_raw_bars(work / "root", bars)
    windows = [(START, SPLIT), (SPLIT + timedelta(days=1), END)]
    build(work, "split", windows, tests=False)
    return export(work / "split.duckdb", "int_counterfactuals")


def by_episode(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("episode_id").reset_index(drop=True)


def assert_same_values(actual: pd.DataFrame, expected: pd.DataFrame, columns: list[str]) -> None:
    for column in columns:
        left, right = actual[column], expected[column]
        if column in FLOATS:
            a, b = left.to_numpy(float), right.to_numpy(float)
            same = np.isclose(a, b, rtol=1e-9, atol=1e-9) | (np.isnan(a) & np.isnan(b))
        else:
            same = (left == right) | (left.isna() & right.isna())
        assert same.all(), f"{column}:\n{actual.loc[~same, ['episode_id', column]].head()}\n" + (
            f"{expected.loc[~same, ['episode_id', column]].head()}"
        )


def test_matches_oracle(built: dict) -> None:
    actual = by_episode(built["full"])
    expected = by_episode(
        compute_counterfactuals(
            built["points"], built["decisions"], built["bars"], HORIZONS, COST_BPS, LOOKBACK
        )
    )
    assert len(actual) == len(built["decisions"]) == len(expected)
    assert (actual["episode_id"] == expected["episode_id"]).all()
    assert_same_values(actual, expected, [*EXACT, *FLOATS])
    # The data mean something: environments exist, both qualities occur, some rows immature,
    # some environments are capped by the look-back rather than by analog_count.
    assert actual["ev_buy"].notna().mean() > 0.5
    assert {"good", "bad", "neutral"} <= set(actual["decision_quality"].dropna())
    assert (~actual["is_mature"]).any() and actual["is_mature"].mean() > 0.9
    assert set(actual["action"]) == {"buy", "sell", "hold"}


def test_luck_plus_ev_is_reward(built: dict) -> None:
    frame = built["full"]
    known = frame[frame["is_mature"] & frame["ev_buy"].notna()]
    assert len(known) > 100
    np.testing.assert_allclose(known["luck"] + known["ev_action"], known["reward"], atol=1e-12)
    assert frame.loc[~frame["is_mature"], ["reward", "luck", "cf_reward_buy"]].isna().all().all()
    hold = frame[frame["action"] == "hold"]
    assert (hold.loc[hold["is_mature"], "reward"] == 0).all()


def test_no_future_in_environment(built: dict) -> None:
    full = built["full"]
    used = full["latest_analog_matured_at"].notna()
    assert (full.loc[used, "latest_analog_matured_at"] <= full.loc[used, "decision_ts"]).all()
    # Every bar of AAA.P from CUTOFF on differs from AAA's: decisions taken before it may not
    # change their ex-ante values.
    key = ["ts", "policy_id", "policy_version"]
    before = full[full["decision_ts"] <= CUTOFF]
    original = before[before["symbol"] == "AAA"].sort_values(key).reset_index(drop=True)
    changed = before[before["symbol"] == PERTURBED].sort_values(key).reset_index(drop=True)
    assert len(original) > 1000
    assert original[key].equals(changed[key])
    assert_same_values(original, changed, [*EV_COLUMNS, "action", "size"])
    # Realized values change only through bars inside the horizon.
    done = (original["matured_at"] <= CUTOFF).to_numpy()
    assert 1000 < done.sum() < len(original)
    assert_same_values(original[done], changed[done], REALIZED)
    assert not np.allclose(
        original.loc[~done, "cf_reward_buy"], changed.loc[~done, "cf_reward_buy"]
    )
    # The perturbation is real: later environments differ.
    later = full[full["decision_ts"] > CUTOFF + pd.Timedelta(days=60)]
    merged = later[later["symbol"] == "AAA"].merge(
        later[later["symbol"] == PERTURBED], on=key, suffixes=("", "_p")
    )
    merged = merged[merged["ev_buy"].notna() & merged["ev_buy_p"].notna()]
    assert len(merged) > 20
    assert not np.allclose(merged["ev_buy"], merged["ev_buy_p"])


@pytest.mark.slow
def test_split_build_equals_one_shot(built: dict, split_built: pd.DataFrame) -> None:
    """Built in two windows in date order (the first before its last outcomes landed): the
    second window equals the one-shot build, the first one does ex ante."""
    full, split = by_episode(built["full"]), by_episode(split_built)
    assert (full["episode_id"] == split["episode_id"]).all()
    second = (full["bar_date"] > pd.Timestamp(SPLIT)).to_numpy()
    assert second.sum() > 500
    assert_same_values(split[second], full[second], [*EXACT, *FLOATS])
    assert_same_values(split[~second], full[~second], EV_COLUMNS)
    assert not split.loc[~second, "is_mature"].all()
