"""The verdict of ``python -m orchestration.evaluate`` (``make train``'s last step)."""

from __future__ import annotations

import pandas as pd

from orchestration.evaluate import beats, verdict


def _table(rows: list[tuple[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"name": name, "kind": "baseline", "delta_ci_low": low} for name, low in rows]
    )


def test_the_model_must_beat_base_and_majority_beyond_noise():
    table = _table([("model", float("nan")), ("base", 0.4), ("train-majority", 0.2)])
    assert beats(table) == {"base": True, "train-majority": True}
    table = _table([("base", 0.4), ("train-majority", -0.01), ("random", 0.5)])
    assert beats(table) == {"base": True, "train-majority": False}


def test_a_missing_row_is_not_beaten():
    assert beats(_table([("train-majority", 0.3)])) == {"base": False, "train-majority": True}


def test_the_verdict_covers_dpo_pairs_and_the_prm_when_evaluated():
    from training.report import EvaluationReport

    decisions = _table([("base", 0.4), ("train-majority", 0.2)])
    pairs = pd.DataFrame(
        [{"name": "model", "delta_ci_low": None}, {"name": "sft", "delta_ci_low": 0.01}]
    )
    prm = pd.DataFrame([{"name": "prm"}, {"name": "kind-only", "delta_ci_low": -0.02}])
    empty = pd.DataFrame()
    report = EvaluationReport(
        metrics={},
        items=empty,
        baselines=decisions,
        backtest=empty,
        pair_table=pairs,
        prm_baselines=prm,
    )
    assert verdict(report) == {
        "decision log p(target) > base": True,
        "decision log p(target) > train-majority": True,
        "pair ranking > sft": True,
        "prm step AUC > kind-only": False,
    }
    alone = EvaluationReport(metrics={}, items=empty, baselines=decisions, backtest=empty)
    assert set(verdict(alone)) == {
        "decision log p(target) > base",
        "decision log p(target) > train-majority",
    }
