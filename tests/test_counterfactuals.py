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

import hashlib
import json
import os
import shlex
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.episodes.counterfactuals_oracle import compute_counterfactuals
from assets.ingestion.ingest import RAW_SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT = ROOT / "dbt_project"
DBT = ROOT / ".venv" / "bin" / "dbt"
START, END = date(2023, 1, 1), date(2024, 12, 31)
SPLIT = date(2024, 6, 30)
CUTOFF = pd.Timestamp("2024-09-01", tz="UTC")
PERTURBED = "AAA.P"
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
QUICK = {"build": [], "quick": ["--exclude-resource-type", "test"]}


def random_series(seed: int, s: int, symbol: str, perturb_from: pd.Timestamp | None) -> list:
    """Daily bars on ~90% of days; a regime (vol 0.8%-3%, drift +-0.3%) redrawn every 10-60
    days. Bars at or after ``perturb_from`` follow a second random stream."""
    rng, other = np.random.default_rng([seed, s]), np.random.default_rng([seed, s, 1])
    price, left, vol, drift = 40.0 * (s + 1), 0, 0.01, 0.0
    rows = []
    for d in range((END - START).days + 1):
        day = pd.Timestamp(START + timedelta(days=d), tz="UTC")
        source = other if perturb_from is not None and day >= perturb_from else rng
        if left == 0:
            left = int(source.integers(10, 61))
            vol, drift = float(source.uniform(0.008, 0.03)), float(source.uniform(-3, 3)) / 1e3
        left -= 1
        if source.random() < 0.9:
            price *= float(np.exp(source.normal(drift, vol)))
            rows.append((symbol, day, "1d", price, float(source.uniform(1e3, 2e3))))
    return rows


def random_bars(seed: int) -> pd.DataFrame:
    rows = random_series(seed, 0, "AAA", None) + random_series(seed, 0, PERTURBED, CUTOFF)
    rows += random_series(seed, 1, "BBB", None) + random_series(seed, 2, "C.X", None)
    frame = pd.DataFrame(rows, columns=["symbol", "ts", "interval", "close", "volume"])
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return frame.sort_values(["ts", "symbol"]).reset_index(drop=True)


def write_raw_bars(root: Path, bars: pd.DataFrame) -> None:
    schema = RAW_SCHEMAS["bars"]
    day = bars["ts"].dt.strftime("%Y-%m-%d")
    frame = bars.assign(
        open=bars["close"] * 0.999,
        high=bars["close"] * 1.01,
        low=bars["close"] * 0.99,
        adj_close=None,
        feed="test",
        source_file="landing/test/" + day + ".csv",
        source_hash=day.map(lambda d: hashlib.sha256(f"landing/test/{d}.csv".encode()).hexdigest()),
    )
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    days = day.to_numpy()
    for value in np.unique(days):
        folder = root / "raw" / "bars" / f"date={value}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(np.flatnonzero(days == value)), folder / "data.parquet")


def start_plan(work: Path, name: str, steps: list[tuple[str, str, Path, date, date]]):
    """Runs the steps (kind, export name or "", storage root, min_date, max_date) one
    after the other in one shell subprocess on the warehouse <name>.duckdb; a step with an
    export name copies int_counterfactuals to <export>.parquet afterwards. Kind "build" runs
    every data test too, "quick" none."""
    env = {
        **os.environ,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_INDIRECT_SELECTION": "cautious",
    }
    warehouse = work / f"{name}.duckdb"
    env["DD_WAREHOUSE_PATH"] = str(warehouse)
    commands = []
    for kind, export_name, root, lo, hi in steps:
        variables = {
            "storage_root": str(root),
            "min_date": str(lo),
            "max_date": str(hi),
            "lookback_days": LOOKBACK,
        }
        commands.append(
            [
                str(DBT), "build", *QUICK[kind], "--quiet", "--no-use-colors", "--no-write-json",
                "--select", "+int_counterfactuals",
                "--target-path", str(work / f"target_{name}"),
                "--log-path", str(work / f"logs_{name}"),
                "--vars", json.dumps(variables),
            ]
        )  # fmt: skip
        if export_name:
            copy = (
                f"import duckdb; duckdb.connect('{warehouse}').execute(\"copy int_counterfactuals"
                f" to '{work / export_name}.parquet' (format parquet)\")"
            )
            commands.append([sys.executable, "-c", copy])
    script = " && ".join(" ".join(shlex.quote(part) for part in command) for command in commands)
    return subprocess.Popen(
        ["bash", "-c", script],
        cwd=DBT_PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ("ts", "decision_ts", "matured_at", "latest_analog_matured_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
    return frame


def export(warehouse: Path, table: str) -> pd.DataFrame:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return normalized(con.execute(f"select * from {table}").df())
    finally:
        con.close()


def run_plans(work: Path, plans: dict[str, list]) -> None:
    procs = {name: start_plan(work, name, steps) for name, steps in plans.items()}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"dbt {name} failed:\n{out[-8000:]}"


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return random_bars(11)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, bars: pd.DataFrame) -> dict:
    work = tmp_path_factory.mktemp("counterfactuals")
    write_raw_bars(work / "root", bars)
    run_plans(work, {"full": [("build", "", work / "root", START, END)]})
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
    one = timedelta(days=1)
    steps = [
        ("quick", "", work / "root", START, SPLIT),
        ("quick", "", work / "root", SPLIT + one, END),
    ]
    run_plans(work, {"split": steps})
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
