"""Learning curve of the CPU recipe (SFT in head mode): decision log-likelihood and accuracy on
the test split against the number of training prompts, with the CPU seconds they cost.

    python -m benchmarks.learning_curve --datasets var/datasets --out /tmp/lc

1. The recipe's SFT config (``training/configs/sft.yaml``: the bottom 8 layers of
   SmolLM2-135M-Instruct, frozen) runs the backbone once over ``--max-per-action`` training
   prompts per action and over the test items (``--test-items``: a seeded sample, default all);
   the process CPU time per prompt is measured.
2. For each size on the curve (``--sizes``, prompts per action) the decision rows are fitted on
   the first prompts of each action (``training.decision_head.fit_sft_head``, the recipe's l2
   and iterations) and scored on the test items exactly as the likelihood scorer does:
   renormalised p(buy / sell / hold) of the first assistant token, per item log p(target) and
   argmax accuracy. Size 0 is the untrained base (the rows as loaded).
3. Per size: mean log p(target) and accuracy, and the paired bootstrap's 95 % interval of the
   difference in log p(target) to the base and to train-majority (the train split's action
   frequencies, add-one smoothed, as the forecast).
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from training import decision_head
from training.config import SFTStageConfig, load_config
from training.decision_line import ACTIONS
from training.models import load_model
from training.promotion import paired_bootstrap
from training.recipe import config_file


def _split(datasets: str, split: str) -> pd.DataFrame:
    files = sorted(glob.glob(str(Path(datasets) / "sft" / f"{split}.parquet")))
    if not files:
        raise FileNotFoundError(f"no {split}.parquet under {datasets}/sft")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _item_logp(weights: torch.Tensor, feats: decision_head.Features, targets) -> np.ndarray:
    with torch.no_grad():
        logp = torch.log_softmax(feats.hidden @ weights.T, dim=-1)
    index = torch.tensor([ACTIONS.index(t) for t in targets])
    return logp.gather(1, index[:, None]).squeeze(1).numpy(), (logp.argmax(-1) == index).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", required=True, help="folder with sft/<split>.parquet")
    parser.add_argument("--out", required=True, help="folder for curve.json")
    parser.add_argument("--sizes", default="25,50,100,200,400", help="prompts per action")
    parser.add_argument("--test-items", type=int, default=None, help="seeded sample; default all")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = sorted({int(s) for s in args.sizes.split(",")})

    cfg: SFTStageConfig = load_config("sft", config_file("sft", "cpu"), [])
    train, test = _split(args.datasets, "train"), _split(args.datasets, "test")
    if args.test_items and len(test) > args.test_items:
        test = test.sample(args.test_items, random_state=0)
    model, tokenizer = load_model(cfg.model, seed=cfg.train.seed)
    decision_head.untie_output_embeddings(model)
    rows = decision_head.action_rows(tokenizer, cfg.data.system_prompt)
    keep = decision_head.sample_per_value(train["action"], max(sizes), cfg.train.seed)
    train = train.iloc[keep].reset_index(drop=True)

    started = time.process_time()
    feats = decision_head.stage_features(model, tokenizer, list(train["prompt"]), rows, cfg)
    cpu_per_prompt = (time.process_time() - started) / len(train)
    test_feats = decision_head.stage_features(model, tokenizer, list(test["prompt"]), rows, cfg)
    targets = list(test["action"])
    start = model.get_output_embeddings().weight[rows].detach().float()
    base_logp, base_hit = _item_logp(start, test_feats, targets)
    counts = _split(args.datasets, "train")["action"].value_counts()
    prior = np.array([counts.get(a, 0) + 1 for a in ACTIONS], dtype=float)
    prior = np.log(prior / prior.sum())
    majority_logp = np.array([prior[ACTIONS.index(t)] for t in targets])
    majority_hit = np.array([t == ACTIONS[int(prior.argmax())] for t in targets])

    def row(size: int, logp: np.ndarray, hit: np.ndarray, cpu_s: float) -> dict:
        vs_base = paired_bootstrap(logp, base_logp) if size else None
        vs_majority = paired_bootstrap(logp, majority_logp)
        return {
            "prompts_per_action": size,
            "train_prompts": int(min(size * len(ACTIONS), len(train))) if size else 0,
            "cpu_seconds": round(cpu_s, 1),
            "logp_target": float(logp.mean()),
            "accuracy": float(hit.mean()),
            "vs_base_ci": [vs_base.ci_low, vs_base.ci_high] if vs_base else None,
            "vs_majority_ci": [vs_majority.ci_low, vs_majority.ci_high],
        }

    curve = [row(0, base_logp, base_hit, 0.0)]
    for size in sizes:
        subset = decision_head.sample_per_value(train["action"], size, cfg.train.seed)
        fit_started = time.process_time()
        part = decision_head.Features(feats.hidden[subset], feats.background[subset])
        weights, _ = decision_head.fit_sft_head(
            start,
            part,
            list(train["action"].iloc[subset]),
            steps=cfg.head.max_iter,
            l2=cfg.head.l2,
            balance=cfg.balance_actions,
        )
        fit_cpu = time.process_time() - fit_started
        logp, hit = _item_logp(weights, test_feats, targets)
        curve.append(row(size, logp, hit, cpu_per_prompt * len(subset) + fit_cpu))

    print(
        f"test items: {len(test)}; train-majority: log p(target) {majority_logp.mean():.3f}, "
        f"accuracy {majority_hit.mean():.3f}; backbone forward {cpu_per_prompt:.2f} CPU-s/prompt"
    )
    print(
        "per action | prompts | CPU s | log p(target) | accuracy | vs base (95% CI) | vs majority"
    )
    for r in curve:
        base = "" if r["vs_base_ci"] is None else "[{:+.3f}, {:+.3f}]".format(*r["vs_base_ci"])
        print(
            f"{r['prompts_per_action']:>10} | {r['train_prompts']:>7} | {r['cpu_seconds']:>5} | "
            f"{r['logp_target']:>13.3f} | {r['accuracy']:>8.3f} | {base:>16} | "
            "[{:+.3f}, {:+.3f}]".format(*r["vs_majority_ci"])
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(curve, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
