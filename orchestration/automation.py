"""Named automation conditions: when derived assets rebuild by themselves."""

import dagster as dg


def follow_upstream() -> dg.AutomationCondition:
    """Rebuild a partition when any upstream partition it depends on was updated (or it went
    missing), for every partition, historical ones included: a late file for 2004 must reach
    the 2004 episodes. Waits while upstream runs are in flight, and never builds on an upstream
    asset whose blocking checks failed.

    Unlike eager(), a missing upstream partition does not hold a month back: a day without
    landed files (a feed with no trades at all, today's partition before its first file) is
    simply no data, and the month is rebuilt when that day arrives."""
    return (
        dg.AutomationCondition.eager()
        .without(dg.AutomationCondition.in_latest_time_window())
        .without(~dg.AutomationCondition.any_deps_missing())
        & ~dg.AutomationCondition.any_deps_match(upstream_blocking_check_failed())
    ).with_label("follow_upstream")


def upstream_blocking_check_failed() -> dg.AutomationCondition:
    """A blocking check of the asset failed. Not "all blocking checks passed": a model that
    was never built (staging of a feed with no data) has checks that never ran, and that must
    not hold its downstream back forever."""
    return dg.AutomationCondition.any_checks_match(
        dg.AutomationCondition.check_failed(), blocking_only=True
    )
