"""PRM head mode (training.prm_head): the score layer fitted on the frozen backbone's states at
the step separators, and the PRM stage that uses it."""

from __future__ import annotations

import pytest
import torch

from training import prm_head, synthetic
from training.config import PRMStageConfig

LINEAGE = {"dataset_digest": "sha256:abc", "source_hashes": ["h1"]}


def _steps(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """States whose first dimension carries the label (plus noise); 20% faulty steps."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=gen) > 0.2).float()
    states = torch.randn(n, 16, generator=gen) * 3
    states[:, 0] += 12 * labels + 40  # an offset: the bias must absorb it
    return states, labels


@pytest.mark.parametrize("label_mode", ["hard", "soft"])
def test_score_head_separates_correct_from_faulty_steps(label_mode):
    states, labels = _steps(400)
    test_states, test_labels = _steps(200, seed=1)
    weight, bias, history = prm_head.fit_score_head(states, labels, label_mode, steps=200, l2=0.01)
    assert weight.shape == (2 if label_mode == "hard" else 1, 16)
    scores = prm_head.step_scores(weight, bias, test_states)
    accuracy = float(((scores > 0.5).float() == test_labels).float().mean())
    assert accuracy > 0.9
    assert history[-1]["loss"] < history[0]["loss"] / 2


def test_score_head_balances_rare_faulty_steps():
    states, labels = _steps(400)
    weight, bias, _ = prm_head.fit_score_head(states, labels, "hard", steps=200, l2=0.01)
    scores = prm_head.step_scores(weight, bias, states)
    # Balanced classes: the mean score of faulty steps sits well below 0.5, not at the prior.
    assert float(scores[labels == 0].mean()) < 0.3
    assert float(scores[labels == 1].mean()) > 0.7


def _head_config(prm_file, folder, **head) -> PRMStageConfig:
    """Head mode on the tiny model, evaluated on the file's test split."""
    return PRMStageConfig.from_dict(
        {
            "method": "head",
            "model": {"name_or_path": "tiny", "tiny_hidden_size": 64},
            "data": {"files": [str(prm_file)], "eval_split": "test", "system_prompt": ""},
            "head": {**head, "forward_dtype": "float32"},
            "train": {"output_dir": str(folder / "prm"), "max_length": 256},
            "lora": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def prm_head_run(tmp_path_factory):
    from training.prm import train_prm

    folder = tmp_path_factory.mktemp("prm_head")
    prm_file = folder / "prm.parquet"
    synthetic.prm_frame(240, seed=3).to_parquet(prm_file)
    cfg = _head_config(prm_file, folder, max_iter=200, l2=0.01)
    logs = []
    result = train_prm(cfg, LINEAGE, on_log=lambda step, entry: logs.append((step, entry)))
    return cfg, result, logs, prm_file


def test_prm_head_ranks_faulty_steps_below_correct_ones(prm_head_run):
    _, result, logs, _ = prm_head_run
    m = result.metrics
    assert m["eval_step_auc"] > 0.8 and m["train_step_auc"] > 0.8
    assert m["eval_faulty_step_found_rate"] > 0.5
    assert logs and logs[0][1]["loss"] > logs[-1][1]["loss"]


def test_prm_head_checkpoint_scores_as_the_stage_measured(prm_head_run):
    import pandas as pd

    from training.checkpoint import load_checkpoint
    from training.metrics import step_metrics
    from training.models import load_model
    from training.prm import score_traces

    cfg, result, _, prm_file = prm_head_run
    model, tokenizer, config = load_checkpoint(result.checkpoint_dir)
    assert config["method"] == "head" and model.config.prm_step_separator == "\n"
    # Only the score layer differs from the untrained token-classification model.
    base, _ = load_model(cfg.model, task="token", num_labels=2, seed=cfg.train.seed)
    for name, param in model.model.named_parameters():
        assert torch.equal(param, dict(base.model.named_parameters())[name]), name
    assert not torch.equal(model.score.weight, base.score.weight)
    test = pd.read_parquet(prm_file).query("split == 'test'")
    scores = score_traces(
        model,
        tokenizer,
        list(test.prompt),
        [list(c) for c in test.completions],
        system="",
        max_length=256,
    )
    faulty = [None if pd.isna(f) else int(f) - 1 for f in test.faulty_step_index]
    measured = step_metrics(scores, [list(v) for v in test.labels], faulty)
    assert measured["step_auc"] == pytest.approx(result.metrics["eval_step_auc"], abs=1e-3)


def test_prm_head_scores_a_sample_of_a_large_validation_split(tmp_path):
    """``head.eval_samples`` caps the traces the stage scores after fitting (the default
    feed's validation split holds ~12k traces, each a backbone pass)."""
    from training.prm import train_prm

    prm_file = tmp_path / "prm.parquet"
    frame = synthetic.prm_frame(90, seed=4)
    assert (frame.split == "test").sum() > 9
    frame.to_parquet(prm_file)
    result = train_prm(_head_config(prm_file, tmp_path, max_iter=20, eval_samples=9), LINEAGE)
    assert 1 <= result.metrics["eval_rows"] <= 9
    assert 0.0 <= result.metrics["eval_step_auc"] <= 1.0
