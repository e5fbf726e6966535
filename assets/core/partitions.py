"""Partitioning shared by every daily asset: one partition per UTC day.

Daily bars of the default feed have no rows on weekends and holidays; those partitions are
materialized empty rather than skipped, so "every day up to today is built" stays a simple
statement for sensors, freshness and backfills (see the README's notes on calendars)."""

from dagster import DailyPartitionsDefinition, MonthlyPartitionsDefinition

from assets.core.calendar import HISTORY_START

# end_offset=1 includes today's partition, so live micro-batches land in a partition that exists.
daily_partitions = DailyPartitionsDefinition(start_date=HISTORY_START, end_offset=1, timezone="UTC")

# Episodes and datasets rebuild a month at a time. A dbt model per day would record one Dagster
# event per model and day: 13 years of daily history x a dozen models is ~100k events, most of
# a backfill's time; a month holds few enough rows that rebuilding it whole is cheap.
monthly_partitions = MonthlyPartitionsDefinition(
    start_date=HISTORY_START, end_offset=1, timezone="UTC"
)
