"""Exact small cases for training.decision_line, training.metrics, training.baselines,
training.learnability, training.backtest and training.promotion.

Every expected number is computed by hand in the comments; the models are fake callables or
fixed probability tables (the scorer on a real tiny model: tests/test_scoring.py).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.backtest import (
    SUMMARY_COLUMNS,
    backtest,
    decision_points,
    max_drawdown,
    model_rewards,
    sharpe_ratio,
)
from training.baselines import (
    POLICY_EPS,
    TABLE_COLUMNS,
    Probe,
    baselines_table,
    kind_only_scores,
    prm_baselines,
    prompt_numbers,
    table_markdown,
)
from training.decision_line import ParsedDecision, parse_decision, render_decision
from training.learnability import learnability_check
from training.metrics import (
    choice_scores,
    choice_summary,
    decision_metrics,
    f1_score,
    preference_metrics,
    prm_metrics,
    roc_auc,
    step_metrics,
)
from training.promotion import gate_decision, gate_scores, paired_bootstrap, promotion_decision

# ---------------------------------------------------------------- parse_decision


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("buy 0.5000 of capital\nobs one\ninference", ParsedDecision("buy", 0.5, 2)),
        ("\n\nsell .25 of capital\nobs\n\n", ParsedDecision("sell", 0.25, 1)),
        ("  Hold: no trade  \n\n  obs  ", ParsedDecision("hold", 0.0, 1)),
        ("buy 1 of capital\nobs", ParsedDecision("buy", 1.0, 1)),
        ("sell 0.0000 of capital", ParsedDecision("sell", 0.0, 0)),
        # reasoning is optional; a later line that looks like a decision is just a line
        ("hold: no trade", ParsedDecision("hold", 0.0, 0)),
        ("buy 0.5 of capital\nsell 0.5 of capital", ParsedDecision("buy", 0.5, 1)),
    ],
)
def test_parse_decision_good(text: str, expected: ParsedDecision) -> None:
    assert parse_decision(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "\n \n",
        "buy 1.5000 of capital\nobs",  # size above 1
        "buy -0.5 of capital",  # negative size
        "buy 0.5 of capital now",  # extra words
        "buy of capital",  # no size
        "hold\nobs",  # incomplete hold
        "because the trend is up\nbuy 0.5 of capital",  # the decision is not first
        "short 0.5 of capital",  # not an action
    ],
)
def test_parse_decision_bad(text: str | None) -> None:
    assert parse_decision(text) is None


def test_render_decision_round_trips_the_parser() -> None:
    assert render_decision("buy", 0.25) == "buy 0.2500 of capital"  # as the marts render it
    assert render_decision("hold", 0.7) == "hold: no trade"
    for action, size in (("buy", 0.25), ("sell", 1.0), ("hold", 0.0)):
        assert parse_decision(render_decision(action, size)) == ParsedDecision(action, size, 0)
    with pytest.raises(ValueError):
        render_decision("short", 0.5)


# ---------------------------------------------------------------- decision_metrics


def _episode_rows() -> pd.DataFrame:
    # p1..p4 are test decision points (two policy rows each for p1 and p2), p0 is train,
    # p5 is an immature test row: neither may reach the model.
    rows = [
        ("p1", "test", True, "buy"),
        ("p1", "test", True, "buy"),
        ("p2", "test", True, "hold"),
        ("p2", "test", True, "hold"),
        ("p3", "test", True, "sell"),
        ("p4", "test", True, None),  # no ex-ante target (no analogs)
        ("p0", "train", True, "buy"),
        ("p5", "test", False, "buy"),
    ]
    return pd.DataFrame(rows, columns=["prompt", "split", "is_mature", "best_action_ex_ante"])


def test_decision_metrics_with_fake_generate() -> None:
    answers = {
        "p1": "buy 0.5000 of capital\nmomentum is up",  # correct, well-formed, one step
        "p2": "hold: no trade",  # correct, well-formed, no step
        "p3": "momentum is down\nbuy 0.5000 of capital",  # decision not first: invalid, wrong
        "p4": "sell 0.1 of capital\nx\ny",  # no target: not scored
    }
    calls: list[list[str]] = []

    def generate(prompts: list[str]) -> list[str]:
        calls.append(prompts)
        return [answers[p] for p in prompts]

    m = decision_metrics(_episode_rows(), generate, batch_size=3)
    assert calls == [["p1", "p2", "p3"], ["p4"]]
    assert (m.n, m.n_scored) == (4, 3)
    assert m.accuracy == pytest.approx(2 / 3)
    assert m.well_formed == pytest.approx(3 / 4)
    assert m.mean_steps == pytest.approx((1 + 0 + 2) / 3)
    assert m.action_distribution == {"buy": 0.25, "sell": 0.25, "hold": 0.25, "invalid": 0.25}
    assert m.majority_accuracy == pytest.approx(1 / 3)  # targets buy, hold, sell
    assert m.items["correct"].tolist()[:3] == [1.0, 1.0, 0.0]
    assert math.isnan(m.items["correct"].iloc[3])
    assert m.as_dict("eval/")["eval/accuracy"] == pytest.approx(2 / 3)


def test_decision_metrics_rejects_a_short_answer() -> None:
    with pytest.raises(ValueError, match="returned 1 items for 4"):
        decision_metrics(_episode_rows(), lambda prompts: ["hold: no trade"])


# ---------------------------------------------------------------- preference_metrics


def test_preference_metrics_with_fake_logp() -> None:
    pairs = pd.DataFrame(
        {
            "prompt": ["a", "b", "c", "d"],
            "chosen": ["ca", "cb", "cc", "cd"],
            "rejected": ["ra", "rb", "rc", "rd"],
            "split": ["test", "test", "test", "train"],
        }
    )
    policy = {"ca": -1.0, "ra": -3.0, "cb": -5.0, "rb": -2.0, "cc": -4.0, "rc": -4.0}
    reference = {"ca": -2.0, "ra": -2.0, "cb": -2.0, "rb": -2.0, "cc": -1.0, "rc": -3.0}

    def logp(prompts: list[str], completions: list[str]) -> list[float]:
        assert "d" not in prompts  # the train pair is never scored
        return [policy[c] for c in completions]

    def ref_logp(prompts: list[str], completions: list[str]) -> list[float]:
        return [reference[c] for c in completions]

    # margins 2, -3, 0 (a tie is not a win)
    m = preference_metrics(pairs, logp)
    assert m.n == 3
    assert m.accuracy == pytest.approx(1 / 3)
    assert m.mean_margin == pytest.approx(-1 / 3)

    # implicit rewards beta * (logp - ref): chosen 0.1*1, 0.1*-3, 0.1*-3; rejected 0.1*-1,
    # 0.1*0, 0.1*-1 -> margins 0.2, -0.3, -0.2
    m = preference_metrics(pairs, logp, beta=0.1, ref_logp=ref_logp, batch_size=2)
    assert m.accuracy == pytest.approx(1 / 3)
    assert m.mean_margin == pytest.approx(-0.1)
    assert m.items["margin"].tolist() == pytest.approx([0.2, -0.3, -0.2])


# ---------------------------------------------------------------- AUC, F1, PRM


def test_roc_auc_with_ties_is_mann_whitney() -> None:
    # positives 0.9, 0.5, 0.3 against negatives 0.5, 0.1: wins 2 + 1.5 (a tie counts half) + 1
    # of 6 pairs
    labels = [True, True, False, False, True]
    scores = [0.9, 0.5, 0.5, 0.1, 0.3]
    assert roc_auc(labels, scores) == pytest.approx(4.5 / 6)
    assert roc_auc([True, False], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([True, False], [0.2, 0.8]) == 0.0
    assert math.isnan(roc_auc([True, True], [0.1, 0.2]))


def test_f1_score() -> None:
    # tp 2, fp 1, fn 1 -> 2 * 2 / (3 + 3)
    assert f1_score([True, True, False, False, True], [True, True, True, False, False]) == (
        pytest.approx(2 / 3)
    )
    assert f1_score([False, True], [False, False]) == 0.0
    assert math.isnan(f1_score([False], [False]))


def _traces() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": ["t1", "t2", "t3", "t4"],
            "completions": [["s1", "s2"], ["s1", "s2", "s3"], ["s1", "s2", "s3", "s4"], ["s1"]],
            "labels": [
                [True, False],
                [True, False, True],
                [False, True, True, True],
                [True, True],  # broken (2 labels, 1 step) but outside the test split
            ],
            "is_perturbed": [False, True, True, False],
            "faulty_step_index": [None, 2, 1, None],  # 1-based, as in ds_prm
            "split": ["test", "test", "test", "train"],
        }
    )


def test_prm_metrics_exact() -> None:
    scores = {
        "t1": [0.9, 0.5],
        "t2": [0.5, 0.1, 0.3],  # lowest is step 2 = the faulty step: found
        "t3": [0.2, 0.2, 0.8, 0.9],  # steps 1 and 2 tie for lowest, 1 is faulty: found 1/2
    }
    m = prm_metrics(_traces(), lambda prompt, steps: scores[prompt])
    assert (m.n_traces, m.n_steps, m.n_perturbed) == (3, 9, 2)
    # positives 0.9, 0.5, 0.3, 0.2, 0.8, 0.9 vs negatives 0.5, 0.1, 0.2:
    # wins 3 + 2.5 + 2 + 1.5 + 3 + 3 = 15 of 18
    assert m.auc == pytest.approx(15 / 18)
    # correct = score >= 0.5: tp 4, 6 positives, 5 predicted -> 8 / 11
    assert m.f1 == pytest.approx(8 / 11)
    # faulty = score < 0.5: tp 2, 3 faulty, 4 predicted -> 4 / 7
    assert m.f1_faulty == pytest.approx(4 / 7)
    assert m.faulty_step_found == pytest.approx((1 + 0.5) / 2)
    assert m.faulty_step_chance == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert m.items["lowest_step"].tolist() == [2, 2, 1]


def test_prm_constant_scorer_is_at_chance() -> None:
    m = prm_metrics(_traces(), lambda prompt, steps: [0.7] * len(steps))
    assert m.auc == pytest.approx(0.5)
    assert m.faulty_step_found == pytest.approx(m.faulty_step_chance)


def test_prm_metrics_rejects_a_wrong_number_of_scores() -> None:
    with pytest.raises(ValueError, match="2 steps, 2 labels and 1 scores"):
        prm_metrics(_traces(), lambda prompt, steps: [0.5])


# ---------------------------------------------------------------- Sharpe, drawdown, backtest


def test_sharpe_ratio_on_a_known_series() -> None:
    # mean 0.2, sample std 0.1 * sqrt(2): Sharpe sqrt(2) per period
    assert sharpe_ratio([0.1, 0.3], periods_per_year=1) == pytest.approx(math.sqrt(2))
    assert sharpe_ratio([0.1, 0.3]) == pytest.approx(math.sqrt(2 * 252))
    assert sharpe_ratio([0.1, 0.3], periods_per_year=52) == pytest.approx(math.sqrt(2 * 52))
    assert sharpe_ratio([0.0, 0.0, 0.0]) == 0.0  # always flat
    assert math.isnan(sharpe_ratio([0.1, 0.1]))  # no spread, positive mean
    assert math.isnan(sharpe_ratio([0.1]))


def test_max_drawdown_on_a_known_series() -> None:
    # cumulative 1, -1, 2, 1, -2, -1; running peak 1, 1, 2, 2, 2, 2 -> deepest fall 2 - (-2)
    assert max_drawdown([1, -2, 3, -1, -3, 1]) == pytest.approx(4.0)
    assert max_drawdown([-1, -1]) == pytest.approx(2.0)  # the peak starts at 0
    assert max_drawdown([1, 2, 3]) == 0.0
    assert max_drawdown([]) == 0.0


def _backtest_episodes() -> pd.DataFrame:
    # unit rewards of each decision point (hold 0)
    points = {
        ("A", "2024-01-02"): (1.0, -1.2),
        ("B", "2024-01-02"): (-0.5, 0.3),
        ("A", "2024-01-03"): (-2.0, 1.8),
        ("B", "2024-01-03"): (0.4, -0.6),
    }
    decisions = [  # policy, symbol, date, action, size
        ("mom", "A", "2024-01-02", "buy", 0.5),
        ("mom", "B", "2024-01-02", "sell", 1.0),
        ("mom", "A", "2024-01-03", "buy", 0.5),
        ("mom", "B", "2024-01-03", "hold", 0.0),
        ("rev", "A", "2024-01-02", "sell", 0.5),
        ("rev", "B", "2024-01-02", "buy", 0.5),
    ]
    rows = []
    for policy, symbol, day, action, size in decisions:
        buy, sell = points[(symbol, day)]
        rows.append(
            {
                "prompt": f"{symbol}@{day}",
                "symbol": symbol,
                "decision_ts": pd.Timestamp(f"{day} 21:00", tz="UTC"),
                "policy_id": policy,
                "action": action,
                "size": size,
                "split": "test",
                "is_mature": True,
                "cf_reward_buy": buy,
                "cf_reward_sell": sell,
                "cf_reward_hold": 0.0,
            }
        )
    train = {**rows[0], "prompt": "A@2023-12-01", "split": "train", "cf_reward_buy": 99.0}
    return pd.DataFrame([*rows, train])


MODEL = pd.DataFrame(
    {
        "prompt": ["A@2024-01-02", "B@2024-01-02", "A@2024-01-03", "B@2024-01-03"],
        "action": ["buy", "sell", "sell", None],  # the last answer was unparseable: hold
        "size": [1.0, 0.5, 1.0, math.nan],
    }
)


def test_backtest_exact() -> None:
    table = backtest(_backtest_episodes(), MODEL, n_random_seeds=5).set_index("strategy")
    assert list(table.reset_index().columns) == list(SUMMARY_COLUMNS)
    assert list(table.index) == ["model", "hold", "random", "policy:mom", "policy:rev"]

    # model: rewards 1.0, 0.5 * 0.3, 1.0 * 1.8, 0 -> daily (1 + 0.15) / 2, (1.8 + 0) / 2
    model = table.loc["model"]
    assert (model["kind"], model["n"], model["n_trades"], model["n_days"]) == ("model", 4, 3, 2)
    assert model["total_return"] == pytest.approx(2.95)
    assert model["mean_reward"] == pytest.approx(2.95 / 4)
    assert model["hit_rate"] == pytest.approx(1.0)
    assert model["portfolio_return"] == pytest.approx(0.575 + 0.9)
    assert model["sharpe"] == pytest.approx(sharpe_ratio([0.575, 0.9]))
    assert model["sharpe"] == pytest.approx(0.7375 / (0.325 / math.sqrt(2)) * math.sqrt(252))
    assert model["max_drawdown"] == 0.0

    hold = table.loc["hold"]
    assert (hold["n"], hold["n_trades"], hold["total_return"], hold["sharpe"]) == (4, 0, 0, 0)
    assert math.isnan(hold["hit_rate"])

    # mom: 0.5 * 1.0, 1.0 * 0.3, 0.5 * -2.0, hold -> daily 0.4, -0.5 -> drawdown 0.5
    mom = table.loc["policy:mom"]
    assert mom["total_return"] == pytest.approx(-0.2)
    assert mom["hit_rate"] == pytest.approx(2 / 3)
    assert mom["max_drawdown"] == pytest.approx(0.5)

    # rev decided only on day 1: 0.5 * -1.2, 0.5 * -0.5 -> one day, -0.425
    rev = table.loc["policy:rev"]
    assert (rev["n"], rev["n_days"], rev["hit_rate"]) == (2, 1, 0.0)
    assert rev["total_return"] == pytest.approx(-0.85)
    assert rev["max_drawdown"] == pytest.approx(0.425)
    assert math.isnan(rev["sharpe"])


def test_backtest_random_baseline() -> None:
    episodes = _backtest_episodes()
    first = backtest(episodes, MODEL, n_random_seeds=3, seed=7)
    again = backtest(episodes, MODEL, n_random_seeds=3, seed=7)
    pd.testing.assert_frame_equal(first, again)
    # expected reward per decision: size * mean(buy, sell, hold) = (2.5 / 3) * (-0.2 / 3); the
    # size is the model's mean trade size (1.0 + 0.5 + 1.0) / 3
    many = backtest(episodes, MODEL, n_random_seeds=2000, include_policies=False)
    random = many.set_index("strategy").loc["random"]
    assert random["mean_reward"] == pytest.approx((2.5 / 3) * (-0.2 / 3), abs=0.02)
    assert random["n"] == 4
    flat = backtest(episodes, None, random_size=0.0).set_index("strategy").loc["random"]
    assert flat["total_return"] == 0.0


def test_model_rewards_per_decision_point() -> None:
    points = decision_points(_backtest_episodes())
    assert len(points) == 4  # the train point is not in the test period
    rewards = model_rewards(points, MODEL)
    assert rewards["reward"].tolist() == pytest.approx([1.0, 0.15, 1.8, 0.0])
    with pytest.raises(ValueError, match="size in"):
        model_rewards(points, MODEL.assign(size=[1.5, 0.5, 1.0, 0.0]))


# ---------------------------------------------------------------- promotion


def test_paired_bootstrap_constant_difference() -> None:
    result = paired_bootstrap([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], n_resamples=100)
    assert (result.mean_diff, result.ci_low, result.ci_high) == pytest.approx((0.5, 0.5, 0.5))
    assert result.p_value == 0.0 and result.better


def test_paired_bootstrap_is_deterministic_with_a_seed() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.1, 1, 300), rng.normal(0, 1, 300)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3).ci_low != paired_bootstrap(a, b, seed=4).ci_low


def test_paired_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
    with pytest.raises(ValueError):
        paired_bootstrap([math.nan], [1.0])


def _correctness(n_right: int, n: int = 200) -> dict[str, float]:
    return {f"dp{i:03d}": float(i < n_right) for i in range(n)}


def test_clearly_better_challenger_is_promoted() -> None:
    # right on 160 of 200 vs 80 of 200, the same 80 included: difference +0.4
    decision = promotion_decision(_correctness(160), _correctness(80))
    assert decision.promote
    assert decision.statistics["mean_diff"] == pytest.approx(0.4)
    assert decision.statistics["ci_low"] > 0
    assert decision.statistics["p_value"] == 0.0
    assert decision.reason.startswith("promoted")


def test_equal_challenger_is_not_promoted() -> None:
    decision = promotion_decision(_correctness(120), _correctness(120))
    assert not decision.promote
    assert decision.statistics["mean_diff"] == 0.0
    assert decision.statistics["p_value"] == 1.0


def test_noisy_equal_challenger_is_not_promoted() -> None:
    # different items right, the same count: no systematic difference
    champion = _correctness(100)
    challenger = {k: 1.0 - v if i % 2 else v for i, (k, v) in enumerate(champion.items())}
    assert sum(challenger.values()) == sum(champion.values())
    decision = promotion_decision(challenger, champion)
    assert not decision.promote
    assert decision.statistics["ci_low"] < 0 < decision.statistics["ci_high"]


def test_worse_challenger_is_not_promoted() -> None:
    decision = promotion_decision(_correctness(80), _correctness(160))
    assert not decision.promote
    assert decision.statistics["mean_diff"] == pytest.approx(-0.4)
    assert decision.statistics["p_value"] == 1.0


def test_first_model_is_promoted() -> None:
    decision = promotion_decision(_correctness(10), None)
    assert decision.promote
    assert "no champion" in decision.reason
    assert decision.statistics["mean_challenger"] == pytest.approx(10 / 200)


def test_promotion_needs_the_same_items() -> None:
    challenger, champion = _correctness(160), _correctness(80)
    del champion["dp000"]
    decision = promotion_decision(challenger, champion)
    assert not decision.promote and "different items" in decision.reason
    assert decision.statistics["n_only_challenger"] == 1
    assert promotion_decision(challenger, champion, require_same_items=False).promote
    few = promotion_decision({"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 0.0})
    assert not few.promote and "min_items" in few.reason


def test_evaluation_feeds_backtest_and_gate() -> None:
    """decision_metrics' items are the backtest's decisions and the gate's per-item scores."""
    episodes = _backtest_episodes().assign(best_action_ex_ante="hold")
    episodes.loc[episodes["prompt"] == "A@2024-01-02", "best_action_ex_ante"] = "buy"
    right = decision_metrics(episodes, lambda ps: ["buy 1.0 of capital\nup"] * len(ps))
    flat = decision_metrics(episodes, lambda ps: ["hold: no trade\nflat"] * len(ps))
    assert (right.accuracy, flat.accuracy) == (0.25, 0.75)
    table = backtest(episodes, {"buyer": right.items, "flat": flat.items}, include_policies=False)
    assert table.set_index("strategy").loc["buyer", "total_return"] == pytest.approx(-1.1)
    points = decision_points(episodes)
    challenger = model_rewards(points, right.items).set_index("prompt")["reward"].to_dict()
    champion = model_rewards(points, flat.items).set_index("prompt")["reward"].to_dict()
    assert not promotion_decision(challenger, champion, min_items=1).promote


def test_step_metrics_of_the_prm_trainer() -> None:
    assert roc_auc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == 0.75
    m = step_metrics(
        scores=[[0.9, 0.1, 0.8], [0.9, 0.8, 0.7], [0.2, 0.9]],
        labels=[[True, False, True], [True, True, True], [True, False]],
        faulty_steps=[1, None, 1],
    )
    assert m["faulty_step_found_rate"] == 0.5 and m["n_perturbed_traces"] == 2
    assert m["step_f1"] == pytest.approx(2 / 4)  # faulty class: tp=1, fp=1, fn=1
    assert m["step_accuracy"] == pytest.approx(6 / 8)


# ---------------------------------------------------------------- choice scores


def test_choice_scores_exact() -> None:
    probs = [[0.5, 0.3, 0.2], [2.0, 1.0, 1.0], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.1, 0.8]]
    scores = choice_scores(probs, ["buy", "sell", "hold", None])
    # the second row is renormalised to 0.5, 0.25, 0.25
    assert scores["p_buy"].tolist() == pytest.approx([0.5, 0.5, 1 / 3, 0.1])
    assert scores["logp_target"].tolist()[:3] == pytest.approx(
        [math.log(0.5), math.log(0.25), math.log(1 / 3)]
    )
    # Brier: (0.5-1)^2 + 0.3^2 + 0.2^2; 0.5^2 + 0.75^2 + 0.25^2; uniform 2/3
    assert scores["brier"].tolist()[:3] == pytest.approx([0.38, 0.875, 2 / 3])
    # argmax buy = target; buy != sell; a three-way tie credits 1/3
    assert scores["correct"].tolist()[:3] == pytest.approx([1.0, 0.0, 1 / 3])
    assert scores.iloc[3][["logp_target", "brier", "correct"]].isna().all()
    summary = choice_summary(scores)
    assert summary["n"] == 3
    assert summary["accuracy"] == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="targets"):
        choice_scores([[1, 1, 1]], ["short"])
    with pytest.raises(ValueError, match="non-negative"):
        choice_scores([[0, 0, 0]], ["buy"])


# ---------------------------------------------------------------- baselines


def test_prompt_numbers_are_keyed_by_label() -> None:
    prompt = (
        "Symbol: AAPL\n"
        "Decision time: 2013-01-02T21:00:00Z (the close of the latest bar)\n"
        "- 5-bar log return: +1.25%\n"
        "- volume z-score: undefined\n"
        "Analogs:\n"
        "- buy: n=14, ev +0.12 ± 0.05\n"
        "- sell: n=14, ev -0.12 ± 0.05\n"
        "- buy: 3\n"
        "Decide over the next 20 bars."
    )
    numbers = prompt_numbers(prompt)
    assert numbers == {
        "5-bar log return#0": 1.25,
        "buy#0": 14.0,
        "buy#1": 0.12,
        "buy#2": 0.05,
        "sell#0": 14.0,
        "sell#1": -0.12,
        "sell#2": 0.05,
        "buy@2#0": 3.0,
        "decide over the next # bars.#0": 20.0,
    }


def _separable(n: int, seed: int, shuffle: bool = False) -> pd.DataFrame:
    """Prompts with a 'signal' number whose sign is the target (and a noise number); hold
    when the signal is small."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    noise = rng.normal(size=n)
    target = np.where(signal > 0.15, "buy", np.where(signal < -0.15, "sell", "hold"))
    if shuffle:
        target = rng.permutation(target)
    prompts = [
        f"Symbol: X\n- signal: {s:+.4f}\n- noise: {z:+.4f}"
        for s, z in zip(signal, noise, strict=True)
    ]
    return pd.DataFrame(
        {"prompt": prompts, "target": target, "item_id": [f"i{k}" for k in range(n)]}
    )


def test_baselines_table_exact_rows() -> None:
    train = pd.DataFrame({"prompt": ["a: 1"] * 10, "target": ["sell"] * 6 + ["buy"] * 3 + ["hold"]})
    items = pd.DataFrame(
        {
            "prompt": ["x: 1", "x: 2", "x: 3", "x: 4", "x: 5"],
            "target": ["buy", "buy", "sell", "hold", None],
        }
    )
    model = pd.DataFrame({"p_buy": [0.8] * 5, "p_sell": [0.1] * 5, "p_hold": [0.1] * 5})
    episodes = pd.DataFrame(
        {
            "prompt": ["x: 1", "x: 2", "x: 3", "x: 1"],
            "policy_id": ["momentum", "momentum", "momentum", "reversal"],
            "action": ["buy", "sell", "sell", "sell"],
        }
    )
    table = baselines_table(
        items, train=train, episodes=episodes, models={"model": model}, probe=False
    ).set_index("name")
    assert list(table.reset_index().columns) == list(TABLE_COLUMNS)
    assert list(table.index) == [
        "model",
        "train-majority",
        "always-buy",
        "always-sell",
        "always-hold",
        "random",
        "policy:momentum",
        "policy:reversal",
    ]
    assert (table.loc["model", "n"], table.loc["model", "accuracy"]) == (4, 0.5)
    # train-majority: frequencies (6+1, 3+1, 1+1)/13 -> argmax sell, right on 1 of 4 items
    majority = table.loc["train-majority"]
    assert majority["accuracy"] == pytest.approx(0.25)
    expected = (2 * math.log(4 / 13) + math.log(7 / 13) + math.log(2 / 13)) / 4
    assert majority["logp_target"] == pytest.approx(expected)
    always_buy = table.loc["always-buy"]
    assert always_buy["accuracy"] == pytest.approx(0.5)
    hit, miss = math.log(1 - POLICY_EPS), math.log(POLICY_EPS / 2)
    assert always_buy["logp_target"] == pytest.approx((2 * hit + 2 * miss) / 4)
    random = table.loc["random"]
    assert (random["logp_target"], random["brier"], random["accuracy"]) == pytest.approx(
        (-math.log(3), 2 / 3, 1 / 3)
    )
    # momentum decided at 3 of the 4 scored points: right at 2 of them
    momentum = table.loc["policy:momentum"]
    assert (momentum["n"], momentum["coverage"]) == (3, 0.75)
    assert momentum["accuracy"] == pytest.approx(2 / 3)
    # delta: the model's log p(target) minus the row's on the items both scored
    model_logp = [math.log(0.8), math.log(0.8), math.log(0.1)]
    assert momentum["delta_logp"] == pytest.approx(np.mean(model_logp) - (2 * hit + miss) / 3)
    assert math.isnan(table.loc["model", "delta_logp"])
    hold = table.loc["always-hold"]
    assert hold["delta_ci_low"] <= hold["delta_logp"] <= hold["delta_ci_high"]
    markdown = table_markdown(table.reset_index())
    assert markdown.splitlines()[0].startswith("| name | kind | n |")
    assert "| policy:reversal | policy | 1 |" in markdown


def test_probe_beats_majority_on_separable_data() -> None:
    train, validation, test = _separable(400, 0), _separable(150, 1), _separable(200, 2)
    probe = Probe().fit(
        train["prompt"], train["target"], (validation["prompt"], validation["target"])
    )
    assert probe.C in probe.Cs and set(probe.validation_log_loss) == set(probe.Cs)
    assert "signal#0" in probe.columns
    proba = probe.predict_proba(test["prompt"])
    assert proba.shape == (200, 3) and np.allclose(proba.sum(axis=1), 1.0)
    table = baselines_table(test, train=train, validation=validation, key="item_id")
    table = table.set_index("name")
    assert table.loc["probe", "accuracy"] > table.loc["train-majority", "accuracy"] + 0.3
    assert table.loc["probe", "logp_target"] > table.loc["train-majority", "logp_target"] + 0.3
    assert math.isnan(table.loc["probe", "delta_logp"])  # no model row to compare with


def test_probe_gives_a_class_absent_from_train_its_prior() -> None:
    train = _separable(200, 0)
    train = train[train["target"] != "hold"]
    probe = Probe(Cs=(1.0,)).fit(train["prompt"], train["target"])
    proba = probe.predict_proba(train["prompt"][:5])
    assert np.allclose(proba[:, 2], 1 / (len(train) + 3))
    assert np.allclose(proba.sum(axis=1), 1.0)


def test_learnability_check_passes_learnable_and_fails_shuffled_labels() -> None:
    train, validation = _separable(400, 0), _separable(200, 1)
    learnable = learnability_check(train, validation)
    assert learnable.passed, learnable.reason
    assert learnable.metadata["ci_low"] > 0
    assert learnable.metadata["probe_accuracy"] > learnable.metadata["majority_accuracy"]
    shuffled = learnability_check(_separable(400, 0, shuffle=True), _separable(200, 1, True))
    assert not shuffled.passed, shuffled.reason
    assert "not learnable" in shuffled.reason
    by_log_loss = learnability_check(train, validation, metric="log_loss", margin=0.05)
    assert by_log_loss.passed and by_log_loss.metadata["metric"] == "log_loss"
    # a margin above what the probe can add fails even a learnable target
    assert not learnability_check(train, validation, margin=0.99).passed
    few = learnability_check(train[:5], validation)
    assert not few.passed and "too few" in few.reason


def _steps(n_traces: int, seed: int) -> pd.DataFrame:
    """Traces of observation, inference, decision steps. Observations are correct exactly
    when verified; inferences mostly correct; a perturbed copy breaks one step."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_traces):
        perturbed = t % 2 == 1
        faulty = int(rng.integers(1, 4)) if perturbed else None
        for index, kind in enumerate(("observation", "inference", "decision"), start=1):
            broken = index == faulty
            label = not broken and (kind != "inference" or rng.random() < 0.8)
            verified = (not broken) if kind == "observation" else None
            rows.append(
                {
                    "trace_id": f"t{t}",
                    "step_index": index,
                    "kind": kind,
                    "verified": verified,
                    "label": label,
                    "is_perturbed": perturbed,
                    "faulty_step_index": faulty,
                }
            )
    return pd.DataFrame(rows)


def test_prm_baselines_per_kind() -> None:
    train, test = _steps(200, 0), _steps(100, 1)
    perfect = test["label"].astype(float).to_numpy()
    table = prm_baselines(train, test, {"oracle": perfect}).set_index("name")
    assert list(table.index) == ["oracle", "kind-only", "exact-check"]
    assert table.loc["oracle", "auc"] == 1.0
    kind_only, exact = table.loc["kind-only"], table.loc["exact-check"]
    # kind-only is constant within a kind: AUC 0.5 there
    assert kind_only["auc_observation"] == pytest.approx(0.5)
    # exact checks separate observations perfectly, so they beat the kind alone
    assert exact["auc_observation"] == 1.0
    assert exact["auc"] > kind_only["auc"]
    # the oracle finds the faulty step unless another step of its trace is wrong too (a tie)
    assert table.loc["oracle", "faulty_step_found"] > 0.8 > kind_only["faulty_step_found"]
    assert kind_only["faulty_step_chance"] == pytest.approx(1 / 3)
    assert table.loc["oracle", "n_observation"] == 100
    # Against the reference row: the oracle beats kind-only beyond noise (trace bootstrap).
    table = prm_baselines(train, test, {"prm": perfect}, n_resamples=200).set_index("name")
    assert table.loc["kind-only", "delta_auc"] == pytest.approx(1.0 - kind_only["auc"])
    assert table.loc["kind-only", "delta_ci_low"] > 0
    # ... and a copy of kind-only does not.
    same = kind_only_scores(train, test)
    table = prm_baselines(train, test, {"prm": same}, n_resamples=200).set_index("name")
    assert table.loc["kind-only", "delta_auc"] == 0.0
    assert table.loc["kind-only", "delta_ci_low"] <= 0 <= table.loc["kind-only", "delta_ci_high"]


# ---------------------------------------------------------------- the gate's score


def test_gate_on_log_p_target_promotes_better_and_keeps_equal() -> None:
    rng = np.random.default_rng(0)
    ids = [f"dp{i:03d}" for i in range(80)]
    champion = pd.DataFrame({"item_id": ids, "logp_target": np.log(rng.uniform(0.2, 0.5, 80))})
    better = champion.assign(logp_target=champion["logp_target"] + rng.uniform(0.0, 0.2, 80))
    decision = gate_decision(better, champion)
    assert decision.promote and decision.statistics["ci_low"] > 0, decision.reason
    kept = gate_decision(champion, better)
    assert not kept.promote and kept.statistics["ci_high"] < 0
    same = gate_decision(champion.copy(), champion)
    assert not same.promote and same.statistics["mean_diff"] == 0.0
    # brier is negated: lower Brier is the better score
    briers = pd.DataFrame({"item_id": ids, "brier": rng.uniform(0.3, 0.6, 80)})
    assert gate_decision(briers.assign(brier=briers["brier"] - 0.2), briers, score="brier").promote
    assert gate_scores(briers, "brier")["dp000"] == pytest.approx(-briers["brier"][0])
    with pytest.raises(ValueError, match="gate score"):
        gate_scores(briers, "accuracy")


def test_decision_pair_table_ranks_every_pair_from_the_scored_probabilities() -> None:
    from training.report import decision_pair_table

    items = pd.DataFrame({"prompt": ["a", "b", "c", "d"]})
    # Pairs: chosen sell over buy at a, b, c; hold over buy at d; one pair off the items.
    pairs = pd.DataFrame(
        {
            "prompt": ["a", "b", "c", "d", "zzz"],
            "chosen_action": ["sell", "sell", "sell", "hold", "sell"],
            "rejected_action": ["buy", "buy", "buy", "buy", "buy"],
        }
    )
    columns = ["p_buy", "p_sell", "p_hold"]
    right = pd.DataFrame([[0.2, 0.7, 0.1]] * 3 + [[0.2, 0.1, 0.7]], columns=columns)
    wrong = pd.DataFrame([[0.7, 0.2, 0.1]] * 4, columns=columns)
    tie = pd.DataFrame([[1 / 3] * 3] * 4, columns=columns)
    table = decision_pair_table(pairs, items, {"model": right, "sft": wrong, "tie": tie})
    got = table.set_index("name")
    assert list(got["pairs"]) == [4, 4, 4]
    assert got.loc["model", "accuracy"] == 1.0
    assert got.loc["sft", "accuracy"] == 0.0 and got.loc["tie", "accuracy"] == 0.0
    assert got.loc["sft", "delta"] == 1.0 and got.loc["sft", "ci_low"] == 1.0
    assert np.isnan(got.loc["model", "delta"])


def test_decision_pair_table_without_pairs_on_the_items() -> None:
    from training.report import decision_pair_table

    items = pd.DataFrame({"prompt": ["a"]})
    pairs = pd.DataFrame({"prompt": ["zzz"], "chosen_action": ["buy"], "rejected_action": ["hold"]})
    probs = pd.DataFrame([[0.5, 0.3, 0.2]], columns=["p_buy", "p_sell", "p_hold"])
    table = decision_pair_table(pairs, items, {"model": probs, "sft": probs})
    assert list(table["pairs"]) == [0, 0] and table["accuracy"].isna().all()
