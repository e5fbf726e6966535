"""Decision episodes and datasets: the dbt project (dbt_project/) as Dagster assets.

Every dbt model is an asset. Staging and intermediate models are partitioned by month
(``episode_models``); a run passes its partition window to dbt as vars (min_date, max_date) and
builds the window in one dbt invocation, so a backfill of any range is one run and one
``dbt build``. The marts (fct_step_labels, fct_decision_episodes, ds_sft, ds_dpo, ds_prm) and
stg_feedback are unpartitioned (``dataset_models``): whole tables over every month (the
walk-forward split is global; feedback on an old episode can arrive any time), rebuilt after
upstream partitions change. dbt tests become asset checks.
"""

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from assets.core.automation import (
    MONTHLY_TAG,
    UNPARTITIONED_TAG,
    follow_upstream,
    follow_upstream_unpartitioned,
)
from assets.core.dbt import build_vars, dbt_project
from assets.core.partitions import monthly_partitions
from assets.core.resources import StorageResource, WarehouseResource
from assets.core.storage import scratch_prefix

OWNERS = ["team:research-data"]
# dbt selection of the unpartitioned models (``dataset_models``); is_unpartitioned says the same.
UNPARTITIONED_MODELS = "marts stg_feedback"


# A test over several models (a singular test joining two of them) runs only when every model
# it reads is built in the same invocation or already upstream: with dbt's default (eager) a
# run of the first layer alone ran it against a table the next run creates, and failed.
BUILD_FLAGS = ("--indirect-selection", "buildable")


def is_unpartitioned(node: dict[str, Any]) -> bool:
    """A model of ``dataset_models``: a mart, or stg_feedback (which reads every raw day)."""
    return node["fqn"][1:2] == ["marts"] or node["name"] == "stg_feedback"


class EpisodeTranslator(DagsterDbtTranslator):
    """Groups, owners, kinds and automation of the dbt assets; keys stay dbt's model names."""

    def get_asset_spec(self, manifest: Any, unique_id: str, project: Any) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest["nodes"].get(unique_id)
        if node is None or node["resource_type"] != "model":
            return spec
        layer = node["fqn"][1] if len(node["fqn"]) > 2 else "marts"
        unpartitioned = is_unpartitioned(node)
        spec = spec.replace_attributes(
            group_name="datasets" if node["name"].startswith("ds_") else "episodes",
            owners=OWNERS,
            automation_condition=(
                follow_upstream_unpartitioned() if unpartitioned else follow_upstream()
            ),
        ).merge_attributes(
            kinds={"duckdb"},
            tags={
                "layer": layer,
                **dict([UNPARTITIONED_TAG if unpartitioned else MONTHLY_TAG]),
            },
        )
        lookahead = int((node.get("meta") or {}).get("lookahead_months", 0))
        if lookahead:
            spec = spec.replace_attributes(
                deps=[
                    dg.AssetDep(dep.asset_key, partition_mapping=lookahead_mapping(lookahead))
                    for dep in spec.deps
                ]
            )
        return spec


def lookahead_mapping(months: int) -> dg.TimeWindowPartitionMapping:
    """A month also depends on the next ``months`` months upstream: outcomes mature when later
    bars land, so a later raw day must rebuild the earlier month whose horizons it completes.
    Set per model in its YAML (``meta: {lookahead_months: 1}``)."""
    return dg.TimeWindowPartitionMapping(
        start_offset=0, end_offset=months, allow_nonexistent_upstream_partitions=True
    )


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=EpisodeTranslator(),
    partitions_def=monthly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb_warehouse",
    name="episode_models",
    # Seeds are configuration refreshed by every run (see below), not partitioned data; the
    # unpartitioned models are dataset_models.
    exclude=f"resource_type:seed {UNPARTITIONED_MODELS}",
)
def episode_models(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    storage: StorageResource,
    warehouse: WarehouseResource,
):
    window = context.partition_time_window
    window_vars = build_vars(window.start, window.end, storage.get().root)
    context.log.info(f"dbt build for {window_vars['min_date']}..{window_vars['max_date']}")
    # Staging views are definitions of the build window (which raw days to read) and seeds are
    # configuration (policy parameters), not data: refresh both for this window whether or not
    # they are selected, so a run of any subset (the automation sensor requests layer by layer)
    # reads the right days and the current parameters.
    refresh = ["build", "--select", "staging resource_type:seed"]
    refresh += ["--resource-type", "model", "--resource-type", "seed"]
    what = "staging views and seeds for the build window"
    yield from _refresh_then_build(context, dbt, warehouse, window_vars, refresh, what)


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=EpisodeTranslator(),
    select=UNPARTITIONED_MODELS,
    pool="duckdb_warehouse",
    name="dataset_models",
)
def dataset_models(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    storage: StorageResource,
    warehouse: WarehouseResource,
):
    """The marts and stg_feedback: full tables, no build window (min_date and max_date keep
    their defaults; the intermediate models they read are not rebuilt here)."""
    window_vars = {"storage_root": storage.get().root}
    # stg_feedback is a view whose SQL names the raw files present when it was created: refresh
    # it for every run, selected or not, so the marts see every rating landed so far.
    refresh = ["run", "--select", "stg_feedback"]
    yield from _refresh_then_build(context, dbt, warehouse, window_vars, refresh, "stg_feedback")


def _refresh_then_build(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    warehouse: WarehouseResource,
    window_vars: dict[str, Any],
    refresh: list[str],
    what: str,
) -> Iterator[Any]:
    """``dbt <refresh>`` (what every run needs, selected or not), then the run's own selection
    as ``dbt build`` with its events streamed; both with ``window_vars`` and the lakehouse's
    settings. A failed refresh fails the run ("refreshing <what> failed").

    dbt's target and log folders are a scratch folder of this process, removed after the run
    (the leftovers of a killed one by the next run): not ``dbt_project/target/`` in the code's
    own tree, which a run pod's image may not let it write, and which grew by a folder per
    invocation."""
    window = json.dumps(window_vars)
    with warehouse.dbt_env(), tempfile.TemporaryDirectory(prefix=scratch_prefix("dd-dbt")) as tmp:
        refreshed = dbt.cli([*refresh, "--vars", window], target_path=Path(tmp) / "refresh")
        refreshed.wait()
        if not refreshed.is_successful():
            raise dg.Failure(f"refreshing {what} failed")
        build = dbt.cli(
            ["build", "--vars", window, *BUILD_FLAGS],
            context=context,
            target_path=Path(tmp) / "build",
        )
        yield from build.stream()


def _seed_specs() -> list[dg.AssetSpec]:
    """The dbt seeds (reference policy parameters) as declared assets with their dbt
    descriptions: configuration that every episode run refreshes, not partitioned data, so they
    are specs, not part of episode_models. Without them the UI shows an undescribed stub."""
    manifest = json.loads(Path(dbt_project.manifest_path).read_text())
    translator = EpisodeTranslator()
    return [
        dg.AssetSpec(
            key=translator.get_asset_spec(manifest, uid, None).key,
            group_name="episodes",
            owners=OWNERS,
            kinds={"dbt", "csv"},
            description=(node.get("description") or "").strip()
            + " Loaded by `dbt seed` at the start of every episode_models run.",
            metadata={"dbt_seed_path": node.get("original_file_path", "")},
        )
        for uid, node in sorted(manifest["nodes"].items())
        if node["resource_type"] == "seed"
    ]


seed_specs = _seed_specs()
