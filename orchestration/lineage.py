"""Where a checkpoint came from: ``python -m orchestration.lineage TARGET [--json]``.

TARGET is a checkpoint folder, ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or
``<name>@<alias>`` (e.g. ``decision-data-sft@challenger``). Prints the chain

    checkpoint -> stage and base model (a DPO checkpoint: the SFT checkpoint it started from,
    with that checkpoint's own chain) -> dataset files (sha256, rows) and the lakehouse
    snapshot they were exported from (``AT (VERSION => n)`` reads the same rows) -> episode partitions
    (count, first..last) -> dbt models (name, checksum) -> raw landed files (path, feed, sha256)

read from the checkpoint's lineage.json. ``--json`` prints lineage.json itself.

A folder is read without importing MLflow or Dagster (this module imports neither at the top).
A registry target resolves the version's source (the run's ``checkpoint`` artifact folder):
read in place when it is a local folder, else only lineage.json is downloaded. The tracking
store is ``--tracking-uri``, else $MLFLOW_TRACKING_URI, else the platform's default SQLite file;
an S3-compatible artifact store is reached through $AWS_ENDPOINT_URL (path-style), as the
training assets reach it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

LINEAGE_FILE = "lineage.json"


# ----------------------------------------------------------------------------- resolving


def is_registry_target(target: str) -> bool:
    return target.startswith("models:/") or ("@" in target and not Path(target).exists())


def resolve_registry(
    target: str, tracking_uri: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(lineage dict, registry info) of a registered model version."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from assets.core.model_store import local_path, s3_env
    from assets.core.settings import settings_from_env

    settings = settings_from_env()
    uri = tracking_uri or settings.mlflow_tracking_uri
    os.environ.update(s3_env(settings.s3_endpoint_url))  # an S3-compatible artifact store
    client = MlflowClient(tracking_uri=uri)
    spec = target[len("models:/") :] if target.startswith("models:/") else target
    if "@" in spec:
        name, alias = spec.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = spec.partition("/")
        if not number:
            raise ValueError(f"{target!r}: expected models:/<name>/<version> or <name>@<alias>")
        version = client.get_model_version(name, number)
    source = version.source
    info = {
        "model": name,
        "version": str(version.version),
        "run_id": version.run_id,
        "source": source,
        "tags": dict(version.tags or {}),
        "aliases": list(getattr(version, "aliases", []) or []),
    }
    local = local_path(source)
    if local is not None and (local / LINEAGE_FILE).is_file():
        info["checkpoint"] = str(local)
        return json.loads((local / LINEAGE_FILE).read_text()), info
    with tempfile.TemporaryDirectory(prefix="dd-lineage-") as tmp:
        path = download_artifacts(
            artifact_uri=f"{source.rstrip('/')}/{LINEAGE_FILE}", dst_path=tmp, tracking_uri=uri
        )
        info["checkpoint"] = source
        return json.loads(Path(path).read_text()), info


def read_folder(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / LINEAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {LINEAGE_FILE} (not a training checkpoint?)")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- printing


def describe(lineage: dict[str, Any], checkpoint: str, indent: str = "") -> list[str]:
    """The chain as text lines."""
    out = [f"{indent}checkpoint {checkpoint}"]
    git = lineage.get("git") or {}
    revision = git.get("revision", "?")[:12] + (" (dirty)" if git.get("dirty") else "")
    out.append(
        f"{indent}  stage {lineage.get('stage', '?')}, base model {lineage.get('base_model', '?')}"
        f", trained {lineage.get('started_at', '?')} .. {lineage.get('ended_at', '?')}"
        f", code {revision}"
    )
    dagster = lineage.get("dagster") or {}
    if dagster:
        out.append(
            f"{indent}  dagster run {dagster.get('run_id')} asset {dagster.get('asset_key')}"
        )
    metrics = lineage.get("metrics") or {}
    shown = {k: v for k, v in metrics.items() if k in ("train_loss", "eval_loss") and v is not None}
    if shown:
        out.append(f"{indent}  " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    base = lineage.get("base_model") or ""
    start = lineage.get("start_from") or {}
    if start.get("model_uri"):  # a registered starting model (the base above is its local copy)
        out.append(f"{indent}  started from {start['model_uri']} (source {start.get('source')})")
    if lineage.get("stage") == "dpo" and Path(base, LINEAGE_FILE).is_file():
        out.append(f"{indent}  started from (policy and reference):")
        out += describe(read_folder(base), base, indent + "    ")
    dataset = lineage.get("dataset") or {}
    files = dataset.get("files") or {}
    snapshot = dataset.get("lakehouse_snapshot")
    read_at = f", read at lakehouse snapshot {snapshot}" if snapshot is not None else ""
    out.append(
        f"{indent}dataset {dataset.get('model', '?')} built by {dataset.get('built_by')}{read_at}"
    )
    for split, entry in files.items():
        out.append(
            f"{indent}  {split:<10} rows {entry.get('rows'):>7}  sha256 {entry.get('sha256')}  "
            f"{entry.get('uri') or entry.get('path')}"
        )
    months = lineage.get("episode_partitions") or []
    span = f" ({months[0]} .. {months[-1]})" if months else ""
    out.append(f"{indent}episode partitions: {len(months)}{span}")
    models = lineage.get("dbt_models") or {}
    out.append(f"{indent}dbt models: {len(models)}")
    for name, node in models.items():
        out.append(f"{indent}  {name:<32} {node.get('checksum')}")
    raw = lineage.get("raw_files") or []
    out.append(f"{indent}raw landed files: {len(raw)}")
    for item in raw:
        out.append(f"{indent}  {item['path']}  feed {item['feed']}  sha256 {item['sha256']}")
    unresolved = lineage.get("unresolved_source_hashes") or []
    if unresolved:
        out.append(
            f"{indent}unresolved source hashes (not in the landing index): {len(unresolved)}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestration.lineage", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "target", help="checkpoint folder, models:/<name>/<version> or <name>@<alias>"
    )
    parser.add_argument("--json", action="store_true", help="print lineage.json as it is")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for registry targets")
    args = parser.parse_args(argv)
    try:
        if is_registry_target(args.target):
            lineage, info = resolve_registry(args.target, args.tracking_uri)
            checkpoint = info["checkpoint"]
            header = [
                f"registered model {info['model']} version {info['version']} "
                f"(aliases {', '.join(info['aliases']) or 'none'}), MLflow run {info['run_id']}",
                f"  source {info['source']}",
            ]
        else:
            lineage, checkpoint, header = read_folder(args.target), args.target, []
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(lineage, indent=2, sort_keys=True))
        return 0
    print("\n".join([*header, *describe(lineage, str(checkpoint))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
