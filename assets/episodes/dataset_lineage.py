"""Lineage as data: what a dataset export (and so a checkpoint trained on it) came from.

``dataset_lineage`` gathers, for one exported dataset, the chain a checkpoint's ``lineage.json``
records: the dataset files and their SHA-256 digests (the export's manifest), the monthly
episode partitions its rows come from, the dbt models upstream of it with their checksums
(dbt's manifest), and the raw landed files (path, feed and content hash) whose rows built the
episodes: every ``source_hashes`` / ``outcome_source_hashes`` entry of the dataset's rows is the
SHA-256 of a landed file, resolved through the landing index. The rows are read at the lakehouse
snapshot the export read (``snapshot_id`` of its manifest, ``AT (VERSION => n)``), so the chain
describes the files even after newer data landed; ``dataset.lakehouse_snapshot`` names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from assets.core.feeds import FeedSpec
from assets.core.storage import Storage
from assets.ingestion.ingest import scan_landing

DATASET_MODELS = {"sft": "ds_sft", "dpo": "ds_dpo", "prm": "ds_prm"}


def upstream_models(manifest: dict[str, Any], model: str) -> dict[str, dict[str, str]]:
    """Every dbt model (and seed) upstream of ``model``, itself included: name → checksum and
    materialization, from dbt's manifest."""
    nodes = manifest["nodes"]
    by_name = {n["name"]: uid for uid, n in nodes.items() if n["resource_type"] == "model"}
    seen: dict[str, dict[str, str]] = {}
    pending = [by_name[model]]
    while pending:
        uid = pending.pop()
        node = nodes.get(uid)
        if node is None or node["name"] in seen:
            continue
        seen[node["name"]] = {
            "checksum": node["checksum"]["checksum"],
            "materialized": node["config"].get("materialized", ""),
            "resource_type": node["resource_type"],
        }
        pending.extend(node.get("depends_on", {}).get("nodes", []))
    return dict(sorted(seen.items()))


def at_snapshot(snapshot: int | None) -> str:
    """The time-travel clause of a table read at ``snapshot`` (empty: the newest)."""
    return "" if snapshot is None else f"AT (VERSION => {int(snapshot)})"


def dataset_lineage(
    con: duckdb.DuckDBPyConnection,
    storage: Storage,
    feeds: dict[str, FeedSpec],
    name: str,
    dbt_manifest_path: str | Path,
) -> dict[str, Any]:
    """The lineage of the exported dataset ``name`` (sft, dpo or prm) as a JSON-able dict."""
    model = DATASET_MODELS[name]
    export = json.loads(storage.read_bytes(f"datasets/{name}/manifest.json"))
    snapshot = export.get("snapshot_id")
    at = at_snapshot(snapshot)
    used = {
        row[0]
        for row in con.execute(
            f"select distinct unnest(list_concat(source_hashes, outcome_source_hashes)) "
            f"from {model} {at}"
        ).fetchall()
        if row[0] is not None
    }
    months = [
        row[0]
        for row in con.execute(
            f"select distinct strftime(date_trunc('month', decision_ts at time zone 'UTC'), "
            f"'%Y-%m-%d') as month from {model} {at} order by month"
        ).fetchall()
    ]
    landed = {f.sha256: f for f in scan_landing(storage, feeds)}
    raw_files = [
        {"path": landed[h].path, "feed": landed[h].feed, "sha256": h}
        for h in sorted(used)
        if h in landed
    ]
    manifest = json.loads(Path(dbt_manifest_path).read_text())
    return {
        "dataset": {
            "name": name,
            "model": model,
            "built_by": export.get("built_by"),
            "lakehouse_snapshot": snapshot,
            "split_validation_start": export.get("split_validation_start"),
            "split_test_start": export.get("split_test_start"),
            "files": export["splits"],
        },
        "episode_partitions": months,
        "dbt_models": upstream_models(manifest, model),
        "raw_files": raw_files,
        "unresolved_source_hashes": sorted(h for h in used if h not in landed),
    }
