"""When raw partitions are built: the landing sensor.

Each tick lists the landing zone (the landing index makes a seen file cost one stat), and for
files whose content it has not processed yet it:

* records a materialization of ``landing/<feed>`` with the file's path, size and SHA-256, and
* requests the raw partitions the new files touch: one run per raw table and contiguous span of
  days (a 13-year history file is one single-run backfill, not 4,000 runs).

Exactly once per file content: the cursor maps each landed path to the hash already requested,
and each run key is derived from the (path, hash) pairs it covers. A changed file (same path, new
bytes) is new content and requests its days again; so does a new file for a day already built.
"""

import hashlib
import json
from collections import defaultdict
from datetime import date

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from assets.core.partitions import daily_partitions
from assets.core.resources import FeedsResource, StorageResource
from assets.ingestion.ingest import TABLE_OF_KIND, LandedFile, refused_files, scan_landing
from assets.ingestion.raw_assets import landing_key

# New files' days further apart than this become separate runs. Days in between are built as
# empty partitions by the same run, which costs little (a history file of daily bars is one run
# over weekends and holidays); a sparse feed (a decision journal, say) must not become a run per
# cluster of days.
MAX_GAP_DAYS = 92
REASON_TAG = "decision_data/reason"
UNINDEXABLE = "not indexed"


def _spans(days: list[str]) -> list[tuple[str, str]]:
    """Group sorted ISO days into (first, last) spans, splitting at gaps over MAX_GAP_DAYS."""
    spans: list[tuple[str, str]] = []
    for day in sorted(set(days)):
        if (
            spans
            and (date.fromisoformat(day) - date.fromisoformat(spans[-1][1])).days <= MAX_GAP_DAYS
        ):
            spans[-1] = (spans[-1][0], day)
        else:
            spans.append((day, day))
    return spans


def run_requests_for(
    files: list[LandedFile], kind_of_feed: dict[str, str], last_day: str | None = None
) -> list[dg.RunRequest]:
    """The runs that ingest ``files``: per raw table and span of days, up to ``last_day`` (the
    last partition that exists: a request for a later day would fail the whole tick)."""
    by_table: dict[str, list[LandedFile]] = defaultdict(list)
    for f in files:
        kind = kind_of_feed.get(f.feed)
        if kind in TABLE_OF_KIND and f.dates:
            by_table[TABLE_OF_KIND[kind]].append(f)
    requests = []
    for table, table_files in sorted(by_table.items()):
        days = [d for f in table_files for d in f.dates if last_day is None or d <= last_day]
        for first, last in _spans(days):
            covered = sorted(
                (f.path, f.sha256) for f in table_files if any(first <= d <= last for d in f.dates)
            )
            run_key = hashlib.sha256(json.dumps([table, first, last, covered]).encode()).hexdigest()
            tags = {REASON_TAG: f"new landed files ({len(covered)})"}
            if first == last:
                requests.append(
                    dg.RunRequest(
                        run_key=run_key,
                        asset_selection=[dg.AssetKey(table)],
                        partition_key=first,
                        tags=tags,
                    )
                )
            else:
                tags |= {
                    ASSET_PARTITION_RANGE_START_TAG: first,
                    ASSET_PARTITION_RANGE_END_TAG: last,
                }
                requests.append(
                    dg.RunRequest(run_key=run_key, asset_selection=[dg.AssetKey(table)], tags=tags)
                )
    return requests


@dg.sensor(
    name="landing_sensor",
    description="New or changed landed files → the raw partitions they touch, once per file content.",
    asset_selection=dg.AssetSelection.keys(*TABLE_OF_KIND.values()),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource, feeds: FeedsResource
) -> dg.SensorResult:
    declared = feeds.load()
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    landed = scan_landing(storage.get(), declared)
    # Files whose names cannot be indexed (sha256 ""): reported once each, never read.
    unindexable = [f for f in landed if not f.sha256 and seen.get(f.path) != UNINDEXABLE]
    landed = [f for f in landed if f.sha256]
    new = [f for f in landed if seen.get(f.path) != f.sha256]
    if not new and not unindexable:
        return dg.SensorResult(skip_reason="no new landed files")
    for f in unindexable:
        context.log.warning(f"feed {f.feed!r}: {f.path!r} is {f.error}")
    # A correction replaces the versions before it: their days are built again too (a day
    # the correction no longer touches must lose the superseded rows).
    new_paths = {f.path for f in new}
    refused = refused_files(landed)
    superseded = [
        f
        for f in landed
        if f.path not in new_paths
        and refused.get(f.path, "").removeprefix("superseded by the correction ") in new_paths
    ]
    events: list = [
        dg.AssetObservation(
            asset_key=landing_key(f.feed),
            description=f"not indexed: {f.path}",
            metadata={"path": f.path, "size_bytes": f.size, "error": f.error or ""},
        )
        for f in unindexable
    ]
    events += [
        dg.AssetMaterialization(
            asset_key=landing_key(f.feed),
            description=f"landed {f.path}",
            metadata={
                "path": f.path,
                "sha256": f.sha256,
                "size_bytes": f.size,
                "days": len(f.dates),
                "first_day": f.dates[0] if f.dates else "",
                "last_day": f.dates[-1] if f.dates else "",
                "readable": f.error is None,
                "error": f.error or "",
            },
        )
        for f in new
    ]
    for f in new:
        if f.error:
            context.log.warning(f"feed {f.feed!r}, file {f.path!r} is unreadable: {f.error}")
    last_day = daily_partitions.get_last_partition_key()
    for f in new:
        if f.dates and last_day and f.dates[-1] > last_day:
            context.log.warning(
                f"feed {f.feed!r}, file {f.path!r} has rows dated after {last_day}, the last "
                "partition: they wait for their day (nothing_lost reports them as pending)"
            )
    requests = run_requests_for(
        new + superseded, {name: spec.kind for name, spec in declared.items()}, last_day
    )
    seen.update({f.path: f.sha256 for f in new})
    seen.update({f.path: UNINDEXABLE for f in unindexable})
    return dg.SensorResult(
        run_requests=requests, asset_events=events, cursor=json.dumps(seen, sort_keys=True)
    )


def episodes_automation_sensor(running: bool = True) -> dg.AutomationConditionSensorDefinition:
    """Episodes and datasets follow their upstream partitions (assets.core.automation); this
    sensor evaluates those conditions. Requests for several partitions of the single-run dbt
    assets become one backfill, hence one run and one dbt build.

    ``running=False`` (``DD_AUTOMATION_PAUSED``) only changes the default status: the demo's
    own daemon ingests with it stopped and builds the episodes itself, so that a later
    ``dagster dev`` starts the sensor on a fully built instance (its first tick has no earlier
    state to compare with, so nothing counts as newly updated and nothing is rebuilt)."""
    return dg.AutomationConditionSensorDefinition(
        "episodes_automation",
        target=dg.AssetSelection.groups("episodes", "datasets", "monitoring"),
        default_status=dg.DefaultSensorStatus.RUNNING
        if running
        else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
        description="Rebuilds episode and dataset partitions whose upstream partitions changed, "
        "and the drift measurement after them.",
    )
