"""Head-only training of the decision: the backbone is frozen, only the LM-head rows of the
first tokens of ``buy`` / ``sell`` / ``hold`` learn.

Why: on 2 CPU cores a backward pass through SmolLM2 over a 430-token prompt costs seconds per
example, so an SFT run that fits in minutes sees a few hundred examples and does not get past
the class prior (benchmarks/README.md, the learning curve). The prompt's evidence is readable
from the backbone's hidden state at the decision position (a linear probe on it separates the
actions), so the CPU recipe runs the backbone **once** over the training prompts and fits the
output rows of the action tokens on those hidden states, many epochs in seconds.

It is the same objective as SFT on the decision token, restricted to those rows: the full
vocabulary softmax at the first assistant position (the other rows fixed, so their log-sum-exp
is computed once per prompt), cross-entropy against the decision taken. DPO in head mode is the
sigmoid DPO loss on the same rows against the frozen SFT rows as reference: everything else in
the model is shared by policy and reference, so the rest of the completion cancels out of the
implicit reward.

The result is an ordinary causal LM folder (input and output embeddings untied, so changing the
output rows of ``buy`` leaves the word's input embedding in the prompt as it was); the
likelihood scorer, generation and every later stage load it like any other checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training import data, scoring
from training.decision_line import ACTIONS, parse_decision_line


@dataclass
class Features:
    """Per prompt: the final hidden state at the decision position and the log-sum-exp of the
    logits of every token that is not an action's first token."""

    hidden: torch.Tensor  # (n, d), float32
    background: torch.Tensor  # (n,)


def action_rows(tokenizer, system: str | None = None) -> list[int]:
    """The vocabulary ids of the first token of each action (``ACTIONS`` order); they must
    differ, or the head could not tell the actions apart."""
    tokens = scoring.action_token_ids(tokenizer, system)
    rows = [tokens[a][0] for a in ACTIONS]
    if len(set(rows)) != len(rows):
        raise ValueError(f"the actions share a first token ({rows}): head mode needs distinct ones")
    return rows


def untie_output_embeddings(model) -> None:
    """Give the LM head weights of its own (a copy of the tied input embeddings)."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively on ``device`` (a GPU with bf16; a CPU with
    AVX512-BF16 or AMX, as oneDNN reports): elsewhere they are emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def in_dtype(model, forward_dtype: str):
    """``model`` itself when its weights are in ``forward_dtype``, else a converted copy (the
    frozen backbone's forward runs in it; the model being trained stays as it is). 'auto':
    bfloat16 where the model's device has it natively, else float32."""
    if forward_dtype == "auto":
        device = next(model.parameters()).device
        forward_dtype = "bfloat16" if native_bf16(device) else "float32"
    dtype = getattr(torch, forward_dtype)
    if next(model.parameters()).dtype != dtype:
        return copy.deepcopy(model).to(dtype)
    return model


@torch.no_grad()
def decision_features(
    model,
    tokenizer,
    prompts: Sequence[str],
    rows: Sequence[int],
    *,
    system: str | None = None,
    batch_size: int = 16,
    forward_dtype: str = "float32",
    cache: scoring.BackboneStates | None = None,
) -> Features:
    """Run the backbone once over the prompts (left-padded batches, as the scorer does), in
    ``forward_dtype`` (a converted copy of the model when it differs), reading and filling
    ``cache`` (the scorer's states, so the evaluation reuses them); the LM head's log-sum-exp
    is taken in float32."""
    head = model.get_output_embeddings().weight.detach().float()
    model = in_dtype(model, forward_dtype)
    was_training = model.training
    model.eval()
    others = torch.ones(head.shape[0], dtype=torch.bool, device=head.device)
    others[list(rows)] = False
    hidden, background = [], []
    ids_of = [data.prompt_ids(tokenizer, p, system) for p in prompts]
    try:
        for start in range(0, len(ids_of), batch_size):
            chunk = ids_of[start : start + batch_size]
            states = scoring.final_states(model, chunk, 1, tokenizer.pad_token_id, cache)
            last = states[:, -1].float().to(head.device)  # after the final norm
            logits = last @ head.T
            hidden.append(last.cpu())
            background.append(torch.logsumexp(logits[:, others], dim=-1).cpu())
    finally:
        model.train(was_training)
    return Features(torch.cat(hidden), torch.cat(background))


def _logp(weights: torch.Tensor, feats: Features) -> torch.Tensor:
    """log p(action's first token) over the full vocabulary: (n, 3)."""
    logits = feats.hidden @ weights.T
    total = torch.logaddexp(torch.logsumexp(logits, dim=-1), feats.background)
    return logits - total[:, None]


def _class_weights(labels: np.ndarray, balance: bool) -> torch.Tensor:
    """Per-row weights summing to one; balanced: every action present weighs the same."""
    if not balance:
        return torch.full((len(labels),), 1.0 / len(labels))
    present = np.unique(labels)
    counts = {a: (labels == a).sum() for a in present}
    w = np.array([1.0 / (counts[a] * len(present)) for a in labels])
    return torch.tensor(w, dtype=torch.float32)


def lbfgs_fit(
    loss_fn, start: torch.Tensor, scale: torch.Tensor, steps: int, l2: float, log_every: int
):
    """Full-batch L-BFGS on the action rows, with an L2 pull back to where the rows started.

    Solved in per-dimension scaled coordinates (weights * scale, scale = the hidden states'
    standard deviation per dimension, no centring so no bias is needed): the raw hidden states
    are badly conditioned and L-BFGS stops early on them."""
    start_scaled = start * scale
    scaled = start_scaled.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [scaled], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )
    history: list[dict] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(scaled / scale)
        total = loss + l2 * (scaled - start_scaled).pow(2).sum()
        total.backward()
        evaluations = len(history) + 1
        if evaluations % log_every == 0 or evaluations == 1:
            history.append({"step": evaluations, "loss": float(loss.detach())})
        else:
            history.append({"step": evaluations})
        return total

    optimizer.step(closure)
    weights = (scaled / scale).detach()
    logged = [h for h in history if "loss" in h]
    logged.append({"step": len(history), "loss": float(loss_fn(weights))})
    return weights, logged


def fit_sft_head(
    start: torch.Tensor,
    feats: Features,
    actions: Sequence[str],
    *,
    steps: int,
    l2: float,
    balance: bool,
    log_every: int = 50,
) -> tuple[torch.Tensor, list[dict]]:
    """Rows that minimise the weighted cross-entropy of the decisions taken."""
    labels = np.asarray(actions)
    index = torch.tensor([ACTIONS.index(a) for a in labels])
    weight = _class_weights(labels, balance)

    def loss(weights: torch.Tensor) -> torch.Tensor:
        picked = _logp(weights, feats).gather(1, index[:, None]).squeeze(1)
        return -(weight * picked).sum()

    return lbfgs_fit(loss, start, feats.hidden.std(0) + 1e-6, steps, l2, log_every)


def fit_dpo_head(
    start: torch.Tensor,
    feats: Features,
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    beta: float,
    steps: int,
    l2: float,
    log_every: int = 50,
) -> tuple[torch.Tensor, list[dict]]:
    """Rows that minimise the sigmoid DPO loss of the pairs' decisions, the starting rows being
    the reference."""
    win = torch.tensor([ACTIONS.index(a) for a in chosen])[:, None]
    lose = torch.tensor([ACTIONS.index(a) for a in rejected])[:, None]
    with torch.no_grad():
        ref = _logp(start, feats)
        ref_margin = (ref.gather(1, win) - ref.gather(1, lose)).squeeze(1)

    def loss(weights: torch.Tensor) -> torch.Tensor:
        logp = _logp(weights, feats)
        margin = (logp.gather(1, win) - logp.gather(1, lose)).squeeze(1)
        return -torch.nn.functional.logsigmoid(beta * (margin - ref_margin)).mean()

    return lbfgs_fit(loss, start, feats.hidden.std(0) + 1e-6, steps, l2, log_every)


def choice_metrics(weights: torch.Tensor, feats: Features, actions: Sequence[str]) -> dict:
    """Accuracy and mean log p(target) renormalised over the three actions, as the scorer."""
    with torch.no_grad():
        logp = torch.log_softmax(feats.hidden @ weights.T, dim=-1)
    index = torch.tensor([ACTIONS.index(a) for a in actions])
    return {
        "accuracy": float((logp.argmax(-1) == index).float().mean()),
        "logp_target": float(logp.gather(1, index[:, None]).mean()),
    }


def set_rows(model, rows: Sequence[int], weights: torch.Tensor) -> None:
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[list(rows)] = weights.to(head.dtype)


# ------------------------------------------------------------------------------ the stages


def sample_per_value(
    values: Sequence[str], limit: int | None, seed: int, keys: Sequence[str] | None = None
) -> np.ndarray:
    """Row indexes: at most ``limit`` rows per distinct value, in their original order. With
    ``keys`` (the prompts) the sample is coordinated: the rows whose key hashes lowest with the
    seed, so two datasets over the same decision points (ds_sft, ds_dpo) pick the same points
    and share their backbone states; without, a seeded random choice."""
    values = np.asarray(values, dtype=object)
    if limit is None:
        return np.arange(len(values))
    rng = np.random.default_rng(seed)
    rank = (
        np.array([_key_rank(seed, key) for key in keys], dtype=object) if keys is not None else None
    )
    keep = []
    for value in sorted(set(values)):
        rows = np.flatnonzero(values == value)
        if rank is None:
            keep.append(rng.choice(rows, min(limit, len(rows)), replace=False))
        else:
            keep.append(rows[np.argsort(rank[rows], kind="stable")[:limit]])
    return np.sort(np.concatenate(keep))


def _key_rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def decisions_of(rows) -> list[str]:
    """The decision of each row: its 'action' column, else the completion's decision line."""
    if "action" in rows.column_names:
        unknown = sorted({str(a) for a in rows["action"]} - set(ACTIONS))
        if unknown:
            raise ValueError(f"the 'action' column holds {unknown}: expected {ACTIONS}")
        return list(rows["action"])
    out = []
    for completion in rows["completion"]:
        parsed = parse_decision_line(completion.split("\n", 1)[0])
        if parsed is None:
            raise ValueError(f"no decision line opens the completion {completion[:80]!r}")
        out.append(parsed[0])
    return out


def stage_features(model, tokenizer, prompts: Sequence[str], rows: Sequence[int], cfg) -> Features:
    """decision_features with the stage config's system prompt, batch size, dtype and feature
    cache (new states saved to it)."""
    cache = scoring.BackboneStates(cfg.head.feature_cache)
    try:
        return decision_features(
            model,
            tokenizer,
            prompts,
            rows,
            system=cfg.data.system_prompt,
            batch_size=cfg.head.batch_size,
            forward_dtype=cfg.head.forward_dtype,
            cache=cache,
        )
    finally:
        cache.save()
        if cache.hits:
            print(f"backbone states: {cache.hits} from the feature cache, {cache.misses} computed")


def picked(rows, column: str, index) -> list:
    """``rows[column]`` at ``index``, reading the column once (a datasets.Dataset builds the
    whole column on every ``rows[column]``)."""
    values = rows[column]
    return [values[i] for i in index]


def _head_model(cfg, tokenizer_model_cfg):
    from training import models

    model, tokenizer = models.load_model(tokenizer_model_cfg, task="causal", seed=cfg.train.seed)
    untie_output_embeddings(model)
    return model.to(cfg.resolved_device()), tokenizer


def train_sft_head(cfg, run) -> tuple[object, object, dict, list[dict]]:
    """SFT in head mode: (model, tokenizer, metrics, log history). The rows are fitted to the
    decisions of the training split (cross-entropy, weighted so that every action counts the
    same when ``balance_actions``)."""
    model, tokenizer = _head_model(cfg, cfg.model)
    system = cfg.data.system_prompt
    rows = action_rows(tokenizer, system)
    train = run.train_rows
    taken = decisions_of(train)
    keep = sample_per_value(
        taken, cfg.head.samples_per_action, cfg.train.seed, keys=train["prompt"]
    )
    prompts = picked(train, "prompt", keep)
    actions = [taken[i] for i in keep]
    feats = stage_features(model, tokenizer, prompts, rows, cfg)
    start = model.get_output_embeddings().weight[rows].detach().float().cpu()
    weights, history = fit_sft_head(
        start,
        feats,
        actions,
        steps=cfg.head.max_iter,
        l2=cfg.head.l2,
        balance=cfg.balance_actions,
    )
    set_rows(model, rows, weights)
    metrics = {
        "train_rows": float(len(prompts)),
        "train_loss": history[-1]["loss"],
        **{f"train_{k}": v for k, v in choice_metrics(weights, feats, actions).items()},
        **{f"train_start_{k}": v for k, v in choice_metrics(start, feats, actions).items()},
    }
    if run.eval_rows is not None:
        held = run.eval_rows
        keep = np.arange(min(len(held), cfg.head.eval_samples or len(held)))
        decided = decisions_of(held)
        targets = [decided[i] for i in keep]
        eval_feats = stage_features(model, tokenizer, picked(held, "prompt", keep), rows, cfg)
        metrics.update(
            {f"eval_{k}": v for k, v in choice_metrics(weights, eval_feats, targets).items()}
        )
        metrics.update(
            {f"eval_start_{k}": v for k, v in choice_metrics(start, eval_feats, targets).items()}
        )
    return model, tokenizer, metrics, history


def _pairs(rows, limit: int | None, seed: int):
    keep = sample_per_value(rows["chosen_action"], limit, seed, keys=rows["prompt"])
    return (
        picked(rows, "prompt", keep),
        picked(rows, "chosen_action", keep),
        picked(rows, "rejected_action", keep),
    )


def preference_metrics(weights, ref_weights, feats: Features, chosen, rejected, beta) -> dict:
    """Share of pairs whose implicit reward (beta * log-ratio against the reference) of the
    chosen decision exceeds the rejected one's, and the plain log-probability comparison."""
    with torch.no_grad():
        logp, ref = _logp(weights, feats), _logp(ref_weights, feats)
    win = torch.tensor([ACTIONS.index(a) for a in chosen])[:, None]
    lose = torch.tensor([ACTIONS.index(a) for a in rejected])[:, None]
    reward = beta * (
        (logp.gather(1, win) - ref.gather(1, win)) - (logp.gather(1, lose) - ref.gather(1, lose))
    )
    plain = logp.gather(1, win) - logp.gather(1, lose)
    return {
        "reward_accuracy": float((reward > 0).float().mean()),
        "logp_preference_accuracy": float((plain > 0).float().mean()),
    }


def train_dpo_head(cfg, run) -> tuple[object, object, dict, list[dict]]:
    """DPO in head mode from the SFT checkpoint: (model, tokenizer, metrics, log history).
    Pairs need ``chosen_action`` / ``rejected_action`` columns (ds_dpo has them)."""
    model, tokenizer = _head_model(cfg, cfg.start_model_config())
    system = cfg.data.system_prompt
    rows = action_rows(tokenizer, system)
    train = run.train_rows
    if cfg.min_margin:
        train = train.filter(lambda r: r["margin"] is not None and r["margin"] >= cfg.min_margin)
    prompts, chosen, rejected = _pairs(train, cfg.head.samples_per_action, cfg.train.seed)
    if not prompts:
        raise ValueError(f"no DPO pairs left after min_margin={cfg.min_margin}")
    feats = stage_features(model, tokenizer, prompts, rows, cfg)
    start = model.get_output_embeddings().weight[rows].detach().float().cpu()
    weights, history = fit_dpo_head(
        start, feats, chosen, rejected, beta=cfg.beta, steps=cfg.head.max_iter, l2=cfg.head.l2
    )
    set_rows(model, rows, weights)
    metrics = {
        "train_rows": float(len(prompts)),
        "train_loss": history[-1]["loss"],
        **{
            f"train_{k}": v
            for k, v in preference_metrics(
                weights, start, feats, chosen, rejected, cfg.beta
            ).items()
        },
    }
    if run.eval_rows is not None:
        held = run.eval_rows
        n = min(len(held), cfg.head.eval_samples or len(held))
        p, c, r = (
            picked(held, name, range(n)) for name in ("prompt", "chosen_action", "rejected_action")
        )
        eval_feats = stage_features(model, tokenizer, p, rows, cfg)
        metrics.update(
            {
                f"eval_{k}": v
                for k, v in preference_metrics(weights, start, eval_feats, c, r, cfg.beta).items()
            }
        )
        metrics.update(
            {
                f"eval_start_{k}": v
                for k, v in preference_metrics(start, start, eval_feats, c, r, cfg.beta).items()
            }
        )
    return model, tokenizer, metrics, history
