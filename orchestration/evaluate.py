"""Evaluate checkpoints on the warehouse's test split and print the baselines tables, outside
Dagster (``make train`` runs it after the recipe):

    python -m orchestration.evaluate --decision var/training/recipe/dpo/final \\
        --prm var/training/recipe/prm/final [--sft var/training/recipe/sft/final]

The same evaluation as the ``model_evaluation`` asset (``training.report.evaluate_checkpoints``
on every test decision point of fct_decision_episodes, the dataset exports' test pairs and
traces), read from the storage root and warehouse of the environment. The SFT reference (``--sft``,
default: the DPO checkpoint's ``sft_checkpoint``) is scored on the same items and ranks the same
pairs. Exit status 1 unless, each with a bootstrap lower bound above 0:

- the decision model's log p(target) beats the untrained base and train-majority;
- with an SFT reference, the decision model ranks more test pairs right than SFT does;
- with a PRM, its step AUC beats the kind-only baseline (traces resampled).
"""

from __future__ import annotations

import argparse
import sys

from assets.core.resources import resources_from_env
from assets.models.evaluation import read_dataset_split, read_episodes, read_step_info
from training.report import evaluate_checkpoints

# Rows of the baselines table the trained model must beat, significantly, on log p(target).
MUST_BEAT = ("base", "train-majority")


def beats(table, names=MUST_BEAT) -> dict[str, bool]:
    """Per named row ('base': the untrained base model): the model's paired log p(target)
    difference against it has its bootstrap lower bound above 0 (False when the row is
    missing)."""
    rows = {str(r["name"]): r for r in table.to_dict("records")}
    return {name: name in rows and float(rows[name]["delta_ci_low"]) > 0 for name in names}


def verdict(report) -> dict[str, bool]:
    """Every claim the recipe makes, each True only with a bootstrap lower bound above 0."""
    out = {f"decision log p(target) > {name}": ok for name, ok in beats(report.baselines).items()}
    if report.pair_table is not None and "sft" in set(report.pair_table["name"]):
        out["pair ranking > sft"] = beats(report.pair_table, ("sft",))["sft"]
    if report.prm_baselines is not None:
        out["prm step AUC > kind-only"] = beats(report.prm_baselines, ("kind-only",))["kind-only"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decision", required=True, help="DPO (or SFT) checkpoint folder")
    parser.add_argument("--prm", help="PRM checkpoint folder")
    parser.add_argument(
        "--sft", help="the SFT reference (default: the decision checkpoint's sft_checkpoint)"
    )
    parser.add_argument("--max-pairs", type=int, default=None, help="test pairs (default: all)")
    parser.add_argument("--max-traces", type=int, default=200, help="test traces for the PRM")
    parser.add_argument("--max-format-prompts", type=int, default=16)
    parser.add_argument(
        "--feature-cache",
        help="folder of backbone states the head-mode stages saved (make train: "
        "var/training/recipe/feature-cache); default: none",
    )
    args = parser.parse_args(argv)

    resources = resources_from_env()
    storage, warehouse = resources["storage"].get(), resources["warehouse"].lakehouse()
    episodes = read_episodes(warehouse)
    pairs = read_dataset_split(storage, "dpo")
    traces = read_dataset_split(storage, "prm")
    train_traces = read_dataset_split(storage, "prm", "train")
    step_info = None
    if traces is not None and train_traces is not None:
        step_info = read_step_info(warehouse, [*traces["trace_id"], *train_traces["trace_id"]])
    common = {
        "train_traces": train_traces,
        "step_info": step_info,
        "max_format_prompts": args.max_format_prompts,
        "max_pairs": args.max_pairs,
        "max_traces": args.max_traces,
        "feature_cache": args.feature_cache,
    }
    report = evaluate_checkpoints(
        args.decision, args.prm, episodes, pairs, traces, reference_checkpoint=args.sft, **common
    )
    print(f"decision model: {args.decision}")
    print(report.markdown())
    claims = verdict(report)
    print("\nsignificantly above (paired bootstrap lower bound > 0):")
    for name, ok in claims.items():
        print(f"  {name}: {'yes' if ok else 'NO'}")
    return 0 if claims and all(claims.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
