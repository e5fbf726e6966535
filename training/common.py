"""What the three stages share: Trainer arguments, metric callbacks, saving, the result.

Each stage module reads top to bottom as: validate config -> Trainer arguments (first, so that
DeepSpeed ZeRO-3 can shard the model as it loads) -> data -> model -> trainer -> train ->
evaluate -> save. The pieces here keep those modules short.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

import torch
from transformers import TrainerCallback

from training import checkpoint, data, models
from training.config import _StageConfig

# on_log(step, logs): called on the main process each time the Trainer logs (loss, lr, eval).
LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What a stage returns to its caller (an orchestrator logs these)."""

    stage: str
    checkpoint_dir: str  # <output_dir>/final: safetensors, tokenizer, training_config, lineage
    metrics: dict[str, float]  # train_* and eval_* scalars (NaN where not measured)
    log_history: list[dict[str, Any]]  # every Trainer log entry, in order
    config: dict[str, Any]  # the resolved config written to training_config.json
    lineage: dict[str, Any]  # what was written to lineage.json
    data_files: dict[str, str] = field(default_factory=dict)  # path -> sha256 of inputs read


class LogCallback(TrainerCallback):
    """Forward the Trainer's log entries to a plain function (MLflow, Dagster Pipes, print)."""

    def __init__(self, fn: LogFn) -> None:
        self.fn = fn

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            numbers = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
            self.fn(state.global_step, numbers)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def close_distributed() -> None:
    """Tear down the process group the Trainer (or DeepSpeed) opened, before the process exits.

    Left open, NCCL warns that resources may leak; call it at the end of a process, not between
    stages of one process.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def resolved_config(cfg: _StageConfig) -> dict[str, Any]:
    """The config as given, plus what 'auto' turned into on this machine."""
    out = cfg.to_dict()
    out["resolved"] = {
        "device": cfg.resolved_device(),
        "precision": cfg.resolved_precision(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "deepspeed": cfg.deepspeed_config(),
    }
    return out


def trainer_arguments(cfg: _StageConfig, args_cls: type, has_eval: bool, **stage_kwargs: Any):
    """``args_cls`` (TrainingArguments, SFTConfig or DPOConfig) from the stage config.

    Everything a trl config would otherwise default for us is set explicitly: trl defaults to
    bf16 and gradient checkpointing, which are wrong on CPU and for small models.
    """
    t = cfg.train
    device, precision = cfg.resolved_device(), cfg.resolved_precision()
    eval_strategy = "steps" if has_eval and t.eval_steps else "no"
    return args_cls(
        output_dir=t.output_dir,
        seed=t.seed,
        data_seed=t.seed,
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # transformers 5 renamed gradient_checkpointing; setting the new name also overrides
        # trl's default of True for the old one.
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False}
        if t.gradient_checkpointing
        else None,
        deepspeed=cfg.deepspeed_config(),
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps if eval_strategy == "steps" else None,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        report_to="none",
        disable_tqdm=t.disable_tqdm,
        dataloader_num_workers=t.dataloader_num_workers,
        # Tokens/s is the throughput number that compares across batch shapes.
        include_num_input_tokens_seen="non_padding",
        **stage_kwargs,
    )


def train_and_measure(trainer) -> dict[str, float]:
    """Run training; return train_* metrics including tokens and tokens/s."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    output = trainer.train()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = {k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)}
    tokens = float(trainer.state.num_input_tokens_seen or 0)
    metrics["train_tokens"] = tokens
    metrics["train_tokens_per_second"] = tokens / wall if wall > 0 else math.nan
    metrics["train_wall_seconds"] = wall
    # CPU time of this process (all its threads): unlike wall time, barely moved by other
    # processes on the machine, so benchmarks can compare runs on a busy box.
    metrics["train_cpu_seconds"] = cpu
    metrics["train_global_steps"] = float(trainer.state.global_step)
    if torch.cuda.is_available() and trainer.args.device.type == "cuda":
        metrics["train_peak_memory_bytes"] = float(torch.cuda.max_memory_allocated())
    return metrics


def zero_stage(cfg: _StageConfig) -> int:
    ds = cfg.deepspeed_config() or {}
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def evaluation_model(trainer, cfg: _StageConfig, folder: str, loader: Callable[[str], Any]):
    """The model to run our own evaluation on: the trained module, unwrapped.

    Under ZeRO-3 each rank holds a shard of every weight, so the saved checkpoint (gathered on
    save) is loaded instead, onto the training device.
    """
    if zero_stage(cfg) == 3:
        return loader(folder).to(trainer.args.device)
    return trainer.accelerator.unwrap_model(trainer.model)


def save_weights(trainer, tokenizer, cfg: _StageConfig) -> str:
    """save_pretrained (safetensors) and the tokenizer into <output_dir>/final.

    A LoRA model is merged first (adapters folded into a copy of the weights), so every
    checkpoint is a plain model folder that loads without peft."""
    folder = Path(cfg.train.output_dir) / "final"
    model = trainer.accelerator.unwrap_model(trainer.model)
    if models.is_peft(model):
        if trainer.is_world_process_zero():
            task = "token" if cfg.stage == "prm" else "causal"
            start = getattr(cfg, "start_model", lambda: cfg.model.name_or_path)()
            base = dataclasses.replace(cfg.model, name_or_path=start)
            full = models.merged(model, base, task, cfg.train.seed)
            full.save_pretrained(str(folder), safe_serialization=True)
    else:
        # Every rank takes part (ZeRO-3 gathers shards); only the main process writes files.
        trainer.save_model(str(folder))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(folder)
        # The Trainer pickles its arguments next to the weights; training_config.json replaces it.
        (folder / "training_args.bin").unlink(missing_ok=True)
    return str(folder)


def finish(
    cfg: _StageConfig,
    folder: str,
    *,
    is_main: bool,
    log_history: list[dict],
    base_model: str,
    started_at: str,
    metrics: dict[str, float],
    lineage: dict[str, Any] | None,
    data_files: dict[str, str],
) -> TrainResult:
    """Write training_config.json and lineage.json next to the weights; build the result."""
    config = resolved_config(cfg)
    record = checkpoint.lineage_record(
        lineage,
        stage=cfg.stage,
        base_model=base_model,
        started_at=started_at,
        ended_at=checkpoint.now(),
        data_files=data_files,
        metrics=metrics,
    )
    if is_main:
        checkpoint.write_metadata(folder, config, record)
    return TrainResult(
        stage=cfg.stage,
        checkpoint_dir=folder,
        metrics=metrics,
        log_history=list(log_history),
        config=config,
        lineage=record,
        data_files=data_files,
    )


class StageInputs(TypedDict, total=False):
    """What a caller may hand a stage's entry function (train_sft, train_dpo, train_prm) besides
    the config and the lineage, all optional: the splits as frames/datasets (instead of reading
    ``cfg.data.files``), ``on_log`` for every log entry, extra Trainer callbacks."""

    train_rows: data.Rows | None
    eval_rows: data.Rows | None
    on_log: LogFn | None
    callbacks: list | None


# fit(cfg, run) -> (model, tokenizer, metrics, log history): a stage trained without a Trainer.
HeadFit = Callable[[Any, "StageRun"], tuple[Any, Any, dict[str, float], list[dict]]]


def run_stage(
    cfg: _StageConfig,
    lineage: dict[str, Any] | None,
    inputs: StageInputs,
    *,
    head: HeadFit,
    trainer: Callable[[Any, StageRun], TrainResult],
) -> TrainResult:
    """A stage's entry: begin the run (StageRun.begin); then, in head mode (``method: head``),
    fit with ``head`` and save the model; else train with ``trainer(cfg, run)``."""
    run = StageRun.begin(cfg, lineage, **inputs)
    if cfg.method == "head":
        return run.save_and_finish(*head(cfg, run))
    return trainer(cfg, run)


@dataclass
class StageRun:
    """What every stage does first and last: validate the config and the caller's lineage, note
    the start, load the splits; then train, evaluate, save and write the checkpoint's records."""

    cfg: _StageConfig
    lineage: dict[str, Any] | None
    train_rows: Any  # datasets.Dataset
    eval_rows: Any | None
    files: list[str]
    started_at: str
    on_log: LogFn | None = None
    extra_callbacks: list | None = None

    @classmethod
    def begin(
        cls, cfg: _StageConfig, lineage: dict[str, Any] | None, **inputs: Unpack[StageInputs]
    ) -> StageRun:
        cfg.validate()
        checkpoint.check_lineage(lineage)
        started_at = checkpoint.now()
        train, evaluation, files = data.load_splits(
            cfg.data, cfg.stage, inputs.get("train_rows"), inputs.get("eval_rows")
        )
        return cls(
            cfg,
            lineage,
            train,
            evaluation,
            files,
            started_at,
            on_log=inputs.get("on_log"),
            extra_callbacks=inputs.get("callbacks"),
        )

    def callbacks(self) -> list:
        """The Trainer's callbacks: the caller's, then one forwarding its logs to ``on_log``."""
        out = list(self.extra_callbacks or [])
        if self.on_log is not None:
            out.append(LogCallback(self.on_log))
        return out

    def train_and_save(
        self, trainer, tokenizer, metrics: dict[str, float] | None = None
    ) -> tuple[dict[str, float], str]:
        """Train, add the Trainer's eval metrics, save the weights: (metrics, checkpoint folder).
        ``metrics``: measured before training (kept first)."""
        metrics = {**(metrics or {}), **train_and_measure(trainer)}
        if self.eval_rows is not None:
            metrics.update({k: float(v) for k, v in trainer.evaluate().items()})
        return metrics, save_weights(trainer, tokenizer, self.cfg)

    def finish(self, trainer, folder: str, metrics: dict[str, float]) -> TrainResult:
        return finish(
            self.cfg,
            folder,
            is_main=trainer.is_world_process_zero(),
            log_history=trainer.state.log_history,
            base_model=self.cfg.start_model(),
            started_at=self.started_at,
            metrics=metrics,
            lineage=self.lineage,
            data_files=data.file_digests(self.files),
        )

    def save_and_finish(
        self, model, tokenizer, metrics: dict[str, float], log_history: list[dict]
    ) -> TrainResult:
        """For a stage trained without a Trainer (head mode, one process): report the log
        history through ``on_log`` (as the Trainer's callback would), save the model and
        tokenizer into <output_dir>/final, then write the checkpoint's records."""
        for entry in log_history if self.on_log is not None else []:
            self.on_log(int(entry["step"]), {k: float(v) for k, v in entry.items() if k != "step"})
        folder = Path(self.cfg.train.output_dir) / "final"
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(folder)
        return finish(
            self.cfg,
            str(folder),
            is_main=True,
            log_history=log_history,
            base_model=self.cfg.start_model(),
            started_at=self.started_at,
            metrics=metrics,
            lineage=self.lineage,
            data_files=data.file_digests(self.files),
        )
