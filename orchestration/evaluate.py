"""Evaluate checkpoints on the warehouse's test split and print the baselines table, outside
Dagster (``make train`` runs it after the recipe):

    python -m orchestration.evaluate --decision var/training/recipe/dpo/final \\
        --prm var/training/recipe/prm/final [--sft var/training/recipe/sft/final]

The same evaluation as the ``model_evaluation`` asset (``training.report.evaluate_checkpoints``
on every test decision point of fct_decision_episodes, the dataset exports' test pairs and
traces), read from the storage root and warehouse of the environment. With ``--sft`` the SFT
checkpoint is scored too, and the DPO-over-SFT comparison on the same pairs is printed. Exit
status 1 when the decision model does not beat the untrained base and train-majority with a
bootstrap lower bound above 0.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decision", required=True, help="DPO (or SFT) checkpoint folder")
    parser.add_argument("--prm", help="PRM checkpoint folder")
    parser.add_argument("--sft", help="SFT checkpoint folder, scored on the same items")
    parser.add_argument("--max-pairs", type=int, default=None, help="test pairs (default: all)")
    parser.add_argument("--max-traces", type=int, default=200, help="test traces for the PRM")
    parser.add_argument("--max-format-prompts", type=int, default=16)
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
    }
    report = evaluate_checkpoints(args.decision, args.prm, episodes, pairs, traces, **common)
    print(f"decision model: {args.decision}")
    print(report.markdown())
    if args.sft:
        sft = evaluate_checkpoints(args.sft, None, episodes, pairs, None, **common)
        shown = ("decision_accuracy", "decision_logp_target", "preference_accuracy")
        print("\nSFT vs the decision model on the same items:")
        for key in shown:
            print(f"  {key}: sft {sft.metrics.get(key)}  decision {report.metrics.get(key)}")
    verdict = beats(report.baselines)
    print("\nsignificantly above (log p(target), paired bootstrap lower bound > 0):")
    for name, ok in verdict.items():
        print(f"  {name}: {'yes' if ok else 'NO'}")
    return 0 if verdict and all(verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
