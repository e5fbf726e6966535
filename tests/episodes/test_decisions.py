"""int_decisions (dbt) against the Python oracle assets/episodes/reference_policies.py, and its no-hindsight rules.

Random bars (two symbols of daily bars with volatility regimes, jumps, trends and a constant
volume stretch; one symbol of 1-minute bars with a flat stretch, so vol_20 = 0) are written as
raw Parquet partitions. One subprocess runs both dbt invocations (dbtRunner in one process):
``dbt build --select +int_decisions`` over the whole range (the seed, the models, the data tests
of the seed and of int_decisions), then ``dbt run --select int_decisions`` of the last days again
(the pre-hook must replace, not duplicate, a window's rows).

Checks: every row equals the oracle (action, size to 4 dp, every step's kind, text and claim);
steps are ordered observation -> inference -> decision; observation claims equal int_features'
values at the same decision point; a rebuilt window equals the first build; the compiled SQL of
int_decisions and its ancestors never names a forward-looking column; and, on constructed
decision points run through the compiled SQL and the oracle alike, each policy produces every
action it can (risk_off never buys), ties at a threshold included.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from helpers import dbt
from helpers.bars import write_raw_bars

from assets.core.lakehouse import lakehouse_connection
from assets.episodes.reference_policies import (
    ACTIONS,
    HINDSIGHT_TERMS,
    KINDS,
    decide,
    episode_id,
    hindsight_terms,
    load_policies,
    observation_mismatches,
    parse_claim,
)

START, N_DAYS, REBUILT_DAYS = date(2021, 1, 4), 330, 4

# ---------------------------------------------------------------- random bars


def random_bars(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s, symbol in enumerate(("AAA", "BBB")):
        price, vol, drift = 40.0 * (s + 1), 0.015, 0.0
        for d in range(N_DAYS):
            if rng.random() < 0.04:
                vol = float(rng.choice([0.006, 0.015, 0.045]))
            if rng.random() < 0.03:
                drift = float(rng.choice([-0.006, 0.0, 0.0, 0.006]))
            if rng.random() < 0.1:
                continue  # a missing day
            day = pd.Timestamp(START + timedelta(days=d), tz="UTC")
            jump = rng.normal(0, 4 * vol) if rng.random() < 0.04 else 0.0
            open_ = price * np.exp(rng.normal(0, vol / 4))
            close = open_ * np.exp(rng.normal(drift, vol) + jump)
            high = max(open_, close) * np.exp(abs(rng.normal(0, vol / 2)))
            low = min(open_, close) * np.exp(-abs(rng.normal(0, vol / 2)))
            constant = s == 1 and 150 <= d < 200
            volume = 800.0 if constant else float(rng.lognormal(7, 0.6))
            rows.append((symbol, day, "1d", open_, high, low, close, volume))
            price = close
    # 1-minute bars of one symbol on the last days, with a flat stretch (vol_20 = 0).
    price, count = 25.0, 0
    for d in range(N_DAYS - 3, N_DAYS):
        day = pd.Timestamp(START + timedelta(days=d), tz="UTC")
        for minute in np.sort(rng.choice(1440, size=110, replace=False)):
            flat = 150 <= count < 185
            jump = rng.normal(0, 0.01) if rng.random() < 0.03 else 0.0
            ret = 0.0 if flat else rng.normal(0, 0.002) + jump
            open_ = price
            close = open_ * np.exp(ret)
            spread = 1.0 if flat else np.exp(abs(rng.normal(0, 0.001)))
            volume = 5.0 if flat else float(rng.integers(1, 40))
            ts = day + pd.Timedelta(minutes=int(minute))
            rows.append(
                (
                    "CCC",
                    ts,
                    "1m",
                    open_,
                    max(open_, close) * spread,
                    min(open_, close) / spread,
                    close,
                    volume,
                )
            )
            price, count = close, count + 1
    columns = ["symbol", "ts", "interval", "open", "high", "low", "close", "volume"]
    return pd.DataFrame(rows, columns=columns).sort_values(["ts", "symbol", "interval"])


# ---------------------------------------------------------------- the builds (once per module)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full build, then the last days again (the pre-hook must replace, not add)."""
    work = tmp_path_factory.mktemp("decisions")
    bars = random_bars(7)
    days = sorted(bars["ts"].dt.date.unique())
    first, last = days[0], days[-1]
    write_raw_bars(work / "raw", bars)

    def window(lo: date, hi: date) -> dict:
        return {"storage_root": str(work / "raw"), "min_date": str(lo), "max_date": str(hi)}

    warehouse = work / "wh.duckdb"
    first_build = work / "first_build.parquet"
    steps = [
        # The seed, the models up to int_decisions and the data tests of the seed and of
        # int_decisions (the upstream models' own tests belong to their modules). Only tests
        # whose every parent is built: downstream models' relationship tests
        # (int_counterfactuals → int_decisions) are not ours to run here.
        dbt.step(
            warehouse,
            "build", "--select", "+int_decisions",
            "--exclude", "+int_decision_points,resource_type:test",
            "--indirect-selection", "cautious",
            vars=window(first, last),
            export={"int_decisions": first_build},
        ),
        dbt.step(
            warehouse,
            "run", "--select", "int_decisions",
            vars=window(last - timedelta(days=REBUILT_DAYS - 1), last),
        ),
    ]  # fmt: skip
    dbt.run_plan(work, "decisions", steps, timeout=300)
    order = "order by symbol, bar_interval, ts, policy_id, policy_version"
    return {
        "bars": bars,
        "warehouse": warehouse,
        "target": dbt.target_path(work, "decisions"),
        "window": (first, last),
        "decisions": dbt.read(warehouse, f"select * from int_decisions {order}"),
        "first_build": dbt.read(warehouse, f"select * from read_parquet('{first_build}') {order}"),
        "features": dbt.read(warehouse, "select * from int_features"),
        "points": dbt.read(warehouse, "select * from int_decision_points"),
    }


# ---------------------------------------------------------------- helpers


def features_of(row: dict) -> dict:
    """A decision point's features as the oracle reads them (NaN -> None)."""
    return {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in row.items()}


def as_steps(value: object) -> list[dict]:
    return [dict(step) for step in value]


def assert_matches_oracle(decisions: pd.DataFrame, points: pd.DataFrame) -> None:
    policies = {(p.policy_id, p.policy_version): p for p in load_policies()}
    by_point = {row["decision_point_id"]: row for row in points.to_dict("records")}
    assert len(decisions) == len(points) * len(policies)
    wrong = []
    for row in decisions.to_dict("records"):
        point = features_of(by_point[row["decision_point_id"]])
        expected = decide(point, policies[(row["policy_id"], row["policy_version"])])
        got = (row["action"], round(row["size"], 4), as_steps(row["reasoning_steps"]))
        want = (expected.action, round(expected.size, 4), [s.as_dict() for s in expected.steps])
        if got != want or row["size"] != expected.size:
            wrong.append((row["decision_point_id"], row["policy_id"], got, want))
    assert not wrong, f"{len(wrong)} rows differ from the oracle; first: {wrong[0]}"


# ---------------------------------------------------------------- dbt equals the oracle


def test_runtime_and_shape(built: dict) -> None:
    decisions, points = built["decisions"], built["points"]
    assert len(points) > 300 and set(points["bar_interval"]) == {"1d", "1m"}
    assert (points["vol_20"] == 0).any() and points["volume_z_20"].isna().any()
    assert set(decisions["policy_id"]) == {"momentum", "mean_reversion", "breakout", "risk_off"}
    assert decisions["episode_id"].is_unique
    assert not decisions.duplicated(["decision_point_id", "policy_id", "policy_version"]).any()
    assert decisions["size"].between(0, 1).all()
    assert ((decisions["action"] == "hold") == (decisions["size"] == 0)).all()
    # Lineage travels from the decision point.
    hashes = points.set_index("decision_point_id")["source_hashes"].map(tuple)
    carried = decisions["source_hashes"].map(tuple)
    assert (carried.to_numpy() == hashes.loc[decisions["decision_point_id"]].to_numpy()).all()
    assert all(len(h) == 64 for hs in carried for h in hs)


def test_every_row_equals_the_oracle(built: dict) -> None:
    assert_matches_oracle(built["decisions"], built["points"])


def test_episode_id_and_keys(built: dict) -> None:
    decisions = built["decisions"]
    for row in decisions.sample(50, random_state=1).to_dict("records"):
        expected = episode_id(
            row["symbol"],
            row["bar_interval"],
            row["decision_ts"],
            row["policy_id"],
            row["policy_version"],
        )
        assert row["episode_id"] == expected
    points = built["points"].set_index("decision_point_id")
    joined = decisions.join(
        points[["symbol", "ts", "decision_ts"]], on="decision_point_id", rsuffix="_point"
    )
    assert (joined["ts"] == joined["ts_point"]).all()
    assert (joined["decision_ts"] == joined["decision_ts_point"]).all()


def test_random_data_exercises_every_action(built: dict) -> None:
    seen = built["decisions"].groupby("policy_id")["action"].agg(set).to_dict()
    for policy in ("momentum", "mean_reversion", "breakout"):
        assert seen[policy] == set(ACTIONS), (policy, seen[policy])
    assert seen["risk_off"] == {"sell", "hold"}


def test_steps_are_ordered(built: dict) -> None:
    order = {kind: i for i, kind in enumerate(KINDS)}
    for value in built["decisions"]["reasoning_steps"]:
        steps = as_steps(value)
        kinds = [s["kind"] for s in steps]
        assert [s["step_index"] for s in steps] == list(range(1, len(steps) + 1))
        assert kinds == sorted(kinds, key=order.__getitem__), kinds
        assert 2 <= kinds.count("observation") <= 4
        assert 1 <= kinds.count("inference") <= 2
        assert kinds.count("decision") == 1
        for step in steps:
            parse_claim(step["claim"])  # every claim has the grammar


def test_observation_claims_verify_exactly_against_features(built: dict) -> None:
    """Each observation claim equals the feature of int_features at the decision point, rounded
    to the 6 decimals it shows; the decision claim equals the row's action and size."""
    features = {
        (row["symbol"], row["bar_interval"], row["ts"]): features_of(row)
        for row in built["features"].to_dict("records")
    }
    decisions = built["decisions"]
    checked = 0
    for row in decisions.to_dict("records"):
        key = (row["symbol"], row["bar_interval"], row["ts"])
        point = features[key]
        steps = as_steps(row["reasoning_steps"])
        assert observation_mismatches(steps, point) == [], (key, row["policy_id"])
        items = {i["name"]: i["value"] for i in parse_claim(steps[-1]["claim"])}
        assert items == {"action": row["action"], "size": row["size"]}
        checked += sum(s["kind"] == "observation" for s in steps)
    assert checked >= 2 * len(decisions)
    # The check has teeth: a claim off by one in the 6th decimal fails.
    row = decisions.iloc[0]
    steps = as_steps(row["reasoning_steps"])
    name, value = steps[0]["claim"].split("=")
    steps[0]["claim"] = f"{name}={float(value) + 1e-6:.6f}"
    point = features[(row["symbol"], row["bar_interval"], row["ts"])]
    assert observation_mismatches(steps, point)


def test_rebuilding_a_window_replaces_its_rows(built: dict) -> None:
    """The second build of the last days (their 1m bars included) left the table as it was."""
    again, first = built["decisions"], built["first_build"]
    last = pd.Timestamp(built["window"][1])
    rebuilt = again["bar_date"] > last - pd.Timedelta(days=REBUILT_DAYS)
    assert rebuilt.sum() > 100 and set(again.loc[rebuilt, "bar_interval"]) == {"1d", "1m"}
    assert not again.duplicated("episode_id").any()
    pd.testing.assert_frame_equal(again, first, check_exact=True)


# ---------------------------------------------------------------- no hindsight


def _ancestors(manifest: dict, unique_id: str) -> set[str]:
    seen, todo = set(), [unique_id]
    while todo:
        node = manifest["nodes"].get(todo.pop())
        if node is None:
            continue
        for parent in node["depends_on"].get("nodes", []):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_no_hindsight_in_compiled_sql(built: dict) -> None:
    target = built["target"]
    manifest = json.loads((target / "manifest.json").read_text())
    model = "model.decision_data.int_decisions"
    compiled = {}
    for unique_id in {model} | _ancestors(manifest, model):
        node = manifest["nodes"].get(unique_id)
        if node is None or node["resource_type"] != "model":
            continue
        path = target / "compiled" / "decision_data" / node["original_file_path"]
        compiled[node["name"]] = path.read_text()
    assert {"int_decisions", "int_decision_points", "int_features"} <= set(compiled)
    found = {name: hindsight_terms(sql) for name, sql in compiled.items()}
    assert not any(found.values()), found
    columns = [*built["decisions"].columns, *built["points"].columns]
    assert not [c for c in columns if hindsight_terms(c)]
    # The check has teeth.
    assert hindsight_terms("select LEAD (close) over w, fwd_ret_5 from x") == ["fwd_", "lead("]
    assert set(hindsight_terms("outcome_ret_1, matured_at")) == {"outcome", "matured"}
    assert set(HINDSIGHT_TERMS) == {"fwd_", "outcome", "lead(", "matured"}


# ---------------------------------------------------------------- constructed inputs


def _point(i: int, day: date, **features: object) -> dict:
    base = {
        "ret_1": 0.001,
        "ret_5": 0.002,
        "ret_20": 0.004,
        "vol_20": 0.01,
        "volume_z_20": 0.2,
        "range_pct": 0.01,
        "gap": 0.0,
        "trend_gap_50": 0.003,
        "regime": "up_calm",
    }
    ts = pd.Timestamp(day, tz="UTC") + pd.Timedelta(minutes=i)
    return {
        "decision_point_id": f"constructed-{i:03d}",
        "symbol": "ZZZ",
        "bar_interval": "1m",
        "ts": ts,
        "decision_ts": ts + pd.Timedelta(minutes=1),
        "bar_date": pd.Timestamp(day),
        **base,
        **features,
    }


K = 0.01 * np.sqrt(20)  # one 20-bar sigma at vol_20 = 0.01 (the default)
# (policy, features over the defaults of _point, expected action, expected size)
CONSTRUCTED = [
    ("momentum", dict(ret_20=2.5 * K), "buy", 0.5),
    ("momentum", dict(ret_20=-2.5 * K), "sell", 0.5),
    ("momentum", dict(ret_20=0.3 * K), "hold", 0.0),
    ("momentum", dict(ret_20=1.0 * K), "hold", 0.0),  # exactly on the band (1.0000)
    ("momentum", dict(ret_20=9.0 * K), "buy", 1.0),  # size capped
    ("momentum", dict(ret_20=-1e-7), "hold", 0.0),  # signal -0.0000: '-0.00 sigma'
    ("momentum", dict(ret_20=0.01, vol_20=0.0), "buy", 1.0),  # flat series: vol_floor
    ("mean_reversion", dict(ret_1=0.035, ret_5=0.01), "sell", 0.875),  # 1-bar spike up
    ("mean_reversion", dict(ret_1=-0.002, ret_5=-0.06), "buy", 0.6708),  # 5-bar drop
    ("mean_reversion", dict(ret_1=0.005, ret_5=0.01), "hold", 0.0),
    # |z1| = |z5| = 2.0000: the 1-bar move wins the tie and sits on the band.
    ("mean_reversion", dict(ret_1=0.02, ret_5=-0.0447213595499958), "hold", 0.0),
    ("breakout", dict(trend_gap_50=2.0 * K, volume_z_20=2.5), "buy", 0.5),  # by volume
    ("breakout", dict(trend_gap_50=-2.0 * K, range_pct=0.03, volume_z_20=None), "sell", 0.5),
    ("breakout", dict(trend_gap_50=2.0 * K, volume_z_20=None), "hold", 0.0),  # unconfirmed
    ("breakout", dict(trend_gap_50=0.5 * K, volume_z_20=3.0), "hold", 0.0),  # inside the band
    ("risk_off", dict(regime="down_volatile"), "sell", 1.0),
    ("risk_off", dict(regime="up_calm", vol_20=0.05), "sell", 1.0),  # above the ceiling
    ("risk_off", dict(regime="up_calm", vol_20=0.03), "hold", 0.0),  # exactly on it
    ("risk_off", dict(regime="down_calm"), "hold", 0.0),
]


def test_constructed_inputs_through_sql_and_oracle(built: dict) -> None:
    """Constructed decision points through the compiled SQL of int_decisions (run against the
    built seed) and through the oracle: the same rows for every policy at every point, the
    expected action and size of each case, and every action each policy can take."""
    day = built["window"][1]
    points = pd.DataFrame([_point(i, day, **case[1]) for i, case in enumerate(CONSTRUCTED)])
    points["source_hashes"] = [["0" * 64]] * len(points)
    points["volume_z_20"] = points["volume_z_20"].astype(float)
    compiled_path = built["target"] / "compiled" / "decision_data" / "models"
    compiled = (compiled_path / "intermediate" / "int_decisions.sql").read_text()
    relation = '"lake"."main"."int_decision_points"'
    assert relation in compiled
    with lakehouse_connection(built["warehouse"]) as con:
        con.register("constructed_points", points)
        out = con.sql(compiled.replace(relation, "constructed_points")).df()
    assert_matches_oracle(out, points.drop(columns="source_hashes"))
    got = out.set_index(["decision_point_id", "policy_id"])
    actions: dict[str, set[str]] = {}
    for i, (policy, _, action, size) in enumerate(CONSTRUCTED):
        row = got.loc[(f"constructed-{i:03d}", policy)]
        assert (row["action"], row["size"]) == (action, size), (i, policy, row["action"])
        actions.setdefault(policy, set()).add(action)
    assert actions == {
        "momentum": set(ACTIONS),
        "mean_reversion": set(ACTIONS),
        "breakout": set(ACTIONS),
        "risk_off": {"sell", "hold"},  # a risk overlay never buys
    }
    steps = got.loc[("constructed-005", "momentum"), "reasoning_steps"]
    assert as_steps(steps)[3]["text"].startswith("20-bar momentum is -0.00 sigma")


def test_oracle_trace_sample() -> None:
    policy = next(p for p in load_policies() if p.policy_id == "momentum")
    point = features_of(_point(0, date(2024, 1, 2), ret_20=0.14, vol_20=0.012))
    decision = decide(point, policy)
    assert (decision.action, decision.size) == ("buy", 0.5217)
    assert [s.as_dict() for s in decision.steps] == [
        {
            "step_index": 1,
            "kind": "observation",
            "implies": None,
            "text": "20-bar log return is +14.00%.",
            "claim": "ret_20=0.140000",
        },
        {
            "step_index": 2,
            "kind": "observation",
            "implies": None,
            "text": "20-bar volatility is 1.20% per bar.",
            "claim": "vol_20=0.012000",
        },
        {
            "step_index": 3,
            "kind": "observation",
            "implies": None,
            "text": "Regime is up_calm; the close is +0.30% from its 50-bar mean.",
            "claim": "regime=up_calm;trend_gap_50=0.003000",
        },
        {
            "step_index": 4,
            "kind": "inference",
            "implies": "buy",
            "text": "20-bar momentum is +2.61 sigma, above the +1.00 sigma entry band: "
            "the trend is up.",
            "claim": "momentum_sigma=2.6087>1.0000",
        },
        {
            "step_index": 5,
            "kind": "decision",
            "implies": "buy",
            "text": "buy 0.5217 of capital",
            "claim": "action=buy;size=0.5217",
        },
    ]
