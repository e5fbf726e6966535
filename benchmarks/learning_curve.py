"""Learning curve of the CPU recipe: decision log-likelihood and accuracy against SFT steps,
with the CPU minutes they cost.

Run ``python -m benchmarks.learning_curve --datasets /work/data/datasets --out /tmp/lc``
(``--test-items N`` scores a seeded sample of the test split instead of all of it; trailing
``key=value`` items override the SFT recipe config, e.g. ``train.max_steps=60``).

1. SFT with ``training/configs/sft.yaml`` on ``<datasets>/sft/*.parquet``, saving the adapters
   every ``--every`` steps; the process CPU time at each save is recorded (a callback), so the
   curve's x axis is steps and CPU minutes.
2. Each saved step, the untrained base (step 0) and the final merged checkpoint are scored on
   the same test items by likelihood: one forward pass per prompt (chat template, no system
   turn), the log-probabilities of ``buy`` / ``sell`` / ``hold`` as the first assistant token,
   renormalised over the three. Per item: log p(target) and whether the argmax is the target
   (``ds_sft.action``, the first word of the decision-first completion).
3. The table: per step, mean log p(target) and accuracy, each with its paired-bootstrap 95 %
   interval of the difference to the base model and to train-majority (the train split's
   action frequencies as the predictor; accuracy: always the most frequent action).

This minimal scorer is the benchmark's own measuring stick; the project's evaluation scores
checkpoints the same way on the whole test split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ACTIONS = ("buy", "sell", "hold")
REPO = Path(__file__).resolve().parents[1]


def action_log_probs(model: Any, tokenizer: Any, prompts: list[str], batch_size: int = 8):
    """(n, 3) log p(buy / sell / hold as the first assistant token), renormalised."""
    import torch

    from training.data import prompt_ids

    first = [tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in ACTIONS]
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            encoded = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
            width = max(map(len, encoded))
            ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(encoded):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = logits[torch.arange(len(encoded)), mask.sum(1) - 1].float()
            picked = torch.log_softmax(last, -1)[:, first]
            out.append(torch.log_softmax(picked, -1).numpy())
    return np.concatenate(out)


def paired_interval(diff: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n_boot)]
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def majority_scores(train_actions: pd.Series, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    share = train_actions.value_counts(normalize=True)
    log_p = np.log(np.array([share.get(a, 1e-9) for a in targets]))
    return log_p, (targets == share.idxmax()).astype(float)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--every", type=int, default=30, help="save and score every N steps")
    parser.add_argument("--test-items", type=int, default=None, help="sample; default all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the table here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import torch
    from peft import PeftModel
    from transformers import TrainerCallback

    from training import checkpoint, models
    from training.config import SFTStageConfig
    from training.recipe import stage_config
    from training.sft import train_sft

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = stage_config(
        "sft",
        args.datasets,
        out,
        overrides=[f"train.save_steps={args.every}", *args.overrides],
    )
    cpu_at_step: dict[int, float] = {}
    start_cpu = time.process_time()

    class CpuClock(TrainerCallback):
        def on_save(self, _args, state, control, **kwargs):
            cpu_at_step[state.global_step] = (time.process_time() - start_cpu) / 60

    if args.from_run:
        run = Path(args.from_run)
        final_dir, output_dir = run / "final", run
        config, lineage = checkpoint.read_metadata(final_dir)
        cfg = SFTStageConfig.from_dict({k: v for k, v in config.items() if k != "resolved"})
        metrics = lineage["metrics"]
        total = int(metrics["train_global_steps"])
        for folder in run.glob("checkpoint-*"):
            step = int(folder.name.split("-")[1])
            cpu_at_step[step] = metrics["train_cpu_seconds"] / 60 * step / total
    else:
        result = train_sft(cfg, callbacks=[CpuClock()])
        metrics, total = result.metrics, int(result.metrics["train_global_steps"])
        final_dir, output_dir = Path(result.checkpoint_dir), Path(cfg.train.output_dir)
    cpu_at_step[total] = metrics["train_cpu_seconds"] / 60

    sft_dir = Path(args.datasets) / "sft"
    test = pd.read_parquet(sft_dir / "test.parquet")
    if args.test_items and args.test_items < len(test):
        test = test.sample(n=args.test_items, random_state=0).sort_index()
    train_actions = pd.read_parquet(sft_dir / "train.parquet", columns=["action"])["action"]
    targets = test["action"].to_numpy()
    target_index = np.array([ACTIONS.index(a) for a in targets])
    prompts = list(test["prompt"])

    def scored(log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        picked = log_probs[np.arange(len(targets)), target_index]
        return picked, (log_probs.argmax(1) == target_index).astype(float)

    base, tokenizer = models.load_model(cfg.model, dtype=models.base_dtype(cfg.lora))
    rows = []
    base_lp, base_acc = scored(action_log_probs(base, tokenizer, prompts))
    maj_lp, maj_acc = majority_scores(train_actions, targets)
    points = [(0, None)]
    points += sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*"))
    if total not in {s for s, _ in points}:
        points.append((total, final_dir))
    for step, folder in points:
        if folder is None:
            lp, acc = base_lp, base_acc
        elif (folder / "adapter_config.json").is_file():
            model = PeftModel.from_pretrained(base, folder)
            lp, acc = scored(action_log_probs(model, tokenizer, prompts))
            base = model.unload()  # the adapters off again, the base model intact
        else:
            model, _, _ = checkpoint.load_checkpoint(folder)
            lp, acc = scored(action_log_probs(model, tokenizer, prompts))
        row = {
            "step": step,
            "cpu_min": cpu_at_step.get(step, 0.0),
            "logp": float(lp.mean()),
            "acc": float(acc.mean()),
            "logp_vs_base": paired_interval(lp - base_lp),
            "acc_vs_base": paired_interval(acc - base_acc),
            "logp_vs_majority": paired_interval(lp - maj_lp),
            "acc_vs_majority": paired_interval(acc - maj_acc),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(
        f"\n{len(targets)} test items; train-majority log p {maj_lp.mean():.3f}, acc "
        f"{maj_acc.mean():.3f}; base log p {base_lp.mean():.3f}, acc {base_acc.mean():.3f}"
    )
    print(
        "| step | CPU min | log p(target) | accuracy | Δ log p vs base, 95 % CI "
        "| Δ acc vs majority, 95 % CI |"
    )
    print("|---:|---:|---:|---:|---|---|")
    for r in rows:
        lo, hi = r["logp_vs_base"]
        alo, ahi = r["acc_vs_majority"]
        print(
            f"| {r['step']} | {r['cpu_min']:.1f} | {r['logp']:.3f} | {r['acc']:.3f} "
            f"| [{lo:+.3f}, {hi:+.3f}] | [{alo:+.3f}, {ahi:+.3f}] |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
