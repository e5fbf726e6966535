"""Named automation conditions (when derived assets rebuild by themselves) and the run tags
that say why a retraining run started."""

import dagster as dg

# Why a train_models run started (drift, new_data, schedule; orchestration/retraining.py sets
# them, the training assets record them in metadata and lineage.json).
RETRAIN_REASON_TAG = "decision_data/retrain_reason"
RETRAIN_DETAIL_TAG = "decision_data/retrain_detail"


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


# Unpartitioned assets (the marts, stg_feedback and the dataset exports) carry this tag; among
# them a dependency requested in the same tick runs in the same run (see below).
UNPARTITIONED_TAG = ("partitioning", "none")
UNPARTITIONED_ASSETS = dg.AssetSelection.tag(*UNPARTITIONED_TAG)
# The monthly episode models (staging and intermediate): `--select 'tag:partitioning=monthly'`
# rebuilds a range of months without the marts, training or monitoring downstream of them.
MONTHLY_TAG = ("partitioning", "monthly")


def follow_upstream_unpartitioned(
    same_run: dg.AssetSelection = UNPARTITIONED_ASSETS,
) -> dg.AutomationCondition:
    """follow_upstream for an unpartitioned asset built from partitioned ones (the marts are
    whole tables over every month; the exports follow the marts): rebuild once after any
    upstream partition was updated, when no upstream run is in flight, never on an upstream
    asset whose blocking checks failed.

    Two differences from follow_upstream:

    - A dependency that is merely requested in the same tick counts only if it is in
      ``same_run`` (the other unpartitioned assets, which then share this run). A monthly
      parent requested in this tick runs in another run (or backfill): counting it would start
      this asset beside it, possibly first, and again once it finished. Instead its
      materialization is awaited (an update stays pending until handled, through
      since_last_handled, while upstream runs are in progress).
    - Being missing alone does not request it: on an empty warehouse there is nothing to build
      from, so the first build follows the first upstream update.

    Loop-free: a build updates only this asset and its downstream, never its parents; an update
    by a run that also built this asset does not count (executed_with_root_target)."""
    updated = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.newly_updated() & ~dg.AutomationCondition.executed_with_root_target()
    ) | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested()).allow(
        same_run
    )
    return (
        updated.since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.any_deps_match(upstream_blocking_check_failed())
    ).with_label("follow_upstream_unpartitioned")
