"""Stage 3, a process reward model (PRM) on ds_prm: how likely is each reasoning step correct?

trl dropped its PRM trainer in 1.14, so this is our own, on the plain transformers Trainer:

    input   the chat-formatted prompt (up to the assistant turn), then each step followed by
            the step separator token. The separator is '\\n' by default: one token in the
            SmolLM2 vocabulary and the same line break that separates steps in ds_sft
            completions, so the PRM reads traces the way the policy writes them.
    labels  at each separator position the step's label, -100 everywhere else. The backbone
            is causal, so the score at step k sees the prompt and steps 1..k only.
    head    AutoModelForTokenClassification on the base (or SFT) checkpoint's backbone:
            hard mode  2 classes (0 faulty, 1 correct), cross-entropy on 'labels'
            soft mode  1 logit, BCE-with-logits against 'soft_labels' in [0, 1]
    score   P(correct) per step: softmax[:, 1] (hard) or sigmoid (soft)

Metrics on the evaluation split (hard labels in both modes): step AUC, step F1 (faulty class),
step accuracy, and the faulty-step-found rate on perturbed traces (the lowest-scored step is
the one the perturbation broke). ``score_steps`` gives the scores for one trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Unpack

import torch
import torch.nn.functional as F
from transformers import AutoModelForTokenClassification, Trainer, TrainingArguments

from training import common, data, models, prm_head, scoring
from training.config import PRMStageConfig
from training.metrics import step_metrics


@dataclass
class PRMCollator:
    """Right-pad input_ids (pad id), attention_mask (0) and float labels (-100)."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100.0)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(row["labels"], dtype=torch.float)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def step_loss(logits: torch.Tensor, labels: torch.Tensor, label_mode: str) -> torch.Tensor:
    """Mean loss over the labelled (separator) positions of a batch."""
    at = labels != -100
    picked, target = logits[at].float(), labels[at]
    if label_mode == "hard":
        return F.cross_entropy(picked, target.long())
    return F.binary_cross_entropy_with_logits(picked[:, 0], target)


class PRMTrainer(Trainer):
    """Trainer whose loss is taken at step separators only, hard (CE) or soft (BCE)."""

    loss_is_scaled_for_ga = False  # step_loss is a per-batch mean

    def __init__(self, *args: Any, label_mode: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_mode = label_mode

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = step_loss(outputs.logits, labels, self.label_mode)
        return (loss, outputs) if return_outputs else loss


# ------------------------------------------------------------------------------------ scoring


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """P(step correct) from the head's logits at separator positions."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[..., 0].float())
    return torch.softmax(logits.float(), dim=-1)[..., 1]


@torch.no_grad()
def score_traces(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    traces: Sequence[Sequence[str]],
    *,
    separator: str | None = None,
    system: str | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
) -> list[list[float]]:
    """P(correct) of every step of every trace; a step cut off by max_length gets no score."""
    separator = separator or getattr(model.config, "prm_step_separator", "\n")
    sep_id = data.separator_id(tokenizer, separator)
    encoded = [
        data.prm_input(tokenizer, p, list(steps), sep_id, system, max_length)
        for p, steps in zip(prompts, traces, strict=True)
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[list[float]] = []
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = PRMCollator(tokenizer.pad_token_id)(
                [{"input_ids": ids, "labels": [0.0] * len(ids)} for ids, _ in chunk]
            )
            with scoring.autocast_for(model):
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                ).logits
            probs = _probabilities(logits).cpu()
            out.extend(probs[i, positions].tolist() for i, (_, positions) in enumerate(chunk))
    finally:
        model.train(was_training)
    return out


def score_steps(
    model: Any, tokenizer: Any, prompt: str, steps: Sequence[str], **kwargs: Any
) -> list[float]:
    """P(correct) of each step of one reasoning trace (one float per step)."""
    return score_traces(model, tokenizer, [prompt], [steps], **kwargs)[0]


def evaluate_prm(model: Any, tokenizer: Any, rows: Any, cfg: PRMStageConfig) -> dict[str, float]:
    """Step metrics of ``model`` on ds_prm rows (hard labels, faulty steps of perturbed traces)."""
    scores = score_traces(
        model,
        tokenizer,
        rows["prompt"],
        rows["completions"],
        separator=cfg.step_separator,
        system=cfg.data.system_prompt,
        max_length=cfg.train.max_length,
        batch_size=cfg.train.per_device_eval_batch_size,
    )
    faulty = prm_head.faulty_steps(rows, cfg.faulty_step_index_base)
    return step_metrics(scores, rows["labels"], faulty, cfg.threshold)


# ----------------------------------------------------------------------------------- training


def describe_head(model: Any, cfg: PRMStageConfig) -> None:
    """Separator, label mode and label names in the model's config: saved with the weights, so
    that score_steps on a loaded checkpoint needs no stage config."""
    model.config.prm_step_separator = cfg.step_separator
    model.config.prm_label_mode = cfg.label_mode
    if cfg.label_mode == "hard":
        model.config.id2label, model.config.label2id = (
            {0: "faulty", 1: "correct"},
            {"faulty": 0, "correct": 1},
        )
    else:
        model.config.id2label, model.config.label2id = {0: "p_correct"}, {"p_correct": 0}


def train_prm(
    cfg: PRMStageConfig, lineage: dict[str, Any] | None = None, **inputs: Unpack[common.StageInputs]
) -> common.TrainResult:
    """Train a PRM on ds_prm; return metrics (step AUC/F1/found rate) and the checkpoint folder."""
    return common.run_stage(cfg, lineage, inputs, head=_train_head, trainer=_train_with_trainer)


def _train_head(cfg: PRMStageConfig, run: common.StageRun) -> tuple[Any, Any, dict, list[dict]]:
    model, tokenizer, metrics, history = prm_head.train_prm_head(cfg, run)
    describe_head(model, cfg)
    return model, tokenizer, metrics, history


def _train_with_trainer(cfg: PRMStageConfig, run: common.StageRun) -> common.TrainResult:
    train_raw, eval_raw = run.train_rows, run.eval_rows
    args = common.trainer_arguments(
        cfg,
        TrainingArguments,
        has_eval=eval_raw is not None,
        remove_unused_columns=False,  # our collator reads input_ids and labels itself
        label_names=["labels"],
        prediction_loss_only=True,  # step metrics are computed by evaluate_prm, not the Trainer
    )
    model, tokenizer = models.load_model(
        cfg.model,
        task="token",
        num_labels=cfg.head_size(),
        seed=cfg.train.seed,
        dtype=models.base_dtype(cfg.lora),
    )
    describe_head(model, cfg)

    if cfg.lora.enabled:
        from peft import get_peft_model

        lora = models.lora_config(cfg.lora, "token", model.config.num_hidden_layers)
        model = get_peft_model(model, lora)

    sep_id = data.separator_id(tokenizer, cfg.step_separator)
    encode = dict(
        tokenizer=tokenizer,
        sep_id=sep_id,
        label_mode=cfg.label_mode,
        system=cfg.data.system_prompt,
        max_length=cfg.train.max_length,
    )
    trainer = PRMTrainer(
        model=model,
        args=args,
        train_dataset=data.to_prm(train_raw, **encode),
        eval_dataset=data.to_prm(eval_raw, **encode) if eval_raw is not None else None,
        data_collator=PRMCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=run.callbacks(),
        label_mode=cfg.label_mode,
    )
    metrics, folder = run.train_and_save(trainer, tokenizer)

    if eval_raw is not None and trainer.is_world_process_zero():
        trained = common.evaluation_model(
            trainer, cfg, folder, AutoModelForTokenClassification.from_pretrained
        )
        metrics.update(
            {f"eval_{k}": v for k, v in evaluate_prm(trained, tokenizer, eval_raw, cfg).items()}
        )

    return run.finish(trainer, folder, metrics)
