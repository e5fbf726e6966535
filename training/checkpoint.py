"""Checkpoints: what a finished stage leaves behind, and loading it back.

A checkpoint folder holds

    model.safetensors, config.json, generation_config.json   save_pretrained (safetensors)
    tokenizer files, chat_template.jinja                      the tokenizer it was trained with
    training_config.json                                      the resolved stage config
    lineage.json                                              what the caller passed (dataset
                                                              digests, source hashes, ...) plus
                                                              stage, base model, times, git
                                                              revision, input file digests,
                                                              library versions and metrics

so that a registry can log it as one artifact and anyone can tell what produced it.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from training.models import prepare_tokenizer

CONFIG_FILE = "training_config.json"
LINEAGE_FILE = "lineage.json"
# Keys the training code writes into lineage.json; a caller's lineage may not use them.
OWN_KEYS = (
    "stage",
    "base_model",
    "started_at",
    "ended_at",
    "git",
    "data_files",
    "libraries",
    "metrics",
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_info(cwd: str | Path | None = None) -> dict[str, Any] | None:
    """Revision of the working tree the code runs from, and whether it had local changes."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import transformers
    import trl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }


def check_lineage(lineage: dict[str, Any] | None) -> None:
    """Fail before training, not after, if the caller's lineage would be overwritten."""
    clash = sorted(set(lineage or {}) & set(OWN_KEYS))
    if clash:
        raise ValueError(f"lineage keys {clash} are written by the trainer; rename them")
    json.dumps(lineage or {}, default=str)  # must be serialisable


def lineage_record(
    lineage: dict[str, Any] | None,
    *,
    stage: str,
    base_model: str,
    started_at: str,
    ended_at: str,
    data_files: dict[str, str],
    metrics: dict[str, float],
) -> dict[str, Any]:
    check_lineage(lineage)
    return {
        **(lineage or {}),
        "stage": stage,
        "base_model": base_model,
        "started_at": started_at,
        "ended_at": ended_at,
        "git": git_info(),
        "data_files": data_files,
        "libraries": library_versions(),
        "metrics": metrics,
    }


def _json_safe(value: Any) -> Any:
    """NaN and inf become null: strict JSON readers (and MLflow) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(_json_safe(payload), indent=2, sort_keys=True, default=str) + "\n")


def write_metadata(folder: str | Path, config: dict[str, Any], lineage: dict[str, Any]) -> None:
    folder = Path(folder)
    write_json(folder / CONFIG_FILE, config)
    write_json(folder / LINEAGE_FILE, lineage)


def read_metadata(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    folder = Path(folder)
    config = (
        json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).exists() else {}
    )
    lineage = (
        json.loads((folder / LINEAGE_FILE).read_text()) if (folder / LINEAGE_FILE).exists() else {}
    )
    return config, lineage


def load_checkpoint(
    folder: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, training_config) of a checkpoint, in eval mode.

    A PRM checkpoint (stage 'prm') comes back as a token-classification model, any other as a
    causal LM ready for ``generate``.
    """
    folder = Path(folder)
    config, _ = read_metadata(folder)
    auto = AutoModelForTokenClassification if config.get("stage") == "prm" else AutoModelForCausalLM
    model = auto.from_pretrained(folder, dtype=dtype)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer, config


def code_digest() -> str:
    """Short SHA-256 of this package's source and configs: what a checkpoint's training code
    was (orchestrators use it as the training assets' code version)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("*.py"), *root.glob("configs/*")]):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
