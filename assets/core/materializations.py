"""What the Dagster instance recorded of an asset, as plain values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg


def plain_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata with every ``MetadataValue`` replaced by its plain value."""
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey | str) -> dict[str, Any]:
    """The latest materialization's metadata of ``key`` as plain values (run id under
    ``dagster_run_id``); empty when never materialized."""
    event = instance.get_latest_materialization_event(dg.AssetKey.from_coercible(key))
    if event is None or event.asset_materialization is None:
        return {}
    return {
        **plain_metadata(event.asset_materialization.metadata),
        "dagster_run_id": event.run_id,
    }
