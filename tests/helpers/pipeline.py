"""A small real pipeline up to the dataset marts, for the training asset tests: raw bars of one
feed, their landed stand-in files and a lakehouse built by dbt (``+ds_sft +ds_dpo +ds_prm``),
plus the small training overrides those tests train the 'tiny' model with.

The landed files are stand-ins whose content is their own path, so their SHA-256 equals the
``source_hash`` helpers.bars.write_raw_bars puts in the raw rows: lineage resolves every hash
through the real landing index.
"""

from __future__ import annotations

from pathlib import Path

from helpers import dbt
from helpers.bars import regime_bars, write_raw_bars

FEEDS_YAML = """
feeds:
  - name: test
    kind: bars
    format: csv
    columns: {symbol: symbol, ts: ts, open: open, high: high, low: low, close: close,
              volume: volume}
    file_date_pattern: '(?P<date>\\d{4}-\\d{2}-\\d{2})'
"""
SMALL = {
    "data.max_train_samples": "16",
    "data.max_eval_samples": "4",
    "train.per_device_train_batch_size": "2",
    "train.per_device_eval_batch_size": "4",
    "train.max_length": "512",
    "train.learning_rate": "1e-3",
}
# TrainingResource keyword arguments: each stage's extra overrides.
OVERRIDES = {
    "sft_overrides": {**SMALL, "eval_generate_samples": "2", "max_new_tokens": "4"},
    "dpo_overrides": dict(SMALL),
    "prm_overrides": dict(SMALL),
}


def landed_files(root: Path, bars) -> list[str]:
    """Write one stand-in landed file per day of ``bars`` under ``root``; their paths."""
    rels = []
    for day in sorted(set(bars["ts"].dt.strftime("%Y-%m-%d"))):
        rel = f"landing/test/{day}.csv"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
        rels.append(rel)
    return rels


def build_datasets(work: Path, seed: int = 7) -> tuple[Path, Path, list[str]]:
    """Under ``work``: raw bars and landed files under ``root/``, ``feeds.yaml`` and the
    lakehouse ``warehouse.duckdb`` (catalog; data in ``warehouse.duckdb.files/``) built up to
    the dataset marts. Returns (root, warehouse, landed file paths)."""
    root, warehouse = work / "root", work / "warehouse.duckdb"
    bars = regime_bars(seed)
    write_raw_bars(root, bars)
    landed = landed_files(root, bars)
    (work / "feeds.yaml").write_text(FEEDS_YAML)
    dbt.run(
        work, warehouse, root, "build", "--select", "+ds_sft +ds_dpo +ds_prm",
        "--exclude", "marts stg_feedback", "--exclude-resource-type", "test",
    )  # fmt: skip
    return root, warehouse, landed
