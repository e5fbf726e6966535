"""int_step_labels and int_recorded_decisions (dbt): process labels of reasoning steps and
recorded decisions as episodes.

One ``dbt build --select +int_step_labels`` (every data test included) over the random daily
bars of tests/episodes/test_counterfactuals.py (helpers.bars.perturbed_bars) plus a raw decisions file with three recorded decisions:
one an hour after a bar's close, one with no rationale, one on a symbol without bars. Then the
last month is rebuilt alone: re-running a partition must give the same rows.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import dbt
from helpers.bars import END, START, write_episode_inputs

from assets.ingestion.ingest import RAW_SCHEMAS

PERTURBATIONS = {"misread_number", "wrong_sign", "contradicting_conclusion"}
DECISION_SCHEMA = RAW_SCHEMAS["decisions"]


def dbt_build(work: Path, root: Path, windows: list[tuple[date, date]], *extra: str) -> None:
    dbt.build_windows(
        work, "build", work / "warehouse.duckdb", root, "+int_step_labels", windows, *extra
    )


def read(work: Path, sql: str) -> pd.DataFrame:
    return dbt.read(work / "warehouse.duckdb", sql)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("step_labels")
    _, decisions = write_episode_inputs(work / "root", 11)
    dbt_build(work, work / "root", [(START, END)])
    result = {
        "labels": read(work, "select * from int_step_labels"),
        "counterfactuals": read(work, "select * from int_counterfactuals"),
        "recorded": read(work, "select * from int_recorded_decisions"),
        "points": read(work, "select * from int_decision_points"),
        "decisions": decisions,
    }
    # Re-running the last month alone (no tests) must reproduce its rows exactly.
    dbt_build(work, work / "root", [(date(2024, 12, 1), END)], "--exclude-resource-type", "test")
    result["rebuilt"] = read(work, "select * from int_step_labels")
    return result


def steps_of(labels: pd.DataFrame) -> pd.DataFrame:
    return labels.sort_values(["trace_id", "step_index"]).reset_index(drop=True)


def test_every_episode_has_its_trace_and_one_perturbed_copy(built: dict) -> None:
    labels, counterfactuals = built["labels"], built["counterfactuals"]
    traces = labels.drop_duplicates("trace_id")
    originals = traces[~traces["is_perturbed"]]
    assert set(originals["episode_id"]) == set(counterfactuals["episode_id"])
    assert (originals["trace_id"] == originals["episode_id"]).all()
    perturbed = traces[traces["is_perturbed"]]
    assert perturbed["episode_id"].is_unique and len(perturbed) == len(originals)
    assert set(perturbed["perturbation"]) == PERTURBATIONS
    # Every kind is common (wrong_sign needs a buy or sell inference, so it is the rarest).
    assert perturbed["perturbation"].value_counts().min() > len(perturbed) / 20


def test_faulty_steps_are_labelled_false_and_caught_by_the_checks(built: dict) -> None:
    labels = built["labels"]
    faulty = labels[labels["is_perturbed"] & (labels["step_index"] == labels["faulty_step_index"])]
    assert len(faulty) == labels.loc[labels["is_perturbed"], "trace_id"].nunique()
    assert (faulty["auto_soft_label"] == 0).all() and (~faulty["auto_hard_label"]).all()
    assert (faulty["label_source"] == "perturbation").all()
    # The exact checks catch every fault on their own (the override only names the source).
    assert (faulty["verified"] == False).all()  # noqa: E712
    kinds = faulty.groupby("perturbation")["kind"].unique().map(set).to_dict()
    assert kinds == {
        "misread_number": {"observation"},
        "wrong_sign": {"inference"},
        "contradicting_conclusion": {"decision"},
    }


def test_perturbed_traces_differ_from_their_original_in_the_faulty_step_only(built: dict) -> None:
    labels = built["labels"]
    original = labels[~labels["is_perturbed"]].set_index(["episode_id", "step_index"])
    perturbed = labels[labels["is_perturbed"]].set_index(["episode_id", "step_index"])
    joined = perturbed.join(original, rsuffix="_o")
    at_fault = joined.index.get_level_values("step_index") == joined["faulty_step_index"]
    changed = (joined["text"] != joined["text_o"]) & (joined["claim"] != joined["claim_o"])
    assert (changed == at_fault).all()
    same = joined[~at_fault]
    for column in ("verified", "auto_hard_label", "label_source"):
        left, right = same[column], same[f"{column}_o"]
        assert ((left == right) | (left.isna() & right.isna())).all(), column
    # A misread number is the shown value times ten: '2.07%' -> '20.70%'.
    misread = joined[at_fault & (joined["perturbation"] == "misread_number")].iloc[0]
    before = float(misread["claim_o"].split("=")[1])
    after = float(misread["claim"].split("=")[1])
    assert after == pytest.approx(before * 10 if abs(before) >= 1e-4 else before + 0.01, abs=1e-6)


def test_observations_are_verified_exactly_against_the_features(built: dict) -> None:
    labels, points = built["labels"], built["points"].set_index("decision_point_id")
    observed = labels[(~labels["is_perturbed"]) & (labels["kind"] == "observation")]
    assert len(observed) > 1000 and observed["verified"].all()
    assert (observed["auto_soft_label"] == 1).all()
    # Recheck a sample in Python: every claimed item is the feature at 6 decimals.
    for row in observed.sample(200, random_state=1).to_dict("records"):
        features = points.loc[row["decision_point_id"]]
        for item in row["claim"].split(";"):
            name, value = item.split("=")
            expected = features[name]
            shown = expected if isinstance(expected, str) else f"{expected:.6f}"
            assert shown == value, (row["claim"], name, expected)


def test_monte_carlo_labels_are_the_continuation_actions_p_best(built: dict) -> None:
    labels, cf = built["labels"], built["counterfactuals"].set_index("episode_id")
    judged = labels[labels["kind"] != "observation"].join(cf, on="episode_id", rsuffix="_cf")
    p_best = judged.apply(
        lambda r: r[f"p_best_{r['continuation_action']}"] if r["continuation_action"] else None,
        axis=1,
    ).astype(float)
    mc = judged["mc_label"].astype(float)
    assert np.allclose(mc.fillna(-1), p_best.fillna(-1))
    decisions = judged[(judged["kind"] == "decision") & ~judged["is_perturbed"]]
    assert (decisions["continuation_action"] == decisions["action"]).all()
    with_env = cf[cf["n_rollouts"].notna()]
    assert len(with_env) > 1000 and (with_env["n_rollouts"] == 16).all()
    total = with_env[["p_best_buy", "p_best_sell", "p_best_hold"]].sum(axis=1)
    assert np.allclose(total, 1)
    # Rollouts agree with the ex-ante judgement they resample.
    own = with_env.apply(lambda r: r[f"p_best_{r['action']}"], axis=1)
    good = with_env["decision_quality"] == "good"
    bad = with_env["decision_quality"] == "bad"
    assert good.sum() > 50 and bad.sum() > 50
    assert (own[good] >= 0.5).mean() > 0.9
    assert (own[bad] <= 0.5).mean() > 0.9
    # Unperturbed, unchecked steps take the MC label; hard labels are the 0.5 threshold.
    unchecked = judged[~judged["is_perturbed"] & (judged["verified"] != False)]  # noqa: E712
    known = unchecked[unchecked["mc_label"].notna()]
    assert (known["auto_soft_label"] == known["mc_label"]).all()
    assert (known["auto_hard_label"] == (known["mc_label"] >= 0.5)).all()
    assert 0.05 < known["auto_hard_label"].mean() < 0.95


def test_recorded_decisions_attach_to_the_latest_point_before_them(built: dict) -> None:
    recorded = built["recorded"].set_index("decision_id")
    decisions = built["decisions"].set_index("decision_id")
    # carol's symbol has no decision point: not an episode (the raw row stays in raw/).
    assert set(recorded.index) == {"d-1", "d-2"}
    for decision_id, symbol in (("d-1", "AAA"), ("d-2", "BBB")):
        row, sent = recorded.loc[decision_id], decisions.loc[decision_id]
        ts = pd.Timestamp(sent["bar_ts"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert row["decision_point_id"] == hashlib.md5(f"{symbol}|1d|{ts}".encode()).hexdigest()
        assert row["policy_id"] == f"recorded:{sent['agent_id']}"
        assert pd.Timestamp(row["decision_ts"]) <= pd.Timestamp(sent["ts"])
        assert decisions.loc[decision_id, "source_hash"] in list(row["source_hashes"])
    steps = [dict(s) for s in recorded.loc["d-1", "reasoning_steps"]]
    assert [s["kind"] for s in steps] == ["observation"] * 3 + ["inference", "decision"]
    assert steps[3]["text"] == "Strong trend." and steps[4]["claim"] == "action=buy;size=0.5000"
    assert [s["step_index"] for s in steps] == [1, 2, 3, 4, 5]
    no_rationale = [dict(s) for s in recorded.loc["d-2", "reasoning_steps"]]
    assert [(s["step_index"], s["kind"]) for s in no_rationale[3:]] == [(4, "decision")]
    # Both matched decisions are episodes with counterfactuals and labelled traces.
    episodes = set(recorded["episode_id"].dropna())
    assert episodes <= set(built["counterfactuals"]["episode_id"])
    labels = built["labels"][built["labels"]["episode_id"].isin(episodes)]
    rationale = labels[(labels["kind"] == "inference") & ~labels["is_perturbed"]]
    assert len(rationale) == 1 and pd.isna(rationale["verified"].iloc[0])


def test_rebuilding_a_month_gives_the_same_rows(built: dict) -> None:
    before, after = steps_of(built["labels"]), steps_of(built["rebuilt"])
    assert len(before) == len(after)
    pd.testing.assert_frame_equal(before, after)
