"""Ingestion assets: landed files → ``raw_trades`` / ``raw_bars`` / ``raw_decisions`` /
``raw_feedback`` daily partitions (one asset per kind in ``TABLE_OF_KIND``).

What exists (this module) is separate from when it is built (orchestration/sensors.py). The
heavy lifting is plain Python in assets/ingestion/ingest.py; these definitions add partitions, lineage,
metadata and the blocking checks an operator sees in the Dagster UI.
"""

import hashlib
import json

import dagster as dg
from dagster_pandera import pandera_schema_to_dagster_type

from assets.core.contracts import ContractResult
from assets.core.feeds import FeedSpec
from assets.core.partitions import daily_partitions
from assets.core.resources import FeedsResource, StorageResource
from assets.ingestion.ingest import (
    TABLE_OF_KIND,
    FileAccount,
    IngestReport,
    account_for_files,
    ingest_partitions,
    raw_path,
)
from assets.ingestion.raw_contracts import raw_schema, validate_partitions

OWNERS = ["team:market-data"]
# Bump when the ingestion rules change the bytes of raw partitions.
INGEST_CODE_VERSION = "raw-v1"
QUARANTINE_WARN_SHARE = 0.01

# What each raw table holds, and what its contract checks beyond types, non-null required
# columns and timestamps on their partition day.
WHAT = {
    "trades": "Validated trades",
    "bars": "Validated OHLCV bars",
    "decisions": "Recorded decisions of traders or agents (buy, sell or hold a size in [0, 1])",
    "feedback": "Expert process feedback: a rating in {-1, 0, +1} of one reasoning step of an "
    "episode (PRM800K-style)",
}
CONTRACT_RULES = {
    "trades": "prices > 0, sizes >= 0, sides buy/sell/unknown, unique trade ids per feed and "
    "symbol, known symbols",
    "bars": "prices > 0, volume >= 0, OHLC envelope, one bar per feed, symbol and time, "
    "known symbols",
    "decisions": "action buy/sell/hold, size in [0, 1] and 0 for hold, unique decision ids per "
    "feed, known symbols",
    "feedback": "rating in {-1, 0, 1}, step_index >= 1, one rating per feed, episode, step and "
    "rater",
}
CHECKS = {
    "contract": "Every accepted row satisfies the pandera contract of the raw table "
    "(types, required values, timestamp on its partition day, {rules}). Blocking: downstream "
    "assets do not run on a failure.",
    "nothing_lost": "For every landed file the run read, over the whole file (not only the run's "
    "days): rows accepted into raw/ plus rows in quarantine/ (counted back from the written "
    "Parquet, per day) equal the file's rows in the landing index; a refused file (unreadable, "
    "a re-delivered duplicate, a version superseded by a correction) has a file-level record "
    "and no rows. Days of the file not built yet are reported as pending. Blocking.",
    "quarantine_rate": f"Warns when more than {QUARANTINE_WARN_SHARE:.0%} of the rows read were "
    "quarantined; metadata shows counts by reason and a sample.",
    "landed_files_readable": "Warns when a landed file could not be read at all (empty, not "
    "UTF-8, truncated archive, missing columns, wrong delimiter), or a file in the landing zone "
    "cannot be indexed (not a plain file name: a subfolder, a backslash, a control character); "
    "names file, feed and reason.",
}


def landing_key(feed: str) -> dg.AssetKey:
    return dg.AssetKey(["landing", feed])


def build_landing_specs(feeds: dict[str, FeedSpec]) -> list[dg.AssetSpec]:
    """One external asset per declared feed: the immutable files under ``landing/<feed>/``.
    The landing sensor records each new file (path, size, SHA-256) as a materialization."""
    return [
        dg.AssetSpec(
            key=landing_key(feed.name),
            description=feed.description or f"Files landed for feed {feed.name}",
            group_name="landing",
            kinds={feed.format.split("-")[0], "file"},
            owners=OWNERS,
            metadata={
                "feed_kind": feed.kind,
                "format": feed.format,
                "landing_path": f"landing/{feed.name}/",
            },
        )
        for feed in feeds.values()
    ]


def _table_metadata(report: IngestReport, storage_root: str) -> dict[str, dg.MetadataValue]:
    files_md = (
        "| file | sha256 | read | accepted | quarantined | error or refusal |\n"
        "|---|---|---|---|---|---|\n"
    )
    files_md += "\n".join(
        f"| {f.source_file} | `{f.source_hash[:12]}` | {f.rows_read} | {f.accepted} | "
        f"{f.quarantined} | {f.error or f.refused or ''} |"
        for f in report.files[:50]
    )
    # A range run records one materialization per day with this same metadata: the row count
    # of a partition is known only when the run built one day; the run's totals are named so.
    per_day = (
        {"dagster/row_count": dg.MetadataValue.int(report.rows_accepted)}
        if len(report.days) == 1
        else {}
    )
    return {
        **per_day,
        "run_rows_accepted": dg.MetadataValue.int(report.rows_accepted),
        "rows_read": dg.MetadataValue.int(report.rows_read),
        "rows_quarantined": dg.MetadataValue.int(report.rows_quarantined),
        "days": dg.MetadataValue.int(len(report.days)),
        "first_day": dg.MetadataValue.text(report.days[0]),
        "last_day": dg.MetadataValue.text(report.days[-1]),
        "files": dg.MetadataValue.md(files_md),
        "source_hashes": dg.MetadataValue.json(
            {f.source_file: f.source_hash for f in report.files}
        ),
        "quarantine_reasons": dg.MetadataValue.json(report.reasons),
        "path": dg.MetadataValue.path(
            f"{storage_root}/raw/{report.kind}/date={report.days[0]}/data.parquet"
            if len(report.days) == 1
            else f"{storage_root}/raw/{report.kind}/"
        ),
    }


def _data_version(report: IngestReport) -> dg.DataVersion:
    """The content hash of the partition file (or of all files of a range run)."""
    if len(report.days) == 1:
        return dg.DataVersion(report.data_hashes[report.days[0]])
    joined = json.dumps(report.data_hashes, sort_keys=True).encode()
    return dg.DataVersion(hashlib.sha256(joined).hexdigest())


def _nothing_lost_metadata(accounts: list[FileAccount]) -> dict:
    return {
        "files_checked": len(accounts),
        "rows_in_files": sum(a.rows for a in accounts),
        "rows_found_in_raw_and_quarantine": sum(a.found for a in accounts if not a.refused),
        "rows_in_refused_files": sum(a.rows for a in accounts if a.refused),
        "refused_files": dg.MetadataValue.json(
            {a.source_file: a.refused for a in accounts if a.refused}
        ),
        "rows_pending": sum(a.rows - a.found for a in accounts if a.pending_days and not a.refused),
        "pending_days": dg.MetadataValue.json(
            {a.source_file: a.pending_days[:20] for a in accounts if a.pending_days}
        ),
        "files_with_missing_rows": dg.MetadataValue.json(
            [a.source_file for a in accounts if a.missing]
        ),
        "missing_rows_by_day": dg.MetadataValue.json(
            {
                a.source_file: {
                    d: {"rows": e, "found": n} for d, (e, n) in list(a.missing.items())[:20]
                }
                for a in accounts
                if a.missing
            }
        ),
    }


def _check_results(
    report: IngestReport, contract: ContractResult, accounts: list[FileAccount]
) -> list[dg.AssetCheckResult]:
    share = report.rows_quarantined / report.rows_read if report.rows_read else 0.0
    sample = [
        {k: (str(v)[:200] if v is not None else "") for k, v in row.items()}
        for row in report.quarantine_sample[:10]
    ]
    return [
        dg.AssetCheckResult(
            check_name="contract",
            passed=contract.passed,
            metadata={"rows_validated": contract.rows, **contract.metadata()},
        ),
        dg.AssetCheckResult(
            check_name="nothing_lost",
            passed=not any(a.missing for a in accounts),
            metadata={"rows_read": report.rows_read, **_nothing_lost_metadata(accounts)},
        ),
        dg.AssetCheckResult(
            check_name="quarantine_rate",
            passed=share <= QUARANTINE_WARN_SHARE,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "rows_quarantined": report.rows_quarantined,
                "quarantined_share": float(round(share, 6)),
                "by_reason": dg.MetadataValue.json(report.reasons),
                "sample": dg.MetadataValue.json(sample),
            },
        ),
        dg.AssetCheckResult(
            check_name="landed_files_readable",
            passed=not report.file_errors,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "unreadable_files": dg.MetadataValue.json(
                    [
                        {
                            "feed": f.feed,
                            "file": f.source_file,
                            "sha256": f.source_hash,
                            "error": f.error,
                        }
                        for f in report.file_errors
                    ]
                )
            },
        ),
    ]


def build_raw_asset(kind: str, feeds: dict[str, FeedSpec]) -> dg.AssetsDefinition:
    """``raw_<kind>`` (see ``TABLE_OF_KIND``): daily partitions built from every landed file of
    the day."""
    name = TABLE_OF_KIND[kind]
    column_schema = pandera_schema_to_dagster_type(raw_schema(kind, with_partition=False)).metadata[
        "schema"
    ]

    @dg.asset(
        name=name,
        description=(
            f"{WHAT[kind]} as Parquet, one file per UTC day under raw/{kind}/date=YYYY-MM-DD/, "
            "built from every landed file touching that day. Each row carries its feed, source "
            f"file and the file's SHA-256. Rejected rows go to quarantine/{kind}/ with a reason."
        ),
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[landing_key(f.name) for f in feeds.values() if f.kind == kind],
        group_name="ingestion",
        kinds={"duckdb", "parquet", "pandera"},
        owners=OWNERS,
        code_version=INGEST_CODE_VERSION,
        # One writer per raw table: two runs rebuilding the same day must not interleave.
        pool=f"{name}_writer",
        metadata={"dagster/column_schema": column_schema},
        check_specs=[
            dg.AssetCheckSpec(
                check,
                asset=name,
                description=text.replace("{rules}", CONTRACT_RULES[kind]),
                blocking=check in ("contract", "nothing_lost"),
            )
            for check, text in CHECKS.items()
        ],
    )
    def _raw(
        context: dg.AssetExecutionContext, storage: StorageResource, feeds: FeedsResource
    ) -> dg.MaterializeResult:
        store, declared = storage.get(), feeds.load()
        days = list(context.partition_keys)
        report = ingest_partitions(store, declared, kind, days)
        for ledger in report.file_errors:
            context.log.warning(
                f"feed {ledger.feed!r}, file {ledger.source_file!r} not ingested: {ledger.error}"
            )
        contract = validate_partitions(
            store, declared, kind, report.rows_by_day, lambda d: raw_path(kind, d)
        )
        accounts = account_for_files(store, report)
        context.log.info(
            f"{name} {days[0]}..{days[-1]}: {report.rows_accepted} rows accepted, "
            f"{report.rows_quarantined} quarantined, {len(report.file_errors)} unreadable files"
        )
        return dg.MaterializeResult(
            metadata=_table_metadata(report, store.root),
            data_version=_data_version(report),
            check_results=_check_results(report, contract, accounts),
        )

    return _raw


def build_ingestion_definitions(feeds: dict[str, FeedSpec]) -> tuple[list, list]:
    """(landing specs, raw assets) for the declared feeds."""
    return build_landing_specs(feeds), [build_raw_asset(kind, feeds) for kind in TABLE_OF_KIND]
