"""Command line: ``python -m training {sft,dpo,prm} --config FILE [key=value ...]``.

    python -m training recipe --datasets var/datasets --out var/training/recipe   # SFT->DPO->PRM

    python -m training sft --config training/configs/sft_cpu_small.yaml train.max_steps=5
    python -m training fields sft          # every config field with its default and help
    accelerate launch --config_file training/configs/accelerate_multi_gpu.yaml \\
        -m training sft --config training/configs/sft_gpu.yaml
    deepspeed --num_gpus 8 --module training sft --config training/configs/sft_gpu.yaml \\
        train.deepspeed=ds_zero3.json

Launchers set RANK/LOCAL_RANK/WORLD_SIZE (the deepspeed launcher also appends --local_rank=N,
accepted and ignored here: the Trainer reads the environment). Only the main process prints the
result. ``--lineage FILE`` passes a JSON lineage dict; ``--result-json FILE`` writes the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from training.config import STAGES, load_config


def _fields(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) of every field, sections expanded."""
    rows = []
    hints = typing.get_type_hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(_fields_of(value, f"{prefix}{f.name}."))
        else:
            rows.append((prefix + f.name, json.dumps(value), f.metadata.get("help", "")))
    return rows


def _fields_of(instance: object, prefix: str) -> list[tuple[str, str, str]]:
    return [
        (prefix + f.name, json.dumps(getattr(instance, f.name)), f.metadata.get("help", ""))
        for f in dataclasses.fields(instance)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        run = sub.add_parser(stage, help=f"train the {stage.upper()} stage")
        run.add_argument("--config", help="YAML or JSON config file (defaults if omitted)")
        run.add_argument("--lineage", help="JSON file with the lineage dict to record")
        run.add_argument("--result-json", help="write the full result here (main process)")
        run.add_argument(
            "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
        )
        run.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    recipe = sub.add_parser("recipe", help="SFT -> DPO -> PRM with the shipped recipe configs")
    recipe.add_argument(
        "--datasets", required=True, help="folder with sft/, dpo/, prm/ *.parquet exports"
    )
    recipe.add_argument("--out", required=True, help="run folder; checkpoints in <out>/<stage>")
    recipe.add_argument(
        "--profile", choices=["cpu", "gpu"], default="cpu", help="<stage>.yaml or <stage>_gpu.yaml"
    )
    recipe.add_argument(
        "--stages", default="sft,dpo,prm", help="comma-separated subset, in recipe order"
    )
    recipe.add_argument("--lineage", help="JSON file with the lineage dict to record")
    recipe.add_argument("--result-json", help="write every stage's result here")
    recipe.add_argument(
        "overrides", nargs="*", help="stage-prefixed overrides: sft.train.max_steps=5"
    )
    fields = sub.add_parser("fields", help="list a stage's config fields with help text")
    fields.add_argument("stage", choices=list(STAGES))
    args = parser.parse_args(argv)

    if args.command == "fields":
        for name, default, text in _fields(STAGES[args.stage]):
            print(f"{name} = {default}\n    {text}")
        return 0

    if args.command == "recipe":
        return _recipe(args)

    try:
        cfg = load_config(args.command, args.config, args.overrides).validate()
    except (ValueError, FileNotFoundError) as err:
        # A bad config or a missing file: one clear line, no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    lineage = json.loads(Path(args.lineage).read_text()) if args.lineage else {}

    # Imported here: `fields` and config errors should not pay for torch and trl.
    from training import common

    if args.command == "sft":
        from training.sft import train_sft as train
    elif args.command == "dpo":
        from training.dpo import train_dpo as train
    else:
        from training.prm import train_prm as train
    result = train(cfg, lineage)
    common.close_distributed()

    if common.is_main_process():
        summary = {
            "stage": result.stage,
            "checkpoint_dir": result.checkpoint_dir,
            "metrics": result.metrics,
        }
        print(json.dumps(summary, default=str))
        if args.result_json:
            Path(args.result_json).write_text(
                json.dumps(dataclasses.asdict(result), default=str, indent=2) + "\n"
            )
    return 0


def _recipe(args: argparse.Namespace) -> int:
    from training import recipe

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in recipe.RECIPE_STAGES]
    lineage = json.loads(Path(args.lineage).read_text()) if args.lineage else {}
    try:
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}: expected {recipe.RECIPE_STAGES}")
        recipe.split_overrides(args.overrides)  # a bad override fails before any training
        results = recipe.run_recipe(
            args.datasets,
            args.out,
            profile=args.profile,
            overrides=args.overrides,
            lineage=lineage,
            stages=stages,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {
        stage: {"checkpoint_dir": r.checkpoint_dir, "metrics": r.metrics}
        for stage, r in results.items()
    }
    print(json.dumps(summary, default=str))
    if args.result_json:
        full = {stage: dataclasses.asdict(r) for stage, r in results.items()}
        Path(args.result_json).write_text(json.dumps(full, default=str, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
