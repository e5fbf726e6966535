"""training/report.py (the evaluation core) on fake callables and tiny checkpoints, the gate on
constructed per-item scores, and the Dagster flow of assets/models/evaluation.py
(model_evaluation → blocking beats_champion → champion_model) against a real MLflow SQLite
registry.

The checkpoints are untrained 'tiny' models (random weights, real SmolLM2 tokenizer) saved with
save_pretrained: the likelihood scorer still gives every decision point a probability of each
action, so shapes, ranges and the baselines table are checked, and two versions of the same
weights score identically (the gate must then block).
"""

import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from assets.core.lakehouse import lakehouse_connection
from assets.core.resources import (
    MlflowResource,
    StorageResource,
    TrainingResource,
    WarehouseResource,
)
from assets.models import evaluation as ev
from training import report, synthetic
from training.baselines import table_markdown
from training.promotion import gate_decision, gate_scores

N_POINTS = 14
MAX_PROMPTS = 10
MAX_NEW_TOKENS = 12
POLICIES = (("momentum", "buy"), ("mean_reversion", "sell"))


# ---------------------------------------------------------------- fixtures


def episodes_frame(n_points: int = N_POINTS, seed: int = 0) -> pd.DataFrame:
    """fct_decision_episodes-shaped test rows: n decision points, two policies at each, two
    symbols, plus a train row and an immature test row that must be left out."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_points + 2):
        symbol = ("AAPL", "MSFT")[i % 2]
        ts = pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(days=i // 2)
        prompt = f"Symbol: {symbol}\nTime: {ts.isoformat()}\nret_5 = {rng.normal():+.4f}"
        buy, sell = rng.normal(size=2)
        split = "train" if i == n_points else "test"
        for policy, action in POLICIES:
            rows.append(
                {
                    "episode_id": f"e{i}-{policy}",
                    "decision_point_id": f"dp{i:03d}",
                    "symbol": symbol,
                    "decision_ts": ts,
                    "prompt": prompt,
                    "policy_id": policy,
                    "policy_version": "v1",
                    "action": action,
                    "size": 0.5,
                    "split": split,
                    "is_mature": i != n_points + 1,
                    "best_action_ex_ante": ("buy", "sell", "hold")[i % 3],
                    "cf_reward_buy": float(buy),
                    "cf_reward_sell": float(sell),
                    "cf_reward_hold": 0.0,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.checkpoint import write_metadata
    from training.config import ModelConfig
    from training.models import load_model

    root = tmp_path_factory.mktemp("checkpoints")
    cfg = ModelConfig(name_or_path="tiny")
    policy, tokenizer = load_model(cfg, task="causal", seed=1)
    prm, _ = load_model(cfg, task="token", num_labels=2, seed=2, tokenizer=tokenizer)
    prm.config.prm_step_separator = "\n"
    out = {}
    for name, model, stage in (("dpo", policy, "dpo"), ("prm", prm, "prm")):
        folder = root / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_metadata(folder, {"stage": stage, "data": {"system_prompt": None}}, {})
        out[name] = folder
    return out


# ---------------------------------------------------------------- the core


def test_decision_items_are_every_test_point_and_samples_are_deterministic() -> None:
    episodes = episodes_frame()
    points = report.decision_items(episodes)
    assert len(points) == N_POINTS and list(points.columns) == list(report.POINT_COLUMNS)
    assert points["item_id"].is_unique
    # the train row and the immature row are never test points
    assert not points["item_id"].isin([f"dp{N_POINTS:03d}", f"dp{N_POINTS + 1:03d}"]).any()
    shuffled = report.decision_items(episodes.sample(frac=1.0, random_state=7))
    assert shuffled["item_id"].tolist() == points["item_id"].tolist()
    sample = report.sample_rows(points, "item_id", MAX_PROMPTS, seed=3)
    again = report.sample_rows(shuffled, "item_id", MAX_PROMPTS, seed=3)
    assert len(sample) == MAX_PROMPTS and set(sample["item_id"]) == set(again["item_id"])
    other = report.sample_rows(points, "item_id", MAX_PROMPTS, seed=4)
    assert set(other["item_id"]) != set(sample["item_id"])
    assert report.items_digest(points) == report.items_digest(shuffled)
    assert report.items_digest(points) != report.items_digest(points, {"scorer": "other"})


def test_evaluate_checkpoints_on_tiny_models(checkpoints: dict[str, Path]) -> None:
    episodes = _all_splits()
    pairs = synthetic.dpo_frame(60)
    traces = synthetic.prm_frame(60)
    out = report.evaluate_checkpoints(
        checkpoints["dpo"],
        checkpoints["prm"],
        episodes,
        pairs,
        traces[traces["split"] == "test"],
        base_model="tiny",
        train_traces=traces[traces["split"] == "train"],
        max_format_prompts=3,
        device="cpu",
    )
    m = out.metrics
    assert m["decision_points"] == 10 and m["decision_n"] == 10  # every test point
    for key in (
        "decision_accuracy",
        "decision_action_mass",
        "base_accuracy",
        "format_well_formed",
        "preference_accuracy",
        "prm_auc",
        "prm_faulty_step_found",
        "prm_faulty_step_chance",
    ):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["decision_logp_target"] < 0 and 0 <= m["decision_brier"] <= 2
    # the budget fits the longest completion of the episodes
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["dpo"])
    longest = max(len(tokenizer(c)["input_ids"]) for c in episodes["completion"])
    assert m["format_max_new_tokens"] >= longest + 1
    assert m["preference_n"] == (pairs["split"] == "test").sum()
    assert m["prm_n_traces"] == (traces["split"] == "test").sum()
    items = out.items
    assert list(items.columns) == list(report.ITEM_COLUMNS)
    probs = items[["p_buy", "p_sell", "p_hold"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs > 0).all()
    assert items["well_formed"].notna().sum() == 3
    table = out.baselines.set_index("name")
    assert {"model", "base", "train-majority", "always-buy", "random", "probe"} <= set(table.index)
    assert {"policy:momentum", "policy:mean_reversion"} <= set(table.index)
    # a differently seeded untrained model is no better than the base, beyond noise
    assert table.loc["base", "delta_ci_low"] < 0.5
    assert out.prm_baselines is not None and "kind-only" in set(out.prm_baselines["name"])
    backtest = out.backtest.set_index("strategy")
    assert {"model", "hold", "random", "policy:momentum"} <= set(backtest.index)
    assert "| policy:momentum |" in table_markdown(out.backtest)


# ---------------------------------------------------------------- the gate (pure)


def _items(scores: list[float], column: str = "correct") -> pd.DataFrame:
    frame = pd.DataFrame({"item_id": [f"dp{i:03d}" for i in range(len(scores))]})
    for name in ("correct", "reward", "logp_target"):
        frame[name] = scores if column == name else 0.0
    return frame


def test_gate_without_champion_promotes() -> None:
    decision = gate_decision(_items([0.0] * 20), None)
    assert decision.promote and "first model" in decision.reason


def test_gate_clearly_better_challenger_promotes() -> None:
    rng = np.random.default_rng(0)
    champion = (rng.random(60) < 0.3).astype(float)
    challenger = np.maximum(champion, (rng.random(60) < 0.6).astype(float))
    decision = gate_decision(_items(list(challenger)), _items(list(champion)), score="correct")
    assert decision.promote, decision.reason
    assert decision.statistics["ci_low"] > 0


@pytest.mark.parametrize(
    ("score", "delta"), [("reward", 0.0), ("reward", -0.3), ("logp_target", -0.1)]
)
def test_gate_equal_or_worse_challenger_is_blocked(score: str, delta: float) -> None:
    rng = np.random.default_rng(1)
    champion = rng.normal(size=60)
    challenger = champion + delta
    decision = gate_decision(
        _items(list(challenger), score), _items(list(champion), score), score=score
    )
    assert not decision.promote, decision.reason


def test_gate_needs_the_same_items() -> None:
    champion = _items([0.0] * 20)
    challenger = _items([1.0] * 20)
    challenger.loc[0, "item_id"] = "elsewhere"
    decision = gate_decision(challenger, champion, score="correct")
    assert not decision.promote and "different items" in decision.reason
    # items without a target are left out of the comparison, on both sides
    with_gap = _items([1.0] * 20)
    with_gap.loc[0, "correct"] = math.nan
    assert gate_scores(with_gap, "correct").keys() == set(with_gap["item_id"][1:])


# ---------------------------------------------------------------- Dagster + MLflow registry


def _register(client, name: str, source: Path) -> str:
    return str(client.create_model_version(name, source=str(source)).version)


def _report_model(instance, asset: str, folder: Path, name: str, version: str, run_id: str):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset,
            metadata={
                "checkpoint_path": dg.MetadataValue.path(str(folder)),
                "mlflow_run_id": run_id,
                "model_name": name,
                "model_version": int(version),
            },
        )
    )


def _alias(client, name: str) -> str | None:
    found = ev.champion_version(client, name)
    return None if found is None else str(found.version)


def test_champion_moves_only_when_the_gate_passes(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    storage = StorageResource(root=str(tmp_path / "root"))
    store = storage.get()
    episodes = _all_splits()
    warehouse = tmp_path / "lakehouse.sqlite"
    with lakehouse_connection(warehouse, read_only=False) as con:
        con.register("frame", episodes)
        con.execute("create table fct_decision_episodes as select * from frame")
    for name, frame in (("dpo", synthetic.dpo_frame(40)), ("prm", synthetic.prm_frame(40))):
        for split in ("train", "test"):
            rows = frame[frame["split"] == split].reset_index(drop=True)
            ev.write_parquet(store, f"datasets/{name}/{split}.parquet", rows)
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
    )
    tracker = mlflow.tracker()
    client = tracker.client
    dpo_name, prm_name = ev.DPO_REGISTERED_MODEL, ev.PRM_REGISTERED_MODEL
    for name in (dpo_name, prm_name):
        client.create_registered_model(name)
    parent = tracker.start("dpo", tags={}, params={})

    instance = dg.DagsterInstance.ephemeral()
    resources = {"storage": storage, "warehouse": WarehouseResource(path=str(warehouse))}
    resources["mlflow"] = mlflow
    resources["training"] = TrainingResource(output_root=str(tmp_path / "training"))
    defs = [*ev.evaluation_assets, *ev.evaluation_checks]

    def release(version: str, gate_score: str = "logp_target") -> dg.ExecuteInProcessResult:
        _report_model(instance, "dpo_model", checkpoints["dpo"], dpo_name, version, parent)
        _report_model(instance, "prm_model", checkpoints["prm"], prm_name, version, "")
        config = {
            "max_format_prompts": 2,
            "max_pairs": 4,
            "max_traces": 4,
            "max_new_tokens": MAX_NEW_TOKENS,
            "base_model": "tiny",
            "gate_score": gate_score,
        }
        return dg.materialize(
            defs,
            instance=instance,
            resources=resources,
            run_config={"ops": {"model_evaluation": {"config": config}}},
            raise_on_error=False,
        )

    def verdict(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
        (found,) = result.get_asset_check_evaluations()
        return found

    def champion_ran(result: dg.ExecuteInProcessResult) -> bool:
        keys = {m.asset_key for m in result.get_asset_materialization_events()}
        return dg.AssetKey("champion_model") in keys

    # 1. the first model: no champion yet → passes, champion_model moves both aliases to v1
    v1 = _register(client, dpo_name, checkpoints["dpo"])
    assert _register(client, prm_name, checkpoints["prm"]) == v1
    first = release(v1)
    assert verdict(first).passed and champion_ran(first)
    assert _alias(client, dpo_name) == v1 and _alias(client, prm_name) == v1
    metadata = ev.latest_metadata(instance, ev.EVALUATION_KEY)
    assert {"decision_logp_target", "prm_auc", "preference_accuracy", "backtest"} <= set(metadata)
    assert metadata["decision_n"] == 10  # every test decision point
    baselines = metadata["baselines"]
    for row in ("| model | model |", "| base | model |", "| train-majority |", "| probe |"):
        assert row in baselines, row
    assert "| policy:momentum | policy |" in baselines
    assert "| kind-only |" in metadata["prm_baselines"]
    assert metadata["dpo_model_version"] == v1 and store.exists(metadata["items_path"])
    assert store.exists(metadata["baselines_path"])
    eval_run = client.get_run(metadata["mlflow_run_id"])
    assert eval_run.data.tags["mlflow.parentRunId"] == parent
    assert {"decision_logp_target", "base_logp_target", "baseline_train-majority_logp_target"} <= (
        set(eval_run.data.metrics)
    )
    logged = {f.path for f in client.list_artifacts(metadata["mlflow_run_id"], "evaluation")}
    assert {"evaluation/baselines.md", "evaluation/baselines.parquet"} <= logged
    tags = client.get_model_version(dpo_name, v1).tags
    assert tags[ev.TAG_DIGEST] == metadata["items_digest"]

    # 2. same weights as v2, champion's stored scores reused (same items) → log p(target)
    #    identical on every item → blocked
    v2 = _register(client, dpo_name, checkpoints["dpo"])
    _register(client, prm_name, checkpoints["prm"])
    second = release(v2)
    check = verdict(second)
    assert not check.passed and not champion_ran(second)
    assert check.metadata["champion_scores"].value == "reused"
    assert _alias(client, dpo_name) == v1 and _alias(client, prm_name) == v1

    # 3. without stored scores the champion checkpoint (the version's source) is scored on the
    #    challenger's items: identical weights → still blocked
    client.delete_model_version_tag(dpo_name, v1, ev.TAG_DIGEST)
    third = release(v2)
    check = verdict(third)
    assert not check.passed and not champion_ran(third)
    assert check.metadata["champion_scores"].value == "evaluated"
    assert _alias(client, dpo_name) == v1

    # 4. a champion whose stored per-item log p(target) is clearly worse → the challenger
    #    passes and champion_model moves both aliases to v2
    client.set_model_version_tag(dpo_name, v1, ev.TAG_DIGEST, metadata["items_digest"])
    items = ev.read_parquet(store, metadata["items_path"])
    worse = items.assign(logp_target=items["logp_target"] - 1.0)
    ev.write_parquet(store, metadata["items_path"], worse)
    fourth = release(v2)
    assert verdict(fourth).passed and champion_ran(fourth)
    assert verdict(fourth).metadata["mean_diff"].value == pytest.approx(1.0)
    assert _alias(client, dpo_name) == v2 and _alias(client, prm_name) == v2


def test_champion_model_refuses_without_a_passed_check(tmp_path: Path) -> None:
    """champion_model run on its own (no passed beats_champion for the latest evaluation)
    fails instead of moving the alias."""
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(
        dg.AssetMaterialization("model_evaluation", metadata={"dpo_model_version": "1"})
    )
    mlflow = MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
    )
    result = dg.materialize(
        [ev.champion_model],
        instance=instance,
        resources={"mlflow": mlflow},
        raise_on_error=False,
    )
    assert not result.success


# ---------------------------------------------------------------- training.report (fakes)


def _all_splits() -> pd.DataFrame:
    """episodes_frame's points spread over train / validation / test (every fourth point is a
    test point: 10 of them), all mature, with decision-first completions."""
    frame = episodes_frame(n_points=40)
    point = frame["decision_point_id"].str[2:].astype(int)
    frame["split"] = np.select([point % 4 == 3, point % 4 == 2], ["test", "validation"], "train")
    frame["is_mature"] = True
    frame["completion"] = frame["action"] + " 0.5000 of capital\nwhy"
    return frame


def test_report_scores_every_test_point_next_to_the_baselines() -> None:
    episodes = _all_splits()
    best = dict(zip(episodes["prompt"], episodes["best_action_ex_ante"], strict=False))

    def oracle(prompts: list[str]) -> pd.DataFrame:
        rows = [[0.9 if a == best[p] else 0.05 for a in ("buy", "sell", "hold")] for p in prompts]
        return pd.DataFrame(rows, columns=["p_buy", "p_sell", "p_hold"])

    def uniform(prompts: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"p_buy": 1 / 3, "p_sell": 1 / 3, "p_hold": 1 / 3}, index=prompts)

    generated: list[str] = []

    def generate(prompts: list[str]) -> list[str]:
        generated.extend(prompts)
        lines = {"buy": "buy 1.0 of capital", "sell": "sell 1.0 of capital"}
        return [f"{lines.get(best[p], 'hold: no trade')}\nwhy" for p in prompts]

    out = report.evaluate_callables(
        episodes,
        None,
        None,
        action_probs=oracle,
        base_action_probs=uniform,
        generate=generate,
        max_new_tokens=20,
        max_format_prompts=5,
    )
    items = out.items
    assert list(items.columns) == list(report.ITEM_COLUMNS)
    assert len(items) == 10 and items["item_id"].is_unique  # every test point
    assert out.metrics["decision_accuracy"] == 1.0
    assert out.metrics["decision_logp_target"] == pytest.approx(math.log(0.9))
    assert out.metrics["base_logp_target"] == pytest.approx(-math.log(3))
    # the argmax action (the target here) earns its realized unit reward
    expected = np.select(
        [items["target"] == "buy", items["target"] == "sell"],
        [items["cf_reward_buy"], items["cf_reward_sell"]],
        0.0,
    )
    np.testing.assert_allclose(items["reward"], expected)
    # format: 5 sampled points generated, all well-formed
    assert len(generated) == 5 and out.metrics["format_well_formed"] == 1.0
    assert items["well_formed"].notna().sum() == 5
    table = out.baselines.set_index("name")
    assert {"model", "base", "train-majority", "random", "probe", "policy:momentum"} <= set(
        table.index
    )
    assert (table["n"][["model", "base", "probe"]] == 10).all()
    assert table.loc["base", "delta_ci_low"] > 0
    assert (
        out.metrics["baseline_policy_momentum_accuracy"] == table.loc["policy:momentum", "accuracy"]
    )
    assert "| train-majority | baseline |" in out.markdown()
    assert out.digest == report.items_digest(report.decision_items(episodes))


def test_report_prm_table_per_kind() -> None:
    traces = synthetic.prm_frame(80)
    train, test = traces[traces["split"] == "train"], traces[traces["split"] == "test"]
    steps = report.prm_steps(traces)
    kinds = steps.assign(kind=np.where(steps["kind"] == "decision", "decision", "observation"))
    info = kinds.assign(verified=kinds["label"])[["trace_id", "step_index", "kind", "verified"]]

    def marker(prompts: list[str], traces_: list[list[str]]) -> list[list[float]]:
        return [[0.0 if synthetic.MARKER in s else 1.0 for s in t] for t in traces_]

    out = report.evaluate_callables(
        _all_splits(),
        None,
        test,
        action_probs=lambda ps: pd.DataFrame(
            {"p_buy": [1.0] * len(ps), "p_sell": 1.0, "p_hold": 1.0}
        ),
        score_traces=marker,
        step_info=info,
        train_traces=train,
    )
    table = out.prm_baselines.set_index("name")
    assert list(table.index) == ["prm", "kind-only", "exact-check"]
    assert table.loc["prm", "auc"] == 1.0 and out.metrics["prm_table_prm_auc"] == 1.0
    assert table.loc["kind-only", "auc_observation"] == pytest.approx(0.5)
    assert "PRM steps" in out.markdown()


def test_untrained_base_follows_the_lineage_back_to_the_base_model(tmp_path: Path) -> None:
    from training.checkpoint import write_metadata

    sft, dpo, lost = tmp_path / "sft", tmp_path / "dpo", tmp_path / "lost"
    for folder, base in ((sft, "tiny"), (dpo, str(sft)), (lost, "/nowhere/sft/final")):
        folder.mkdir()
        write_metadata(folder, {"stage": folder.name}, {"base_model": base})
    assert report.untrained_base(dpo) == "tiny"  # DPO -> its SFT checkpoint -> the base
    assert report.untrained_base(sft) == "tiny"
    assert report.untrained_base(lost) is None  # a folder of another machine: no base row
    write_metadata(lost, {}, {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert report.untrained_base(lost) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id
