"""A backfill is one dbt invocation over the whole range; it must give exactly the tables that
building the same days one monthly partition at a time gives (issue: backfill on demand).

Incremental path, as Dagster runs it: the history up to 2024-09 once, then each month of
2024-10..2024-12 as its own run, followed by runs of the two months before it (the
lookahead_months mapping: a new month completes their outcomes and the automation rebuilds
them). Every table of the episode models is compared by a content digest (row order is not
part of a table) and by row count.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from helpers import dbt
from helpers.bars import END, START, write_episode_inputs

from assets.core.lakehouse import connect

TABLES = [
    "int_bars",
    "int_features",
    "int_decisions",
    "int_recorded_decisions",
    "int_outcomes",
    "int_counterfactuals",
    "int_step_labels",
]
HISTORY_END = date(2024, 9, 30)
NO_TESTS = ("--exclude-resource-type", "test")


def month_windows(first: date, last: date) -> list[tuple[date, date]]:
    windows, start = [], first
    while start <= last:
        following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        windows.append((start, following - timedelta(days=1)))
        start = following
    return windows


def digests(path) -> dict[str, tuple[int, str]]:
    con = connect(path)
    try:
        return {
            table: con.execute(
                f"select count(*), md5(string_agg(row, '\n' order by row)) "
                f"from (select cast(t as varchar) as row from {table} as t)"
            ).fetchone()
            for table in TABLES
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("backfill_root")
    write_episode_inputs(root, 11)
    return root


def build(work, root, windows: list[tuple[date, date]]) -> dict[str, tuple[int, str]]:
    """The episode models built window by window (no data tests); their digests."""
    dbt.build_windows(
        work, "build", work / "warehouse.duckdb", root, "+int_step_labels", windows, *NO_TESTS
    )
    return digests(work / "warehouse.duckdb")


def test_backfill_equals_partition_by_partition(root, tmp_path_factory) -> None:
    expected = build(tmp_path_factory.mktemp("backfill"), root, [(START, END)])

    months = month_windows(START, END)
    windows = [(START, HISTORY_END)]
    for index, window in enumerate(months):
        if window[0] > HISTORY_END:
            windows += [window, months[index - 1], months[index - 2]]
    actual = build(tmp_path_factory.mktemp("stepwise"), root, windows)

    assert all(rows > 0 for rows, _ in expected.values()), expected
    assert actual == expected
