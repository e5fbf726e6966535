"""Head-only training of the process reward model: the backbone is frozen, only the score head
(a linear map of the hidden state at each step separator) learns.

Why: the same as the decision head (``training.decision_head``). On 2 CPU cores a LoRA run over
600-token traces sees a few dozen traces in minutes and stayed at chance (step AUC 0.51 on the
demo's data). The hidden state at the separator after step k has read the prompt and steps
1..k (the backbone is causal), so a linear score on it can check the step against the prompt
it sits in; the backbone runs **once** over the training traces and the head is fitted by
L-BFGS on the collected states, many epochs in seconds.

The result is the ordinary token-classification folder the trainer method saves (backbone and
``score`` layer), with the separator and label mode in its config: ``training.prm.score_traces``
and every later stage load it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from training import data, decision_head, models, scoring
from training.config import PRMStageConfig
from training.metrics import step_metrics


@torch.no_grad()
def separator_states(
    model,
    tokenizer,
    prompts: Sequence[str],
    traces: Sequence[Sequence[str]],
    *,
    separator: str,
    system: str | None,
    max_length: int | None,
    batch_size: int = 8,
    forward_dtype: str = "float32",
) -> tuple[torch.Tensor, list[int]]:
    """The backbone's final hidden states (after its norm, float32) at every step separator of
    every trace, stacked: ((steps, d), steps kept per trace). Built by ``data.prm_input`` as
    training and scoring build them, so a step cut off by ``max_length`` has no state."""
    model = decision_head.in_dtype(model, forward_dtype)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sep_id = data.separator_id(tokenizer, separator)
    encoded = [
        data.prm_input(tokenizer, p, list(steps), sep_id, system, max_length)
        for p, steps in zip(prompts, traces, strict=True)
    ]
    states, counts = [], []
    backbone = model.base_model
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            # Right padding: the backbone is causal, so padding after a trace changes nothing
            # before it.
            ids, mask = scoring.padded([row for row, _ in chunk], tokenizer.pad_token_id)
            hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device))
            last = hidden.last_hidden_state.float().cpu()
            for i, (_, positions) in enumerate(chunk):
                states.append(last[i, positions])
                counts.append(len(positions))
    finally:
        model.train(was_training)
    return torch.cat(states), counts


def fit_score_head(
    states: torch.Tensor,
    labels: torch.Tensor,
    label_mode: str,
    *,
    steps: int,
    l2: float,
    balance: bool = True,
    log_every: int = 50,
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(weight, bias, log history) of the score layer: logistic regression of the step labels on
    the states. Hard mode fits one logit difference and spreads it over the two classes (the
    softmax depends on the difference only); soft mode one logit against probabilities.
    ``balance``: correct and faulty steps weigh the same in total (faulty steps are rare)."""
    # Centred (the states sit far from the origin; the pull to zero would fight the bias), with
    # a constant column for the bias; the centre is folded back into the bias at the end.
    centre = states.mean(0)
    x = torch.cat([states - centre, torch.ones(len(states), 1)], dim=1)
    target = labels.float()
    if balance:
        hard = (target >= 0.5).float()
        share = hard.mean().clamp(1e-6, 1 - 1e-6)
        weight = torch.where(hard > 0, 0.5 / share, 0.5 / (1 - share)) / len(target)
    else:
        weight = torch.full_like(target, 1.0 / len(target))

    def loss(w: torch.Tensor) -> torch.Tensor:
        logit = x @ w[0]
        return (weight * F.binary_cross_entropy_with_logits(logit, target, reduction="none")).sum()

    scale = x.std(0) + 1e-6
    scale[-1] = 1.0
    fitted, history = decision_head.lbfgs_fit(
        loss, torch.zeros(1, x.shape[1]), scale, steps, l2, log_every
    )
    difference = fitted[0, :-1]
    bias = fitted[0, -1] - difference @ centre
    if label_mode == "hard":
        # softmax([-z/2, z/2])[1] = sigmoid(z): class 1 is 'correct'.
        return (
            torch.stack([-difference / 2, difference / 2]),
            torch.stack([-bias / 2, bias / 2]),
            history,
        )
    return difference[None], bias[None], history


def step_scores(weight: torch.Tensor, bias: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """P(step correct) from the score layer, as ``training.prm._probabilities``."""
    logits = states @ weight.T + bias
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=-1)[:, 1]


def _per_trace(values: torch.Tensor, counts: Sequence[int]) -> list[list[float]]:
    out, start = [], 0
    for n in counts:
        out.append(values[start : start + n].tolist())
        start += n
    return out


def _labels(rows, column: str, counts: Sequence[int]) -> torch.Tensor:
    """The labels of the steps that got a state (the first ``count`` of each trace)."""
    values = rows[column]
    kept = [float(v) for trace, n in zip(values, counts, strict=True) for v in list(trace)[:n]]
    return torch.tensor(kept)


def faulty_steps(rows, base: int) -> list[int | None]:
    """The 0-based faulty step of each ds_prm row (None for unperturbed traces, or all None
    without the column); ``base``: the index of the first step in 'faulty_step_index'."""
    if "faulty_step_index" not in rows.column_names:
        return [None] * len(rows)
    return [None if f is None else int(f) - base for f in rows["faulty_step_index"]]


def train_prm_head(cfg: PRMStageConfig, run) -> tuple[object, object, dict, list[dict]]:
    """PRM in head mode: (model, tokenizer, metrics, log history). Traces: at most
    ``head.samples_per_action`` per decision taken (``action`` column, when there is one),
    seeded; the score layer is fitted on every step of those traces."""
    model, tokenizer = models.load_model(
        cfg.model, task="token", num_labels=cfg.head_size(), seed=cfg.train.seed
    )
    model.to(cfg.resolved_device())
    column = "labels" if cfg.label_mode == "hard" else "soft_labels"
    state_args = dict(
        separator=cfg.step_separator,
        system=cfg.data.system_prompt,
        max_length=cfg.train.max_length,
        batch_size=cfg.head.batch_size,
        forward_dtype=cfg.head.forward_dtype,
    )
    train = run.train_rows
    by = train["action"] if "action" in train.column_names else ["all"] * len(train)
    keep = decision_head.sample_per_value(by, cfg.head.samples_per_action, cfg.train.seed)
    train = train.select(keep)
    states, counts = separator_states(
        model, tokenizer, train["prompt"], train["completions"], **state_args
    )
    labels = _labels(train, column, counts)
    weight, bias, history = fit_score_head(
        states, labels, cfg.label_mode, steps=cfg.head.max_iter, l2=cfg.head.l2
    )
    with torch.no_grad():
        model.score.weight.copy_(weight.to(model.score.weight.dtype))
        if model.score.bias is not None:
            model.score.bias.copy_(bias.to(model.score.bias.dtype))
        elif bool(bias.abs().max() > 0):
            raise ValueError("the model's score layer has no bias; head mode fits one")
    train_scores = step_scores(weight, bias, states)
    metrics = {
        "train_rows": float(len(train)),
        "train_steps": float(len(labels)),
        "train_loss": history[-1]["loss"],
        **{
            f"train_{k}": v
            for k, v in step_metrics(
                _per_trace(train_scores, counts),
                train["labels"],  # step_metrics keeps the labels of the scored steps
                faulty_steps(train, cfg.faulty_step_index_base),
                cfg.threshold,
            ).items()
        },
    }
    if run.eval_rows is not None:
        held = run.eval_rows
        if cfg.head.eval_samples is not None and len(held) > cfg.head.eval_samples:
            # A seeded sample spread over the split, as many traces per decision as there is
            # room for: the split holds ~12 traces per decision point, and every trace costs a
            # backbone pass (all 12,518 validation traces of the default feed: hours on a CPU).
            held_by = held["action"] if "action" in held.column_names else ["all"] * len(held)
            per_action = max(1, cfg.head.eval_samples // len(set(held_by)))
            held = held.select(
                decision_head.sample_per_value(held_by, per_action, cfg.train.seed + 1)
            )
        metrics["eval_rows"] = float(len(held))
        eval_states, eval_counts = separator_states(
            model, tokenizer, held["prompt"], held["completions"], **state_args
        )
        scores = _per_trace(step_scores(weight, bias, eval_states), eval_counts)
        metrics.update(
            {
                f"eval_{k}": v
                for k, v in step_metrics(
                    scores,
                    held["labels"],
                    faulty_steps(held, cfg.faulty_step_index_base),
                    cfg.threshold,
                ).items()
            }
        )
    return model, tokenizer, metrics, history
