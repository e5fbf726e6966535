"""The marts (fct_step_labels, fct_decision_episodes, ds_sft, ds_dpo, ds_prm), their pandera
contracts and the leakage check (assets/episodes/datasets.py), on random daily bars.

Random daily bars over 2023 and 2024 for three symbols (volatility and drift redrawn every few
weeks, so every regime recurs) are written as raw Parquet partitions. The module fixture runs:

1. ``dbt build`` of everything the datasets need (every data test too), no feedback yet (the
   empty-relation branch of stg_feedback);
2. expert feedback lands for two steps of one original trace that is in ds_sft (raw Parquet,
   two days: a rater changes their mind on the second), and ``dbt build --select
   stg_feedback+`` rebuilds the marts only;
3. the marts once more without changes (a rebuild must give identical tables).

Seeded corruptions of copies of the warehouse show that the contracts and the leakage check
fail when they should.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from helpers import dbt
from helpers.bars import regime_bars, write_raw_bars, write_raw_table

from assets.core.dbt import project_vars
from assets.core.lakehouse import as_lakehouse, attach_sql, lakehouse_connection
from assets.episodes import datasets
from assets.episodes.reference_policies import HINDSIGHT_TERMS, load_policies, pct, signed, upct

MARTS = ("stg_feedback", "fct_step_labels", "fct_decision_episodes", "ds_sft", "ds_dpo", "ds_prm")


# ---------------------------------------------------------------- data


def write_raw_feedback(root: Path, ratings: list[tuple[str, int, int, str, str]]) -> None:
    """Ratings (episode_id, step_index, rating, rater_id, rated day) as raw feedback partitions."""
    frame = pd.DataFrame(ratings, columns=["episode_id", "step_index", "rating", "rater_id", "day"])
    frame["ts"] = pd.to_datetime(frame["day"], utc=True) + pd.Timedelta(hours=9)
    frame["comment"] = "test rating"
    frame["feed"] = "expert-test"
    frame["source_file"] = "landing/expert-test/" + frame["day"] + ".csv"
    frame["source_hash"] = frame["source_file"].map(
        lambda f: hashlib.sha256(f.encode()).hexdigest()
    )
    write_raw_table(root, "feedback", frame, frame["day"])


def read(warehouse: Path, sql: str) -> pd.DataFrame:
    with lakehouse_connection(warehouse) as con:
        return con.execute(sql).df()


def arrow(warehouse: Path, sql: str) -> pa.Table:
    with lakehouse_connection(warehouse) as con:
        return con.execute(sql).to_arrow_table()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("marts")
    root, warehouse = work / "root", work / "warehouse.duckdb"
    bars = regime_bars(5)
    write_raw_bars(root, bars)
    dbt.run(work, warehouse, root, "build", "--select", "+ds_sft +ds_dpo +ds_prm")
    before = {
        "labels": read(warehouse, "select * from fct_step_labels where not is_perturbed"),
        "sft": read(warehouse, "select episode_id from ds_sft"),
        "stg_feedback": read(warehouse, "select * from stg_feedback"),
    }

    # An original trace in ds_sft (all steps correct): an expert calls step 1 wrong (rater r1
    # first said +1, then -1 the next day; r2 says -1) and step 2 half right (+1 and 0).
    rated = read(
        warehouse,
        "select episode_id from ds_sft where split = 'train' order by episode_id limit 1",
    )["episode_id"][0]
    ratings = [
        (rated, 1, 1, "r1", "2025-01-10"),
        (rated, 1, -1, "r1", "2025-01-11"),
        (rated, 1, -1, "r2", "2025-01-11"),
        (rated, 2, 1, "r1", "2025-01-11"),
        (rated, 2, 0, "r2", "2025-01-11"),
    ]
    write_raw_feedback(root, ratings)
    dbt.run(work, warehouse, root, "build", "--select", "stg_feedback+")
    first = {m: arrow(warehouse, f"select * from {m}") for m in MARTS}
    dbt.run(work, warehouse, root, "build", "--select", "stg_feedback marts")
    second = {m: arrow(warehouse, f"select * from {m}") for m in MARTS}
    counts = {m: first[m].num_rows for m in MARTS}
    print(f"mart row counts: {counts}")
    return {
        "work": work,
        "root": root,
        "warehouse": warehouse,
        "bars": bars,
        "before": before,
        "rated": rated,
        "first": first,
        "second": second,
    }


@pytest.fixture(scope="module")
def episodes(built: dict) -> pd.DataFrame:
    return read(built["warehouse"], "select * from fct_decision_episodes")


def copy_warehouse(built: dict, name: str) -> Path:
    """A new lakehouse holding a copy of every table of the built one."""
    copy = built["work"] / f"{name}.sqlite"
    with lakehouse_connection(copy, read_only=False) as con:
        con.execute(attach_sql(as_lakehouse(built["warehouse"]), read_only=True, alias="src"))
        tables = con.execute(
            "select table_name from information_schema.tables"
            " where table_catalog = 'src' and table_type = 'BASE TABLE'"
        ).fetchall()
        for (table,) in tables:
            con.execute(f"create table {table} as select * from src.{table}")
    return copy


def mutate(path: Path, *statements: str) -> None:
    with lakehouse_connection(path, read_only=False) as con:
        for statement in statements:
            con.execute(statement)


# ---------------------------------------------------------------- the marts


def test_marts_hold_data_and_pass_their_contracts(built: dict) -> None:
    counts = {m: t.num_rows for m, t in built["first"].items()}
    assert counts["stg_feedback"] == 5
    assert all(counts[m] > 0 for m in MARTS), counts
    with lakehouse_connection(built["warehouse"]) as con:
        for model in ("fct_decision_episodes", *datasets.DATASETS.values()):
            result = datasets.validate_model(con, model)
            assert result.passed, (model, result.failures_by_check, result.failure_sample)
            assert result.rows == counts[model]
        sample, leaks = datasets.point_in_time_leaks(con)
    assert len(sample) == datasets.LEAKAGE_SAMPLE
    assert leaks.empty, leaks


def _observations_correct(step_labels) -> bool:
    return all(s["hard_label"] for s in step_labels if s["kind"] == "observation")


def test_sft_takes_the_evidence_target_once_per_point(built: dict, episodes: pd.DataFrame) -> None:
    sft = read(built["warehouse"], "select * from ds_sft")
    joined = sft.merge(episodes, on="episode_id", suffixes=("", "_episode"))
    assert len(joined) == len(sft) > 20
    assert joined["is_mature"].all()
    assert (joined["action"] == joined["target_action"]).all()
    assert joined["decision_point_id"].is_unique
    assert (joined["decision_point_id"] == joined["decision_point_id_episode"]).all()
    assert set(joined["split"]) <= set(datasets.SPLITS)
    assert (joined["split"] == joined["split_episode"]).all()
    assert (joined["completion"] == joined["completion_episode"]).all()
    # Every step correct; a hold (whose automatic inference labels follow p_best, under which
    # hold is almost never best) needs its observations correct.
    observations = joined["step_labels"].map(_observations_correct)
    steps_ok = joined["all_steps_correct"].astype(bool) | (
        (joined["action"] == "hold") & observations
    )
    assert steps_ok.all()
    # Hold is reachable, and every action is a target somewhere.
    assert {"buy", "sell", "hold"} <= set(episodes["target_action"].dropna())
    assert (sft["action"] == "hold").any()
    # Every decision point with a qualifying episode is there, represented by its lowest policy.
    qualifying = episodes[
        episodes["is_mature"]
        & (episodes["action"] == episodes["target_action"])
        & (
            (episodes["all_steps_correct"] == True)  # noqa: E712
            | ((episodes["action"] == "hold") & episodes["step_labels"].map(_observations_correct))
        )
        & episodes["split"].isin(datasets.SPLITS)
    ]
    first = qualifying.sort_values(["policy_id", "policy_version"]).drop_duplicates(
        "decision_point_id"
    )
    assert set(first["episode_id"]) == set(sft["episode_id"])
    # Decision-first: the first line is the decision step, the rest the trace in order.
    for row in joined.itertuples():
        lines = row.completion.split("\n")
        assert lines[0].split()[0].rstrip(":") == row.action
        texts = [s["text"] for s in row.reasoning_steps]
        kinds = [s["kind"] for s in row.reasoning_steps]
        assert lines[0] == texts[kinds.index("decision")]
        assert lines[1:] == [t for t, k in zip(texts, kinds, strict=True) if k != "decision"]


def test_target_is_the_evidence_rule_shown_in_the_prompt(episodes: pd.DataFrame) -> None:
    points = episodes.drop_duplicates("decision_point_id")
    with_env = points[points["ev_buy"].notna()]
    assert len(with_env) > 50
    for row in with_env.itertuples():
        t_buy = float(f"{row.ev_buy / row.ev_se_buy:.2f}")
        t_sell = float(f"{row.ev_sell / row.ev_se_sell:.2f}")
        if t_buy > 2 and t_buy >= t_sell:
            expected = "buy"
        elif t_sell > 2:
            expected = "sell"
        else:
            expected = "hold"
        assert row.target_action == expected, (row.decision_point_id, t_buy, t_sell)
        # The prompt shows exactly the numbers the rule reads.
        assert f"- buy: {row.ev_buy:+.3f} +- {row.ev_se_buy:.3f} (t = {t_buy:+.2f})" in row.prompt
        assert f"- sell: {row.ev_sell:+.3f} +- {row.ev_se_sell:.3f} (t = {t_sell:+.2f})" in (
            row.prompt
        )
        assert f"the {row.n_analogs} latest earlier {row.regime} bars" in row.prompt
        assert "only if its t is above 2, else hold" in row.prompt
    assert points[points["ev_buy"].isna()]["target_action"].isna().all()


def test_dpo_pairs_share_a_prompt_and_beat_the_noise(built: dict, episodes: pd.DataFrame) -> None:
    dpo = read(built["warehouse"], "select * from ds_dpo")
    assert len(dpo) > 20
    by_id = episodes.set_index("episode_id")
    chosen, rejected = by_id.loc[dpo["chosen_episode_id"]], by_id.loc[dpo["rejected_episode_id"]]
    assert (
        chosen["decision_point_id"].to_numpy() == rejected["decision_point_id"].to_numpy()
    ).all()
    assert (chosen["prompt"].to_numpy() == dpo["prompt"]).all()
    assert (rejected["prompt"].to_numpy() == dpo["prompt"]).all()
    assert (chosen["action"].to_numpy() == dpo["chosen_action"]).all()
    assert (rejected["action"].to_numpy() == dpo["rejected_action"]).all()
    assert (dpo["chosen_action"] != dpo["rejected_action"]).all()
    assert (dpo["chosen"] != dpo["rejected"]).all()
    assert (chosen["completion"].to_numpy() == dpo["chosen"]).all()
    ev = {a: chosen[f"ev_{a}"].to_numpy() for a in ("buy", "sell", "hold")}
    se = {a: chosen[f"ev_se_{a}"].to_numpy() for a in ("buy", "sell", "hold")}
    rows = np.arange(len(dpo))
    ev_chosen = np.select([dpo["chosen_action"] == a for a in ev], list(ev.values()))
    ev_rejected = np.select([dpo["rejected_action"] == a for a in ev], list(ev.values()))
    se_chosen = np.select([dpo["chosen_action"] == a for a in se], list(se.values()))
    se_rejected = np.select([dpo["rejected_action"] == a for a in se], list(se.values()))
    assert (ev_chosen[rows] > ev_rejected[rows]).all()
    np.testing.assert_allclose(dpo["margin"], ev_chosen - ev_rejected, atol=1e-12)
    np.testing.assert_allclose(dpo["margin_se"], np.hypot(se_chosen, se_rejected), atol=1e-12)
    z = float(project_vars()["dpo_noise_z"])
    np.testing.assert_allclose(dpo["noise_threshold"], z * dpo["margin_se"], atol=1e-12)
    assert (dpo["margin"] > dpo["noise_threshold"]).all()
    # One pair per decision point and action pair; mature, not embargoed.
    assert not dpo.duplicated(["decision_point_id", "chosen_action", "rejected_action"]).any()
    assert (
        not dpo.assign(
            pair=[
                frozenset(p) for p in zip(dpo["chosen_action"], dpo["rejected_action"], strict=True)
            ]
        )
        .duplicated(["decision_point_id", "pair"])
        .any()
    )
    assert chosen["is_mature"].all() and rejected["is_mature"].all()
    assert set(dpo["split"]) <= set(datasets.SPLITS)
    # Pairs were dropped for noise: some same-point action pairs with a positive margin exist
    # below the threshold.
    candidates = episodes[episodes["split"].isin(datasets.SPLITS) & episodes["ev_buy"].notna()]
    margins = (candidates["ev_buy"] - candidates["ev_hold"]).abs()
    noise = z * candidates["ev_se_buy"]
    assert ((margins > 0) & (margins <= noise)).any()


def test_prm_lists_align_and_faults_are_labelled_wrong(built: dict) -> None:
    prm = read(built["warehouse"], "select * from ds_prm")
    assert prm["is_perturbed"].any() and (~prm["is_perturbed"]).any()
    lengths = prm[["completions", "labels", "soft_labels", "label_sources"]].map(len)
    assert (lengths.eq(prm["n_steps"], axis=0)).all().all()
    for row in prm[prm["is_perturbed"]].itertuples():
        assert 1 <= row.faulty_step_index <= row.n_steps
        assert row.labels[row.faulty_step_index - 1] == False  # noqa: E712
        assert row.soft_labels[row.faulty_step_index - 1] == 0
        assert row.label_sources[row.faulty_step_index - 1] == "perturbation"
    assert prm.loc[~prm["is_perturbed"], "faulty_step_index"].isna().all()
    soft = np.concatenate(prm["soft_labels"].to_numpy())
    assert ((soft >= 0) & (soft <= 1)).all()
    # An original trace's completions are its episode's steps in trace order (the decision
    # last); the SFT completion is the same lines, decision first.
    sft = read(built["warehouse"], "select episode_id, completion from ds_sft")
    originals = prm[~prm["is_perturbed"]].merge(sft, on="episode_id")
    assert len(originals) > 0
    decision_first = originals["completions"].map(lambda steps: "\n".join([steps[-1], *steps[:-1]]))
    assert (decision_first == originals["completion"]).all()
    # A perturbed trace differs from its original in exactly the faulty step.
    pairs = prm[prm["is_perturbed"]].merge(
        prm[~prm["is_perturbed"]], on="episode_id", suffixes=("", "_original")
    )
    assert len(pairs) > 0
    for row in pairs.itertuples():
        changed = [i + 1 for i, (a, b) in enumerate(zip(row.completions, row.completions_original, strict=True)) if a != b]  # fmt: skip
        assert changed == [row.faulty_step_index]


def test_walk_forward_split_with_embargo(built: dict, episodes: pd.DataFrame) -> None:
    mature = episodes[episodes["is_mature"]]
    assert episodes.loc[~episodes["is_mature"], "split"].isna().all()
    assert (~episodes["is_mature"]).any()
    assert mature["split"].notna().all()
    assert set(mature["split"]) == {*datasets.SPLITS, "embargo"}
    for current, following in (("train", "validation"), ("validation", "test")):
        this, nxt = mature[mature["split"] == current], mature[mature["split"] == following]
        assert this["matured_at"].max() < nxt["decision_ts"].min()
        assert this["decision_ts"].max() < nxt["decision_ts"].min()
    # The embargo holds back exactly the episodes whose outcome matures after the boundary.
    v, t = episodes["split_validation_start"].iloc[0], episodes["split_test_start"].iloc[0]
    embargo = mature[mature["split"] == "embargo"]
    late_train = (embargo["decision_ts"] < v) & (embargo["matured_at"] >= v)
    late_validation = (embargo["decision_ts"] >= v) & (embargo["decision_ts"] < t)
    late_validation &= embargo["matured_at"] >= t
    assert (late_train | late_validation).all()
    # Derived boundaries: the 70% / 85% quantiles of the distinct mature decision dates.
    # (quantile_disc: the value at position ceil(q * n) in sorted order)
    dates = sorted(set(mature["decision_ts"].dt.tz_convert("UTC").dt.normalize()))
    assert v == dates[math.ceil(round(0.70 * len(dates), 9)) - 1]
    assert t == dates[math.ceil(round(0.85 * len(dates), 9)) - 1]
    # No dataset holds an immature or embargoed episode.
    for model, column in (("ds_sft", "episode_id"), ("ds_dpo", "rejected_episode_id")):
        ids = read(built["warehouse"], f"select {column} as episode_id from {model}")
        kept = episodes.set_index("episode_id").loc[ids["episode_id"]]
        assert kept["is_mature"].all() and kept["split"].isin(datasets.SPLITS).all()
    prm = read(built["warehouse"], "select distinct episode_id from ds_prm")
    kept = episodes.set_index("episode_id").loc[prm["episode_id"]]
    assert kept["is_mature"].all() and kept["split"].isin(datasets.SPLITS).all()


def test_expert_ratings_override_the_automatic_labels(built: dict) -> None:
    rated = built["rated"]
    labels = read(
        built["warehouse"],
        f"select * from fct_step_labels where episode_id = '{rated}' order by trace_id, step_index",
    )
    original = labels[~labels["is_perturbed"]].set_index("step_index")
    step1, step2 = original.loc[1], original.loc[2]
    # Step 1: r1's latest rating (-1) and r2's (-1).
    assert step1["n_expert_ratings"] == 2 and step1["expert_rating"] == -1
    assert step1["soft_label"] == 0 and step1["hard_label"] == False  # noqa: E712
    assert step1["label_source"] == "expert"
    assert step1["agrees_with_auto"] == (step1["auto_hard_label"] == False)  # noqa: E712
    # Step 2: +1 and 0 -> 0.5: soft 0.75, hard true (0 is neutral, not an error).
    assert step2["expert_rating"] == 0.5 and step2["soft_label"] == 0.75
    assert step2["hard_label"] == True and step2["label_source"] == "expert"  # noqa: E712
    # Other steps and the perturbed trace keep the automatic labels.
    before = built["before"]["labels"].set_index(["episode_id", "step_index"])
    for step, row in original.iterrows():
        if step in (1, 2):
            continue
        assert row["label_source"] == before.loc[(rated, step), "label_source"]
        assert row["soft_label"] == before.loc[(rated, step), "soft_label"]
    perturbed = labels[labels["is_perturbed"]]
    assert perturbed["expert_rating"].isna().all()
    assert (perturbed["label_source"] != "expert").all()
    # The episode is no longer all-correct: it leaves ds_sft; its PRM labels follow the expert.
    assert rated in set(built["before"]["sft"]["episode_id"])
    sft = read(built["warehouse"], "select episode_id from ds_sft")
    assert rated not in set(sft["episode_id"])
    prm = read(built["warehouse"], f"select * from ds_prm where trace_id = '{rated}'")
    assert list(prm["labels"][0][:2]) == [False, True]
    assert list(prm["label_sources"][0][:2]) == ["expert", "expert"]
    assert list(prm["soft_labels"][0][:2]) == [0.0, 0.75]
    with lakehouse_connection(built["warehouse"]) as con:
        report = datasets.expert_agreement(con)
    assert report["n_rated"] == 2
    assert sum(v["n_rated"] for v in report["per_kind"].values()) == 2
    # Before the feedback landed stg_feedback was the empty relation of the raw schema.
    assert built["before"]["stg_feedback"].empty
    assert "rated_at" in built["before"]["stg_feedback"].columns


def test_prompt_is_the_context_only(built: dict, episodes: pd.DataFrame) -> None:
    # One prompt per decision point, whatever the policy.
    assert (episodes.groupby("decision_point_id")["prompt"].nunique() == 1).all()
    assert (episodes.groupby("decision_point_id")["policy_id"].nunique() > 1).all()
    # It names no policy and no outcome, and its SQL reads no forward-looking column.
    policies = {p.policy_id for p in load_policies()}
    for prompt in episodes["prompt"].drop_duplicates().head(200):
        assert not any(p in prompt for p in policies)
        assert not any(w in prompt.lower() for w in ("reward", "outcome", "matured", "fwd"))
    compiled = next(dbt.target_path(built["work"]).rglob("fct_decision_episodes.sql")).read_text()
    prompts_cte = compiled.split("prompts as (", 1)[1].split("\n),", 1)[0]
    assert prompts_cte.split("\n    from ", 1)[1].split() == [
        "decision_points", "left", "join", "analog_evidence", "on",
        "decision_points.decision_point_id", "=", "analog_evidence.decision_point_id",
    ]  # fmt: skip
    assert not [t for t in (*HINDSIGHT_TERMS, "reward", "policy") if t in prompts_cte.lower()]
    # The analog evidence reads only the point-level ex-ante columns of int_counterfactuals ...
    evidence_cte = compiled.split("analog_evidence as (", 1)[1].split("\n),", 1)[0]
    read_columns = set(re.findall(r"any_value\((\w+)\)", evidence_cte))
    assert read_columns == {"n_analogs", "ev_buy", "ev_sell", "ev_se_buy", "ev_se_sell"}
    assert evidence_cte.split("from ", 1)[1].split()[0] == "counterfactuals"
    # ... whose analogs had all matured by the decision time.
    analogs = read(
        built["warehouse"],
        "select decision_ts, latest_analog_matured_at, n_analogs from int_counterfactuals"
        " where n_analogs > 0",
    )
    assert len(analogs) > 100
    assert (analogs["latest_analog_matured_at"] <= analogs["decision_ts"]).all()
    # It renders exactly the decision point's features (as the reasoning steps render numbers).
    for row in episodes.drop_duplicates("decision_point_id").head(50).itertuples():
        volume_z = (
            f"{signed(row.volume_z_20)} sigma"
            if not pd.isna(row.volume_z_20)
            else "undefined (the previous 20 volumes were constant)"
        )
        for line in (
            f"Symbol: {row.symbol}",
            f"Bar interval: {row.bar_interval}",
            f"Decision time: {row.decision_ts.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            f"- last bar's log return: {pct(row.ret_1)}",
            f"- 5-bar log return: {pct(row.ret_5)}",
            f"- 20-bar log return: {pct(row.ret_20)}",
            f"- 20-bar volatility: {upct(row.vol_20)} per bar",
            f"- mean 20-bar volatility of the previous 100 bars: {upct(row.vol_20_mean_100)}",
            f"- volume z-score against the previous 20 bars: {volume_z}",
            f"- high-low range of the bar: {upct(row.range_pct)} of the close",
            f"- opening gap (log, from the previous close): {pct(row.gap)}",
            f"- close against its 50-bar mean: {pct(row.trend_gap_50)}",
            f"- regime: {row.regime}",
            "buy, sell or hold",
        ):
            assert line in row.prompt, (line, row.prompt)


def test_rebuild_is_identical(built: dict, episodes: pd.DataFrame) -> None:
    for model in MARTS:
        assert built["first"][model].equals(built["second"][model]), model
    version = yaml.safe_load((dbt.DBT_PROJECT / "dbt_project.yml").read_text())["version"]
    assert set(episodes["built_by"]) == {f"dbt:decision_data/fct_decision_episodes@{version}"}
    assert episodes["source_hashes"].map(len).gt(0).all()


# ---------------------------------------------------------------- checks catch seeded faults


def _failed_checks(path: Path, model: str) -> set[str]:
    with lakehouse_connection(path) as con:
        result = datasets.validate_model(con, model)
    assert not result.passed
    return {c.split(":")[0] for c in result.failures_by_check}


def test_contracts_fail_on_seeded_bad_rows(built: dict) -> None:
    # An immature episode slipped into ds_sft as train.
    path = copy_warehouse(built, "immature_sft")
    mutate(
        path,
        """
        insert into ds_sft
        select episode_id, prompt, completion, 'train', decision_ts, symbol, bar_interval,
            policy_id, policy_version, action, source_hashes, [], decision_point_id
        from fct_decision_episodes
        where not is_mature and completion is not null
        limit 1
        """,
    )
    assert {"no_immature_episode", "split_of_episode"} <= _failed_checks(path, "ds_sft")

    # A validation trace relabelled train: its outcome matures after validation starts.
    path = copy_warehouse(built, "embargo_prm")
    mutate(
        path,
        """
        update ds_prm set split = 'train'
        where trace_id = (
            select max(trace_id) from ds_prm where split = 'validation'
            and decision_ts = (select max(decision_ts) from ds_prm where split = 'validation')
        )
        """,
    )
    assert {"split_of_episode", "split_order"} <= _failed_checks(path, "ds_prm")

    # A pair whose rejected text is the chosen one, and one whose margin is inside the noise.
    path = copy_warehouse(built, "bad_dpo")
    mutate(
        path,
        "update ds_dpo set rejected = chosen where pair_id = (select min(pair_id) from ds_dpo)",
        "update ds_dpo set noise_threshold = margin + 1 where pair_id = "
        "(select max(pair_id) from ds_dpo)",
    )
    failed = _failed_checks(path, "ds_dpo")
    assert {"chosen_differs_from_rejected", "margin_above_noise", "pair_of_episodes"} <= failed

    # A PRM trace whose labels lost a step.
    path = copy_warehouse(built, "short_prm")
    mutate(
        path,
        "update ds_prm set labels = labels[2:] where trace_id = (select min(trace_id) from ds_prm)",
    )
    assert "lists_aligned" in _failed_checks(path, "ds_prm")

    # The episode table: an immature episode with a split.
    path = copy_warehouse(built, "immature_split")
    mutate(
        path,
        "update fct_decision_episodes set split = 'test' where episode_id = "
        "(select min(episode_id) from fct_decision_episodes where not is_mature)",
    )
    assert "immature_has_no_split" in _failed_checks(path, "fct_decision_episodes")


def test_leakage_check_catches_a_seeded_leak(built: dict) -> None:
    with lakehouse_connection(built["warehouse"]) as con:
        sample = datasets.leakage_sample(con)
    target = sample.iloc[0]
    bars = built["bars"]
    series = bars[bars["symbol"] == target["symbol"]].reset_index(drop=True)
    at = int(np.flatnonzero(series["ts"] == target["ts"])[0])
    # ret_1 computed with one future bar: ln(close_{t+1} / close_t).
    leaked = float(np.log(series["close"][at + 1] / series["close"][at]))
    path = copy_warehouse(built, "leak")
    mutate(
        path,
        f"update fct_decision_episodes set ret_1 = {leaked!r} "
        f"where episode_id = '{target['episode_id']}'",
    )
    with lakehouse_connection(path) as con:
        again, leaks = datasets.point_in_time_leaks(con)
    assert (again["episode_id"] == sample["episode_id"]).all()  # the same seeded sample
    assert len(leaks) == 1
    assert leaks["column"].iloc[0] == "ret_1"
    assert leaks["ts"].iloc[0] == target["ts"]
