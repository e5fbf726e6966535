"""The verdict of ``python -m orchestration.evaluate`` (``make train``'s last step)."""

from __future__ import annotations

import pandas as pd

from orchestration.evaluate import beats


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
