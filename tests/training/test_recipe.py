"""The CPU training recipe: LoRA (on a float32 or bfloat16 base) merged into plain checkpoints,
balanced actions, decision lines only, and ``python -m training recipe`` running SFT -> DPO ->
PRM from the shipped configs, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from training import __main__ as cli
from training import data, models, synthetic
from training.checkpoint import load_checkpoint
from training.config import ModelConfig, SFTStageConfig, load_config
from training.decision_line import parse_decision_line

TOP_Q = "model.layers.1.self_attn.q_proj.weight"
LOW_Q = "model.layers.0.self_attn.q_proj.weight"
EMBED = "model.embed_tokens.weight"


def decision_first(frame: pd.DataFrame) -> pd.DataFrame:
    """Synthetic SFT rows, decision-first (as ds_sft is), with their 'action' column."""
    lines = frame["completion"].str.split("\n")
    first = lines.map(lambda ls: next(i for i, line in enumerate(ls) if parse_decision_line(line)))
    out = frame.assign(
        completion=[
            "\n".join([ls[i], *ls[:i], *ls[i + 1 :]]) for ls, i in zip(lines, first, strict=True)
        ]
    )
    return out.assign(action=out["completion"].str.split().str[0])


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("datasets")
    frames = {
        "sft": decision_first(synthetic.sft_frame(120, seed=1)),
        "dpo": synthetic.dpo_frame(120, seed=2),
        "prm": synthetic.prm_frame(120, seed=3),
    }
    for name, frame in frames.items():
        (folder / name).mkdir()
        for split, rows in frame.groupby("split"):
            rows.to_parquet(folder / name / f"{split}.parquet")
    return folder


def _sft(datasets_dir: Path, out: Path, **lora) -> SFTStageConfig:
    return SFTStageConfig.from_dict(
        {
            "model": {"name_or_path": "tiny"},
            "data": {"files": [str(datasets_dir / "sft" / "*.parquet")], "max_eval_samples": 4},
            "train": {"output_dir": str(out), "max_steps": 4, "learning_rate": 1e-2},
            "lora": {"enabled": True, "top_layers": 1, **lora},
            "completion_lines": 1,
            "balance_actions": True,
            "eval_generate_samples": 0,
        }
    )


def _untrained_tiny() -> dict[str, torch.Tensor]:
    model, _ = models.load_model(ModelConfig(name_or_path="tiny"), seed=42)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("base_dtype", ["float32", "bfloat16"])
def test_lora_trains_the_top_layers_and_saves_a_merged_float32_checkpoint(
    datasets_dir, tmp_path, base_dtype
):
    from training.sft import train_sft

    cfg = _sft(datasets_dir, tmp_path, base_dtype=base_dtype)
    result = train_sft(cfg)
    folder = Path(result.checkpoint_dir)
    # A plain model folder: merged weights, no adapter files, the LoRA section recorded.
    assert (folder / "model.safetensors").is_file()
    assert not (folder / "adapter_config.json").exists()
    saved = json.loads((folder / "training_config.json").read_text())
    assert saved["lora"]["enabled"] is True and saved["lora"]["base_dtype"] == base_dtype
    weights = load_file(folder / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    before = _untrained_tiny()
    # The adapted (top) layer moved; the layer below it and the embeddings did not, bit for bit
    # (a bfloat16 base is merged into the float32 weights, not rounded through bfloat16).
    assert not torch.equal(weights[TOP_Q], before[TOP_Q])
    assert torch.equal(weights[LOW_Q], before[LOW_Q])
    assert torch.equal(weights[EMBED], before[EMBED])
    model, tokenizer, config = load_checkpoint(folder)
    assert config["stage"] == "sft" and model.dtype == torch.float32
    ids = data.prompt_ids(tokenizer, "AAPL 2024-01-02: signal up.")
    assert torch.isfinite(model(input_ids=torch.tensor([ids])).logits).all()


def test_balance_makes_every_action_as_frequent_as_the_largest():
    frame = pd.DataFrame({"action": ["hold"] * 7 + ["sell"] * 2 + ["buy"], "i": range(10)})
    balanced = data.balance(data.as_dataset(frame), "action", seed=0).to_pandas()
    assert balanced["action"].value_counts().to_dict() == {"hold": 7, "sell": 7, "buy": 7}
    assert set(balanced["i"]) == set(range(10))  # every row kept, the rare ones repeated
    assert (balanced.query("action == 'buy'")["i"] == 9).all()
    with pytest.raises(ValueError, match="action"):
        data.balance(data.as_dataset(frame.drop(columns="action")), "action", seed=0)


def test_first_lines_keeps_the_decision_line():
    rows = data.as_dataset(pd.DataFrame({"completion": ["hold: no trade\nRegime is up_calm."]}))
    assert data.first_lines(rows, ("completion",), 1)["completion"] == ["hold: no trade"]
    assert data.first_lines(rows, ("completion",), None)["completion"] == [
        "hold: no trade\nRegime is up_calm."
    ]


def test_lora_settings_are_validated(datasets_dir, tmp_path):
    with pytest.raises(ValueError, match="base_dtype"):
        _sft(datasets_dir, tmp_path, base_dtype="float16").validate()
    with pytest.raises(ValueError, match="top_layers"):
        _sft(datasets_dir, tmp_path, top_layers=0).validate()


def test_recipe_runs_sft_then_dpo_then_prm_from_the_shipped_configs(datasets_dir, tmp_path):
    out = tmp_path / "run"
    small = ["train.max_steps=2", "data.max_eval_samples=4", "train.per_device_train_batch_size=2"]
    overrides = [
        "sft.model.name_or_path=tiny",
        *(f"{stage}.{item}" for stage in ("sft", "dpo", "prm") for item in small),
    ]
    code = cli.main(
        ["recipe", "--datasets", str(datasets_dir), "--out", str(out),
         "--result-json", str(tmp_path / "result.json"), *overrides]
    )  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "result.json").read_text())
    sft_folder = str(out / "sft" / "final")
    assert [result[s]["checkpoint_dir"] for s in ("sft", "dpo", "prm")] == [
        sft_folder, str(out / "dpo" / "final"), str(out / "prm" / "final"),
    ]  # fmt: skip
    # DPO starts from the SFT checkpoint; the PRM reads with its backbone.
    assert result["dpo"]["lineage"]["base_model"] == sft_folder
    assert result["prm"]["config"]["model"]["name_or_path"] == sft_folder
    for stage in ("sft", "dpo", "prm"):
        config = result[stage]["config"]
        shipped = load_config(stage, Path(cli.__file__).parent / "configs" / f"{stage}.yaml")
        assert config["lora"] == json.loads(json.dumps(shipped.lora.__dict__))
        assert Path(result[stage]["checkpoint_dir"], "model.safetensors").is_file()
    assert result["sft"]["config"]["completion_lines"] == 1
    assert result["sft"]["config"]["balance_actions"] is True
    model, _, config = load_checkpoint(out / "prm" / "final")
    assert config["stage"] == "prm" and model.config.prm_step_separator == "\n"


def test_recipe_rejects_an_override_without_a_stage(datasets_dir, tmp_path, capsys):
    code = cli.main(["recipe", "--datasets", str(datasets_dir), "--out", str(tmp_path), "beta=1"])
    assert code == 2
    assert "prefix it with the stage" in capsys.readouterr().err
