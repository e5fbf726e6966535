"""The marts and dataset exports as Dagster assets: ``dataset_models`` (unpartitioned dbt
assets) and ``ds_<name>_files`` materialized against a temporary warehouse and storage root,
their blocking checks, files that load with Hugging Face ``datasets``, and the automation of an
unpartitioned asset below monthly partitions (requested once after upstream updates, no loop).

The monthly models are built straight with dbt (test_episodes_assets covers their Dagster
runs); the marts and exports then run through ``dg.materialize``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from helpers import dbt
from helpers.bars import regime_bars, write_raw_bars
from helpers.resources import local_resources

from assets.core.dbt import dbt_project
from assets.core.feeds import load_feeds
from assets.core.lakehouse import lakehouse_connection
from assets.core.resources import (
    StorageResource,
    resources_from_env,
)
from assets.episodes import datasets
from assets.episodes.datasets import dataset_checks, dataset_files
from assets.episodes.dbt_assets import dataset_models, episode_models, is_unpartitioned
from assets.ingestion.ingest import day_range
from assets.ingestion.raw_assets import build_ingestion_definitions

REPO = Path(__file__).resolve().parents[2]
MART_KEYS = {"stg_feedback", "fct_step_labels", "fct_decision_episodes", "ds_sft", "ds_dpo"}
MART_KEYS |= {"ds_prm"}
FILE_KEYS = {f"{model}_files" for model in datasets.DATASETS.values()}


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("datasets_assets")
    root, warehouse = work / "root", work / "warehouse.duckdb"
    write_raw_bars(root, regime_bars(7))
    dbt.run(
        work, warehouse, root, "build", "--select", "+ds_sft +ds_dpo +ds_prm",
        "--exclude", "marts stg_feedback", "--exclude-resource-type", "test",
    )  # fmt: skip
    resources = local_resources(root, warehouse)
    result = dg.materialize([dataset_models, *dataset_files, *dataset_checks], resources=resources)
    again = dg.materialize(dataset_files, resources=resources)
    return {"root": root, "warehouse": warehouse, "result": result, "again": again, "work": work}


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.materialization.asset_key.to_user_string(): {
            k: v.value for k, v in e.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }


def test_dataset_models_are_the_unpartitioned_marts():
    keys = {k.to_user_string() for k in dataset_models.keys}
    assert keys == MART_KEYS
    assert dataset_models.partitions_def is None
    assert not {k.to_user_string() for k in episode_models.keys} & keys
    manifest = json.loads(Path(dbt_project.manifest_path).read_text())
    models = [n for n in manifest["nodes"].values() if n["resource_type"] == "model"]
    assert {n["name"] for n in models if is_unpartitioned(n)} == keys
    specs = {s.key.to_user_string(): s for d in (dataset_models, *dataset_files) for s in d.specs}
    assert set(specs) == MART_KEYS | FILE_KEYS
    for name in ("ds_sft", "ds_dpo", "ds_prm", *FILE_KEYS):
        assert specs[name].group_name == "datasets"
    assert specs["fct_decision_episodes"].group_name == "episodes"
    for spec in specs.values():
        assert spec.automation_condition.get_label() == "follow_upstream_unpartitioned"
        assert spec.tags["partitioning"] == "none"
    # dbt writes the lakehouse one run at a time; the exports only read it (a snapshot each).
    assert dataset_models.op.pool == "duckdb_warehouse"
    assert {d.op.pool for d in dataset_files} == {None}


def test_materialize_marts_and_exports(materialized: dict):
    result = materialized["result"]
    assert result.success
    built = set(_metadata(result))
    assert built == MART_KEYS | FILE_KEYS
    checks = result.get_asset_check_evaluations()
    names = {(c.asset_key.to_user_string(), c.check_name) for c in checks}
    for model in ("fct_decision_episodes", *datasets.DATASETS.values()):
        assert (model, "contract") in names
    assert ("fct_decision_episodes", "point_in_time") in names
    assert ("fct_step_labels", "expert_agreement") in names
    failed = [(c.asset_key.to_user_string(), c.check_name) for c in checks if not c.passed]
    assert not failed
    blocking = {
        (spec.asset_key.to_user_string(), spec.name)
        for d in dataset_checks
        for spec in d.check_specs
        if spec.blocking
    }
    assert ("fct_decision_episodes", "point_in_time") in blocking
    assert ("ds_dpo", "contract") in blocking
    assert ("fct_step_labels", "expert_agreement") not in blocking


def test_exported_files_load_and_match_the_marts(materialized: dict, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets as hf_datasets

    metadata = _metadata(materialized["result"])
    root = materialized["root"]
    with lakehouse_connection(materialized["warehouse"]) as con:
        for name, model in datasets.DATASETS.items():
            meta = metadata[f"{model}_files"]
            counts = dict(con.execute(f"select split, count(*) from {model} group by 1").fetchall())
            assert counts and set(counts) <= set(datasets.SPLITS)
            files = {}
            for split in datasets.SPLITS:
                path = root / datasets.dataset_path(name, split)
                assert meta[f"rows_{split}"] == counts.get(split, 0)
                if split not in counts:
                    assert not path.exists()
                    continue
                assert meta[f"sha256_{split}"] == hashlib.sha256(path.read_bytes()).hexdigest()
                files[split] = str(path)
            assert meta["rows"] == sum(counts.values())
            assert meta["lakehouse"].startswith(f"sqlite catalog {materialized['warehouse']}")
            manifest = json.loads((root / "datasets" / name / "manifest.json").read_text())
            assert meta["lakehouse_snapshot"] == manifest["snapshot_id"] > 0
            assert meta["data_files"] == files
            loaded = hf_datasets.load_dataset(
                "parquet",
                data_files=files,
                cache_dir=str(materialized["work"] / "hf_cache"),
            )
            assert {s: loaded[s].num_rows for s in loaded} == counts
            columns = set(loaded[next(iter(files))].column_names)
            assert {"prompt", "split", "decision_ts", "source_hashes"} <= columns
            manifest = json.loads((root / "datasets" / name / "manifest.json").read_text())
            assert {s: v["rows"] for s, v in manifest["splits"].items()} == counts
            assert manifest["built_by"].startswith("dbt:decision_data/fct_decision_episodes@")
        prm = hf_datasets.load_dataset(
            "parquet",
            data_files={"train": str(root / datasets.dataset_path("prm", "train"))},
            cache_dir=str(materialized["work"] / "hf_cache"),
        )["train"]
        row = prm[0]
        assert len(row["completions"]) == len(row["labels"]) == len(row["soft_labels"])
        assert all(isinstance(label, bool) for label in row["labels"])


def test_export_is_deterministic(materialized: dict):
    first, second = _metadata(materialized["result"]), _metadata(materialized["again"])
    assert materialized["again"].success
    for key in FILE_KEYS:
        for split in datasets.SPLITS:
            assert first[key][f"sha256_{split}"] == second[key][f"sha256_{split}"]


# ---------------------------------------------------------------- automation


def _defs() -> dg.Definitions:
    _, raw_assets = build_ingestion_definitions(load_feeds(REPO / "feeds.yaml"))
    return dg.Definitions(
        assets=[*raw_assets, episode_models, dataset_models, *dataset_files],
        asset_checks=dataset_checks,
        resources=resources_from_env({}),
    )


def _requested(result) -> set[str]:
    return {r.key.to_user_string() for r in result.results if r.true_subset.size > 0}


def _raw(instance: dg.DagsterInstance, table: str, first: str, last: str) -> None:
    for day in day_range(first, last):
        instance.report_runless_asset_event(dg.AssetMaterialization(table, partition=day))
    for check in ("contract", "nothing_lost"):
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(asset_key=dg.AssetKey(table), check_name=check, passed=True)
        )


def _built(instance: dg.DagsterInstance, keys, partitions=(None,)) -> None:
    for key in keys:
        for partition in partitions:
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))


def test_marts_follow_monthly_upstream_once_without_looping():
    defs = _defs()
    evaluate = dg.evaluate_automation_conditions
    with dg.DagsterInstance.ephemeral() as instance:
        result = evaluate(defs=defs, instance=instance)
        assert not _requested(result) & (MART_KEYS | FILE_KEYS)  # empty: nothing to build from

        # History lands: the monthly models are requested; the marts wait for their run
        # instead of starting beside it.
        _raw(instance, "raw_bars", "2004-09-01", "2004-09-30")
        result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
        requested = _requested(result)
        assert {"stg_bars", "int_counterfactuals", "int_step_labels"} <= requested
        assert not requested & (MART_KEYS | FILE_KEYS)

        # The monthly run finished: the marts and exports are requested together in one tick
        # (unpartitioned requests of one tick share one run).
        months = ("2004-07-01", "2004-08-01", "2004-09-01")
        _built(instance, episode_models.keys, months)
        result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
        assert _requested(result) == (MART_KEYS - {"stg_feedback"}) | FILE_KEYS

        # Built: nothing more, tick after tick.
        _built(instance, MART_KEYS - {"stg_feedback"})
        result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
        _built(instance, FILE_KEYS)
        for _ in range(3):
            result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
            assert not _requested(result) & (MART_KEYS | FILE_KEYS)

        # Expert feedback lands (any day): stg_feedback, the marts and exports, no monthly model.
        _raw(instance, "raw_feedback", "2025-01-10", "2025-01-10")
        result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
        assert _requested(result) == MART_KEYS | FILE_KEYS
        _built(instance, MART_KEYS | FILE_KEYS)
        result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
        result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
        assert not _requested(result)


def test_failed_blocking_check_holds_the_export_back():
    defs = _defs()
    evaluate = dg.evaluate_automation_conditions
    with dg.DagsterInstance.ephemeral() as instance:
        result = evaluate(defs=defs, instance=instance)
        _built(instance, ["ds_sft", "ds_dpo"])
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey("ds_sft"), check_name="contract", passed=False
            )
        )
        result = evaluate(defs=defs, instance=instance, cursor=result.cursor)
        requested = _requested(result)
        assert "ds_dpo_files" in requested
        assert "ds_sft_files" not in requested


def test_export_to_s3_writes_the_same_bytes(materialized: dict, s3_storage):
    with lakehouse_connection(materialized["warehouse"]) as con:
        manifest = datasets.export_dataset(con, s3_storage, "dpo")
    local = _metadata(materialized["result"])["ds_dpo_files"]
    assert manifest["splits"]
    for split, entry in manifest["splits"].items():
        assert entry["uri"].startswith("s3://")
        assert entry["sha256"] == local[f"sha256_{split}"] == s3_storage.sha256(entry["path"])
    assert json.loads(s3_storage.read_bytes("datasets/dpo/manifest.json")) == manifest


def _export_rows(n: int, seed: int, shuffle: bool) -> pd.DataFrame:
    """ds_sft-shaped rows whose action is the sign of a number in the prompt (shuffled: no
    relation), split 60/40 into train and validation."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    action = np.where(signal > 0, "buy", "sell")
    if shuffle:
        action = rng.permutation(action)
    return pd.DataFrame(
        {
            "prompt": [f"Symbol: X\n- 5-bar log return: {s:+.2f}%" for s in signal],
            "action": action,
            "split": np.where(np.arange(n) % 5 < 3, "train", "validation"),
        }
    )


@pytest.mark.parametrize("shuffle", [False, True])
def test_learnability_check_blocks_training_on_an_unlearnable_export(
    tmp_path: Path, shuffle: bool
) -> None:
    """The blocking 'learnable' check of ds_sft_files: a prompt that predicts the action
    passes and the downstream asset runs; shuffled actions fail and block it."""
    rows = _export_rows(400, 0, shuffle)

    @dg.asset(name="ds_sft_files")
    def export(storage: StorageResource) -> None:
        for split, frame in rows.groupby("split"):
            local = tmp_path / f"{split}.parquet"
            frame.to_parquet(local, index=False)
            storage.get().commit_file(local, datasets.dataset_path("sft", split))

    @dg.asset(deps=["ds_sft_files"])
    def sft_model() -> None:
        return None

    (check,) = [c for c in datasets.learnability_checks if "ds_sft_files" in str(c.check_keys)]
    result = dg.materialize(
        [export, sft_model, check],
        resources={"storage": StorageResource(root=str(tmp_path / "root"))},
        raise_on_error=False,
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed is not shuffle, evaluation.metadata["reason"].value
    built = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert ("sft_model" in built) is not shuffle
    assert evaluation.metadata["n_validation"].value == 160
    assert (evaluation.metadata["ci_low"].value > 0) is not shuffle
