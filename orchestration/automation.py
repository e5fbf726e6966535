"""Named automation conditions: when derived assets rebuild by themselves."""

import dagster as dg


def follow_upstream() -> dg.AutomationCondition:
    """Rebuild a partition when any upstream partition it depends on was updated (or it went
    missing), for every partition, historical ones included: a late file for 2004 must reach
    the 2004 episodes. Waits while upstream runs are in flight or missing, and never builds on
    an upstream partition whose blocking checks failed."""
    return (
        dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("follow_upstream")
