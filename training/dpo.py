"""Stage 2, direct preference optimisation on ds_dpo, from the SFT checkpoint.

The policy starts from the SFT checkpoint and a *separate, frozen* copy of that checkpoint is the
reference model, loaded from the same folder. (trl can load the reference itself from
``model.config._name_or_path``, but a model built in memory has no such path, and naming the
folder keeps it explicit which weights the KL term anchors to.) Without an SFT checkpoint the
base in ``model.name_or_path`` is used the same way; the in-memory 'tiny' base is deep-copied.

``method: head`` (the CPU recipe): the sigmoid DPO loss on the output rows of the decision
tokens only, the SFT checkpoint's rows as reference (``training.decision_head``).

After training: eval loss and trl's reward metrics, plus preference accuracy on held-out pairs
(share where log p(chosen) > log p(rejected)) for the policy before and after training.
"""

from __future__ import annotations

import copy
from typing import Any, Unpack

from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from training import common, cpu_head, data, decision_head, models, scoring
from training.config import TINY, DPOStageConfig


def _preference(model, tokenizer, rows, cfg: DPOStageConfig) -> dict[str, float]:
    return scoring.preference_accuracy(
        model,
        tokenizer,
        rows["prompt"],
        rows["chosen"],
        rows["rejected"],
        system=cfg.data.system_prompt,
        batch_size=cfg.train.per_device_eval_batch_size,
    )


def train_dpo(
    cfg: DPOStageConfig, lineage: dict[str, Any] | None = None, **inputs: Unpack[common.StageInputs]
) -> common.TrainResult:
    """Preference-tune the SFT checkpoint on ds_dpo; return metrics and the checkpoint folder."""
    return common.run_stage(
        cfg, lineage, inputs, head=decision_head.train_dpo_head, trainer=_train_with_trainer
    )


def _train_with_trainer(cfg: DPOStageConfig, run: common.StageRun) -> common.TrainResult:
    train_raw, eval_raw = run.train_rows, run.eval_rows
    pair_columns = ("chosen", "rejected")
    train_raw = data.first_lines(train_raw, pair_columns, cfg.completion_lines)
    eval_raw = data.first_lines(eval_raw, pair_columns, cfg.completion_lines)
    system = cfg.data.system_prompt
    train_pairs = data.to_dpo(train_raw, system, cfg.min_margin)
    if len(train_pairs) == 0:
        raise ValueError(f"no DPO pairs left after min_margin={cfg.min_margin}")
    args = common.trainer_arguments(
        cfg,
        DPOConfig,
        has_eval=eval_raw is not None,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        label_smoothing=cfg.label_smoothing,
        max_length=cfg.train.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        dataset_num_proc=None,
    )

    start = cfg.start_model_config()
    policy, tokenizer = models.load_model(
        start, task="causal", seed=cfg.train.seed, dtype=models.base_dtype(cfg.lora)
    )
    peft_config, reference = None, None
    if cfg.lora.enabled:
        # The reference is the policy with its adapters off: no second copy of the model.
        peft_config = models.lora_config(cfg.lora, "causal", policy.config.num_hidden_layers)
    elif start.name_or_path == TINY:
        reference = copy.deepcopy(policy)
    else:
        reference, _ = models.load_model(start, task="causal", tokenizer=tokenizer)
    if reference is not None:
        reference.eval().requires_grad_(False)

    # Preference accuracy of the starting point, for the before/after comparison. Skipped under
    # ZeRO-3, where the freshly loaded weights are already sharded across ranks.
    metrics: dict[str, float] = {}
    if eval_raw is not None and common.is_main_process() and common.zero_stage(cfg) != 3:
        policy.to(args.device)  # the Trainer would move it there next anyway
        before = _preference(policy, tokenizer, eval_raw, cfg)
        metrics.update({f"eval_start_{k}": v for k, v in before.items()})

    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=train_pairs,
        eval_dataset=data.to_dpo(eval_raw, system, 0.0) if eval_raw is not None else None,
        processing_class=tokenizer,
        callbacks=run.callbacks(),
        peft_config=peft_config,
    )
    if args.device.type == "cpu":
        cpu_head.use_plain_lm_head(models.without_peft(trainer.model))
        if trainer.ref_model is not None:
            cpu_head.use_plain_lm_head(trainer.ref_model)
    metrics, folder = run.train_and_save(trainer, tokenizer, metrics)

    if eval_raw is not None and trainer.is_world_process_zero():
        trained = common.evaluation_model(
            trainer, cfg, folder, AutoModelForCausalLM.from_pretrained
        )
        after = _preference(trained, tokenizer, eval_raw, cfg)
        metrics.update({f"eval_{k}": v for k, v in after.items()})

    return run.finish(trainer, folder, metrics)
