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

import duckdb
import pytest
from test_counterfactuals import END, START, random_bars, write_raw_bars
from test_step_labels import dbt_build, recorded_decisions, write_raw_decisions

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
    con = duckdb.connect(str(path), read_only=True)
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
    bars = random_bars(11)
    write_raw_bars(root, bars)
    write_raw_decisions(root, recorded_decisions(bars))
    return root


def test_backfill_equals_partition_by_partition(root, tmp_path_factory) -> None:
    backfill = tmp_path_factory.mktemp("backfill")
    dbt_build(backfill, root, START, END, *NO_TESTS)

    stepwise = tmp_path_factory.mktemp("stepwise")
    dbt_build(stepwise, root, START, HISTORY_END, *NO_TESTS)
    months = month_windows(START, END)
    for index, window in enumerate(months):
        if window[0] <= HISTORY_END:
            continue
        for lo, hi in (window, months[index - 1], months[index - 2]):
            dbt_build(stepwise, root, lo, hi, *NO_TESTS)

    expected, actual = (
        digests(backfill / "warehouse.duckdb"),
        digests(stepwise / "warehouse.duckdb"),
    )
    assert all(rows > 0 for rows, _ in expected.values()), expected
    assert actual == expected
