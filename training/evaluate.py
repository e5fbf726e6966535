"""Evaluation that means something for decisions, shared by the trainers and the gates.

    decision_accuracy     generate a completion, read the decision off its last line, compare
                          with the reference decision (buy / sell / hold)
    preference_accuracy   share of pairs where log p(chosen) > log p(rejected) under the model
    step metrics          AUC and F1 of process-reward scores against hard step labels, and how
                          often the lowest-scored step is the known faulty one

Everything runs batched under ``torch.no_grad`` on the model's own device; no Trainer needed, so
a registry or gate can call these on any loaded checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from training.data import messages, prompt_ids, prompt_text

DECISION = re.compile(r"^\s*(buy|sell|hold)\b", re.IGNORECASE)


def parse_decision(completion: str) -> str | None:
    """The action of the last line that states one ('buy 0.5000 of capital' -> 'buy')."""
    for line in reversed(completion.strip().splitlines()):
        match = DECISION.match(line)
        if match:
            return match.group(1).lower()
    return None


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def autocast_for(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that has it (as in training), nothing on CPU."""
    device = next(model.parameters()).device
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 8,
) -> list[str]:
    """Greedy completions of chat-formatted prompts (batched, left-padded)."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of each row
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for chunk in _batches(list(prompts), batch_size):
            texts = [prompt_text(tokenizer, p, system) for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(device)
            with autocast_for(model):
                ids = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def decision_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    references: Sequence[str],
    **generate_kwargs: Any,
) -> dict[str, float]:
    """accuracy: generated decision equals the reference's; parse_rate: a decision was found."""
    if not prompts:
        return {"decision_accuracy": float("nan"), "decision_parse_rate": float("nan")}
    generated = generate(model, tokenizer, prompts, **generate_kwargs)
    wanted = [parse_decision(r) for r in references]
    got = [parse_decision(g) for g in generated]
    hits = sum(g is not None and g == w for g, w in zip(got, wanted, strict=True))
    return {
        "decision_accuracy": hits / len(prompts),
        "decision_parse_rate": sum(g is not None for g in got) / len(prompts),
    }


@torch.no_grad()
def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    system: str | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Sum of log p(completion token | prefix) over the completion's tokens, chat-formatted.

    The completion tokens are those after the templated prompt, up to and including the
    template's end-of-turn, which is what DPO scores too.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        head = prompt_ids(tokenizer, prompt, system)
        text = tokenizer.apply_chat_template(messages(prompt, completion, system), tokenize=False)
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        start = _common_prefix(head, full)
        rows.append((full, start))
    out: list[float] = []
    try:
        for chunk in _batches(rows, batch_size):
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (row, _) in enumerate(chunk):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            ids, mask = ids.to(device), mask.to(device)
            with autocast_for(model):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            token_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            for i, (row, start) in enumerate(chunk):
                # Position t predicts token t+1: completion tokens start..len-1.
                out.append(token_logp[i, start - 1 : len(row) - 1].sum().item())
    finally:
        model.train(was_training)
    return out


def preference_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    **kwargs: Any,
) -> dict[str, float]:
    """Share of pairs the model prefers as labelled, and the mean log-prob gap."""
    if not prompts:
        return {"preference_accuracy": float("nan"), "logp_margin": float("nan")}
    good = completion_logprobs(model, tokenizer, prompts, chosen, **kwargs)
    bad = completion_logprobs(model, tokenizer, prompts, rejected, **kwargs)
    gaps = [g - b for g, b in zip(good, bad, strict=True)]
    return {
        "preference_accuracy": sum(g > 0 for g in gaps) / len(gaps),
        "logp_margin": sum(gaps) / len(gaps),
    }


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return max(n, 1)


# ----------------------------------------------------------------------- step-level metrics


def binary_auc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """ROC AUC: probability that a random positive scores above a random negative (ties 1/2)."""
    pairs = sorted(zip(scores, positives, strict=True))
    n_pos = sum(1 for _, p in pairs if p)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U from average ranks, which handles ties.
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        average_rank = (i + 1 + j) / 2
        rank_sum += average_rank * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_f1(predicted: Sequence[bool], actual: Sequence[bool]) -> float:
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    fp = sum(p and not a for p, a in zip(predicted, actual, strict=True))
    fn = sum(a and not p for p, a in zip(predicted, actual, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def step_metrics(
    scores: Sequence[Sequence[float]],
    labels: Sequence[Sequence[bool]],
    faulty_steps: Sequence[int | None],
    threshold: float = 0.5,
) -> dict[str, float]:
    """Step-level metrics of PRM scores (probability that a step is correct).

    step_auc                 correct steps ranked above faulty ones
    step_f1                  F1 of "faulty" (the class a PRM exists to find): score < threshold
    step_accuracy            share of steps on the right side of the threshold
    faulty_step_found_rate   perturbed traces whose lowest-scored step is the faulty one
                             (faulty_steps here are 0-based; None for unperturbed traces)
    """
    flat_scores = [s for trace in scores for s in trace]
    flat_labels = [
        bool(v) for trace, lab in zip(scores, labels, strict=True) for v in lab[: len(trace)]
    ]
    predicted_faulty = [s < threshold for s in flat_scores]
    actual_faulty = [not v for v in flat_labels]
    found = [
        min(range(len(trace)), key=trace.__getitem__) == faulty
        for trace, faulty in zip(scores, faulty_steps, strict=True)
        if faulty is not None and 0 <= faulty < len(trace)
    ]
    n_steps = len(flat_scores)
    return {
        "step_auc": binary_auc(flat_scores, flat_labels),
        "step_f1": binary_f1(predicted_faulty, actual_faulty),
        "step_accuracy": (
            sum(p == a for p, a in zip(predicted_faulty, actual_faulty, strict=True)) / n_steps
            if n_steps
            else math.nan
        ),
        "faulty_step_found_rate": sum(found) / len(found) if found else math.nan,
        "n_perturbed_traces": float(len(found)),
        "n_steps": float(n_steps),
    }
