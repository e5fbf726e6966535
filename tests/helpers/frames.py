"""Model outputs against the pandas oracles: a dbt export read in the oracles' form, and a
column-by-column comparison that names the first rows that differ."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def sorted_by(frame: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """The rows in ``key`` order (stable), numbered from 0."""
    return frame.sort_values(list(key), kind="stable").reset_index(drop=True)


def read_export(
    path: Path,
    key: Sequence[str],
    *,
    timestamps: Sequence[str],
    lists: Sequence[str],
    unit: str = "ns",
) -> pd.DataFrame:
    """A model's Parquet export as the oracles build their frames: ``bar_date`` as datetime64,
    the ``timestamps`` in UTC at ``unit``, the ``lists`` as tuples, rows in ``key`` order."""
    frame = pq.read_table(path).to_pandas()
    frame["bar_date"] = pd.to_datetime(frame["bar_date"])
    for column in timestamps:
        frame[column] = frame[column].dt.tz_convert("UTC").astype(f"datetime64[{unit}, UTC]")
    for column in lists:
        frame[column] = frame[column].map(tuple)
    return sorted_by(frame, key)


def assert_columns_match(
    actual: pd.DataFrame,
    expected: pd.DataFrame,
    key: Sequence[str],
    exact: Sequence[str],
    close: Sequence[str] = (),
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
    """Same number of rows; the ``exact`` columns equal (NULL = NULL), the ``close`` ones equal
    within ``rtol`` / ``atol`` (NaN = NaN), row by row. A failure shows the rows that differ by
    their ``key``."""
    assert len(actual) == len(expected)
    actual, expected = actual.reset_index(drop=True), expected.reset_index(drop=True)
    for column in exact:
        left, right = actual[column], expected[column]
        same = (left == right) | (left.isna() & right.isna())
        assert same.all(), f"{column}:\n{actual.loc[~same, [*key, column]].head()}"
    for column in close:
        left, right = actual[column].to_numpy(float), expected[column].to_numpy(float)
        same = np.isclose(left, right, rtol=rtol, atol=atol) | (np.isnan(left) & np.isnan(right))
        assert same.all(), f"{column}:\n{actual.loc[~same, [*key, column]].head()}"
