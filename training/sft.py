"""Stage 1, supervised fine-tuning: imitate the completions of ds_sft.

trl's SFTTrainer on conversational prompt-completion rows: the chat template renders the prompt
as the user turn and the completion (decision-first: the decision line, then the reasoning steps;
``completion_lines`` may keep the decision line only) as the assistant turn, and with
``completion_only_loss`` only the assistant tokens are scored, so the model learns to answer
rather than to echo market prompts.

After training: eval loss, and on up to ``eval_generate_samples`` evaluation rows the likelihood
scorer's accuracy, log p(target) and Brier against the reference's decision, and the share of
greedy generations that open with a decision line (``training.scoring.decision_scores``).

``method: head`` (the CPU recipe) freezes the backbone and fits only the output rows of the
decision tokens on its hidden states (``training.decision_head``: why, and how). Options of the
trainer method: ``lora`` (peft adapters, merged into the weights before saving) and
``balance_actions`` (oversample the rarer actions of the 'action' column).
"""

from __future__ import annotations

from typing import Any, Unpack

from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from training import common, cpu_head, data, decision_head, models, scoring
from training.config import SFTStageConfig


def train_sft(
    cfg: SFTStageConfig, lineage: dict[str, Any] | None = None, **inputs: Unpack[common.StageInputs]
) -> common.TrainResult:
    """Fine-tune ``cfg.model`` on ds_sft; return metrics and the checkpoint folder.

    Rows come from ``cfg.data.files`` (split column) unless passed in as frames/datasets.
    """
    return common.run_stage(
        cfg, lineage, inputs, head=decision_head.train_sft_head, trainer=_train_with_trainer
    )


def _train_with_trainer(cfg: SFTStageConfig, run: common.StageRun) -> common.TrainResult:
    train_raw, eval_raw = run.train_rows, run.eval_rows
    if cfg.balance_actions:
        train_raw = data.balance(train_raw, "action", cfg.train.seed)
    train_raw = data.first_lines(train_raw, ("completion",), cfg.completion_lines)
    eval_raw = data.first_lines(eval_raw, ("completion",), cfg.completion_lines)
    # Arguments before the model: with ZeRO-3 they switch on sharded loading.
    args = common.trainer_arguments(
        cfg,
        SFTConfig,
        has_eval=eval_raw is not None,
        max_length=cfg.train.max_length,
        completion_only_loss=cfg.completion_only_loss,
        packing=cfg.packing,
        dataset_num_proc=None,
    )
    model, tokenizer = models.load_model(
        cfg.model, task="causal", seed=cfg.train.seed, dtype=models.base_dtype(cfg.lora)
    )
    peft_config = None
    if cfg.lora.enabled:
        peft_config = models.lora_config(cfg.lora, "causal", model.config.num_hidden_layers)

    system = cfg.data.system_prompt
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.to_sft(train_raw, system),
        eval_dataset=data.to_sft(eval_raw, system) if eval_raw is not None else None,
        processing_class=tokenizer,
        callbacks=run.callbacks(),
        peft_config=peft_config,
    )
    if args.device.type == "cpu":
        cpu_head.use_plain_lm_head(models.without_peft(trainer.model))
    metrics, folder = run.train_and_save(trainer, tokenizer)

    if eval_raw is not None and cfg.eval_generate_samples and trainer.is_world_process_zero():
        rows = eval_raw.select(range(min(cfg.eval_generate_samples, len(eval_raw))))
        trained = common.evaluation_model(
            trainer, cfg, folder, AutoModelForCausalLM.from_pretrained
        )
        scores = scoring.decision_scores(
            trained,
            tokenizer,
            rows["prompt"],
            rows["completion"],
            system=system,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.train.per_device_eval_batch_size,
        )
        metrics.update({f"eval_{k}": v for k, v in scores.items()})

    return run.finish(trainer, folder, metrics)
