"""Freshness: a stalled feed or a stuck episode build shows as a failing check in the UI.

Last-update checks (the newest materialization of any partition must be recent), evaluated by
one sensor. Only the live kinds get them: ``raw_trades`` (collector micro-batches land every
few seconds to minutes) and what is built from it, the bars, the decision points' features
and the episode mart. Historical feeds (the daily bokeh-stocks bars) are expected to be quiet;
a freshness check on them would only ever fail.

Windows, as a user would tune them: raw trades within 1 hour (a collector that stopped for an
hour is an incident), episodes within 6 hours (they follow raw through the automation sensor,
and a month's rebuild plus the marts takes minutes; 6 hours leaves room for a long backfill in
the same pool). Severity WARN: freshness says "look", the blocking contracts say "stop".
"""

from datetime import timedelta

import dagster as dg

RAW_LIVE_ASSETS = [dg.AssetKey("raw_trades")]
EPISODE_ASSETS = [
    dg.AssetKey("int_bars"),
    dg.AssetKey("int_features"),
    dg.AssetKey("fct_decision_episodes"),
]
RAW_MAX_AGE = timedelta(hours=1)
EPISODES_MAX_AGE = timedelta(hours=6)

freshness_checks = [
    *dg.build_last_update_freshness_checks(
        assets=RAW_LIVE_ASSETS,
        lower_bound_delta=RAW_MAX_AGE,
        severity=dg.AssetCheckSeverity.WARN,
    ),
    *dg.build_last_update_freshness_checks(
        assets=EPISODE_ASSETS,
        lower_bound_delta=EPISODES_MAX_AGE,
        severity=dg.AssetCheckSeverity.WARN,
    ),
]

freshness_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=freshness_checks,
    minimum_interval_seconds=300,
    name="freshness_checks_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
