"""The training recipe: SFT -> DPO (from the SFT checkpoint) -> PRM, on the exported datasets.

    python -m training recipe --datasets var/datasets --out var/training/recipe
    python -m training recipe --datasets DIR --out DIR --profile gpu sft.train.max_steps=200

``--datasets`` is a folder laid out as the dataset exports write it
(``<folder>/{sft,dpo,prm}/<split>.parquet``). Each stage reads its shipped config
(``training/configs/<stage>.yaml`` on CPU, ``<stage>_gpu.yaml`` with ``--profile gpu``: the same
recipe, only batch size, steps and model differ), then the recipe's wiring (data files, output
folder ``<out>/<stage>``, the SFT checkpoint as DPO's start and PRM's backbone), then the
caller's overrides, prefixed with the stage (``dpo.beta=0.2``). Every checkpoint is saved as a
stage saves it (merged weights, tokenizer, ``training_config.json``, ``lineage.json``).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from training.config import CONFIG_DIR, FEATURE_CACHE_DIR, STAGES, _StageConfig, load_config

RECIPE_STAGES = ("sft", "dpo", "prm")
PROFILES = ("cpu", "gpu")


def config_file(stage: str, profile: str) -> Path:
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: expected one of {', '.join(PROFILES)}")
    return CONFIG_DIR / (f"{stage}_gpu.yaml" if profile == "gpu" else f"{stage}.yaml")


def split_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """``stage.key=value`` items grouped by stage (the prefix removed)."""
    out: dict[str, list[str]] = {stage: [] for stage in RECIPE_STAGES}
    for item in overrides:
        stage, dot, rest = item.partition(".")
        if not dot or stage not in out:
            raise ValueError(
                f"override {item!r}: prefix it with the stage, e.g. sft.train.max_steps=5 "
                f"(stages: {', '.join(RECIPE_STAGES)})"
            )
        out[stage].append(rest)
    return out


def stage_config(
    stage: str,
    datasets: str | Path,
    out: str | Path,
    *,
    profile: str = "cpu",
    sft_checkpoint: str | None = None,
    overrides: list[str] | None = None,
) -> _StageConfig:
    """The validated config of one recipe stage."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    files = str(Path(datasets) / stage / "*.parquet")
    wiring = [f"data.files=[{files}]", f"train.output_dir={Path(out) / stage}"]
    if stage == "dpo":
        # The policy and its frozen reference start from the SFT checkpoint.
        wiring += ["model.name_or_path=", f"sft_checkpoint={sft_checkpoint}"]
    if stage in ("sft", "dpo"):
        # Head mode: SFT, DPO and the evaluation share the frozen backbone's states.
        wiring.append(f"head.feature_cache={Path(out) / FEATURE_CACHE_DIR}")
    if stage == "prm" and sft_checkpoint:
        # The PRM reads the prompt with the backbone that learnt to read the analog evidence.
        wiring.append(f"model.name_or_path={sft_checkpoint}")
    return load_config(stage, config_file(stage, profile), wiring + list(overrides or []))


def run_recipe(
    datasets: str | Path,
    out: str | Path,
    *,
    profile: str = "cpu",
    overrides: list[str] | None = None,
    lineage: dict[str, Any] | None = None,
    stages: tuple[str, ...] = RECIPE_STAGES,
) -> dict[str, Any]:
    """Train the stages in order; return ``{stage: TrainResult}``. DPO needs SFT in ``stages``
    or an ``dpo.sft_checkpoint=...`` override."""
    from training.dpo import train_dpo
    from training.prm import train_prm
    from training.sft import train_sft

    by_stage = split_overrides(overrides or [])
    trainers = {"sft": train_sft, "dpo": train_dpo, "prm": train_prm}
    results: dict[str, Any] = {}
    sft_folder = None
    for stage in RECIPE_STAGES:
        if stage not in stages:
            continue
        cfg = stage_config(
            stage,
            datasets,
            out,
            profile=profile,
            sft_checkpoint=sft_folder,
            overrides=by_stage[stage],
        )
        results[stage] = trainers[stage](cfg, dict(lineage or {}))
        if stage == "sft":
            sft_folder = results[stage].checkpoint_dir
        gc.collect()  # the previous stage's model and optimizer state
    return results
