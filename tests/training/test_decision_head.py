"""Head mode (training.decision_head): the frozen backbone's hidden states, the fitted output
rows of the decision tokens, and the SFT / DPO stages that use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from training import decision_head, scoring, synthetic
from training.config import DPOStageConfig, SFTStageConfig
from training.decision_line import ACTIONS

LINEAGE = {"dataset_digest": "sha256:abc", "source_hashes": ["h1"]}


def _separable(n: int, seed: int = 0) -> tuple[decision_head.Features, list[str]]:
    """Hidden states whose first three dimensions point at the action (plus noise), raw scale
    of a real model (norm ~40) and a constant background log-sum-exp."""
    gen = torch.Generator().manual_seed(seed)
    labels = [ACTIONS[i % 3] for i in range(n)]
    hidden = torch.randn(n, 32, generator=gen) * 5
    for i, action in enumerate(labels):
        hidden[i, ACTIONS.index(action)] += 20
    return decision_head.Features(hidden, torch.full((n,), 3.0)), labels


def test_sft_head_fits_the_decisions_and_generalises():
    train, labels = _separable(300)
    test, test_labels = _separable(150, seed=1)
    start = torch.zeros(3, 32)
    before = decision_head.choice_metrics(start, test, test_labels)
    weights, history = decision_head.fit_sft_head(
        start, train, labels, steps=200, l2=0.02, balance=True
    )
    after = decision_head.choice_metrics(weights, test, test_labels)
    assert before["logp_target"] == pytest.approx(np.log(1 / 3))
    assert after["accuracy"] > 0.95 and after["logp_target"] > -0.2
    assert history[-1]["loss"] < history[0]["loss"] / 3


def test_sft_head_l2_keeps_the_rows_near_their_start():
    train, labels = _separable(300)
    start = torch.ones(3, 32)
    loose, _ = decision_head.fit_sft_head(start, train, labels, steps=200, l2=0.0, balance=False)
    tight, _ = decision_head.fit_sft_head(start, train, labels, steps=200, l2=100.0, balance=False)
    assert (tight - start).norm() < (loose - start).norm() / 5


def test_class_weights_give_every_action_the_same_total():
    weights = decision_head._class_weights(np.array(["hold"] * 8 + ["buy"] * 2), balance=True)
    assert weights[:8].sum() == pytest.approx(weights[8:].sum()) == pytest.approx(0.5)


def test_dpo_head_moves_towards_the_chosen_decision():
    feats, labels = _separable(300)
    # Chosen: the action the features point at; rejected: the next one.
    rejected = [ACTIONS[(ACTIONS.index(a) + 1) % 3] for a in labels]
    start = torch.zeros(3, 32)
    before = decision_head.preference_metrics(start, start, feats, labels, rejected, 0.1)
    weights, _ = decision_head.fit_dpo_head(
        start, feats, labels, rejected, beta=0.1, steps=100, l2=0.02
    )
    after = decision_head.preference_metrics(weights, start, feats, labels, rejected, 0.1)
    assert before["reward_accuracy"] == 0.0  # equal to the reference: no pair is won
    assert after["reward_accuracy"] > 0.95 and after["logp_preference_accuracy"] > 0.95


def test_sample_per_value_caps_each_value_and_keeps_order():
    values = ["hold"] * 50 + ["buy"] * 5 + ["sell"] * 20
    keep = decision_head.sample_per_value(values, 10, seed=0)
    picked = [values[i] for i in keep]
    assert picked.count("hold") == 10 and picked.count("buy") == 5 and picked.count("sell") == 10
    assert list(keep) == sorted(keep)
    assert list(decision_head.sample_per_value(values, None, 0)) == list(range(75))


def test_coordinated_sample_picks_the_same_prompts_in_two_datasets():
    """SFT (by target) and DPO (by chosen action) sample the same decision points where both
    datasets hold them with the same action, whatever the rows' order or other rows."""
    prompts = [f"point {i}" for i in range(300)]
    actions = [ACTIONS[i % 3] for i in range(300)]
    sft = decision_head.sample_per_value(actions, 20, seed=7, keys=prompts)
    # The DPO dataset: another order, a third of the points missing, other points added.
    rows = [(p, a) for p, a in zip(prompts, actions, strict=True) if int(p.split()[1]) % 3][::-1]
    rows += [(f"other {i}", ACTIONS[i % 3]) for i in range(100)]
    dpo = decision_head.sample_per_value([a for _, a in rows], 20, 7, keys=[p for p, _ in rows])
    picked_sft = {prompts[i] for i in sft}
    picked_dpo = {rows[i][0] for i in dpo}
    assert len(picked_sft) == len(picked_dpo) == 60
    shared = picked_sft & picked_dpo
    # Bottom-k of one hash: every SFT pick the DPO rows still hold is picked there too unless
    # pushed out by an added point that hashes lower.
    assert len(shared) >= 20
    assert sorted(sft) == list(sft)
    assert set(decision_head.sample_per_value(actions, 20, 8, keys=prompts)) != set(sft)


@pytest.fixture(scope="module")
def head_runs(tmp_path_factory):
    from training.dpo import train_dpo
    from training.sft import train_sft

    folder = tmp_path_factory.mktemp("head")
    sft_file, dpo_file = folder / "sft.parquet", folder / "dpo.parquet"
    synthetic.sft_frame(240).to_parquet(sft_file)
    synthetic.dpo_frame(240).to_parquet(dpo_file)
    common = {"eval_split": "test", "system_prompt": ""}
    # One feature cache for both stages: DPO reads the states SFT saved.
    head = {"max_iter": 200, "l2": 0.02, "forward_dtype": "float32"}
    head["feature_cache"] = str(folder / "features")
    sft_cfg = SFTStageConfig.from_dict(
        {
            "method": "head",
            "model": {"name_or_path": "tiny", "tiny_hidden_size": 64},
            "data": {"files": [str(sft_file)], **common},
            "head": head,
            "train": {"output_dir": str(folder / "sft")},
            "balance_actions": True,
        }
    )
    sft = train_sft(sft_cfg, LINEAGE)
    dpo_cfg = DPOStageConfig.from_dict(
        {
            "method": "head",
            "model": {"name_or_path": ""},
            "sft_checkpoint": sft.checkpoint_dir,
            "data": {"files": [str(dpo_file)], **common},
            "head": head,
            "train": {"output_dir": str(folder / "dpo")},
        }
    )
    dpo = train_dpo(dpo_cfg, LINEAGE)
    return sft_cfg, sft, dpo, sft_file


def test_sft_head_changes_only_the_action_rows(head_runs):
    from training.checkpoint import load_checkpoint
    from training.models import load_model

    cfg, sft, _, _ = head_runs
    base, tokenizer = load_model(cfg.model, seed=cfg.train.seed)
    trained, _, config = load_checkpoint(sft.checkpoint_dir)
    assert config["method"] == "head" and not trained.config.tie_word_embeddings
    rows = decision_head.action_rows(tokenizer, "")
    head_before = base.get_output_embeddings().weight
    head_after = trained.get_output_embeddings().weight
    changed = (head_before != head_after).any(dim=1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(rows)
    # The input embeddings (tied to the head in the base) and every layer stay as they were.
    assert torch.equal(base.get_input_embeddings().weight, trained.get_input_embeddings().weight)
    base_params = dict(base.model.layers.named_parameters())
    for name, param in trained.model.layers.named_parameters():
        assert torch.equal(param, base_params[name]), name


def test_sft_head_beats_its_start_and_the_scorer_agrees(head_runs):
    from training.checkpoint import load_checkpoint

    _, sft, _, sft_file = head_runs
    m = sft.metrics
    assert m["eval_accuracy"] >= 0.9 and m["eval_accuracy"] > m["eval_start_accuracy"] + 0.3
    assert m["eval_logp_target"] > m["eval_start_logp_target"] + 0.3
    # The saved checkpoint, through the project's likelihood scorer, gives the same figures.
    test = pd.read_parquet(sft_file).query("split == 'test'")
    targets = [c.split(" ", 1)[0] for c in test.completion]
    model, tokenizer, _ = load_checkpoint(sft.checkpoint_dir)
    scores = scoring.score_choices(model, tokenizer, list(test.prompt), targets, system="")
    assert scores["correct"].mean() == pytest.approx(m["eval_accuracy"], abs=1e-6)
    assert scores["logp_target"].mean() == pytest.approx(m["eval_logp_target"], abs=1e-3)


def test_dpo_head_reads_the_backbone_states_sft_saved(head_runs):
    """DPO starts from the SFT checkpoint, whose backbone is SFT's: the states SFT saved for
    the shared prompts are read, not computed; and they equal a fresh forward pass."""
    from training.checkpoint import load_checkpoint

    cfg, _, dpo, sft_file = head_runs
    cache = scoring.BackboneStates(cfg.head.feature_cache)
    model, tokenizer, _ = load_checkpoint(dpo.checkpoint_dir)
    prompts = list(pd.read_parquet(sft_file).query("split == 'test'").prompt[:8])
    rows = decision_head.action_rows(tokenizer, "")
    cached = decision_head.decision_features(
        model, tokenizer, prompts, rows, system="", cache=cache
    )
    assert cache.hits == len(prompts) and cache.misses == 0
    fresh = decision_head.decision_features(model, tokenizer, prompts, rows, system="")
    torch.testing.assert_close(cached.hidden, fresh.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.background, fresh.background, atol=1e-4, rtol=1e-5)


def test_dpo_head_starts_from_sft_and_wins_held_out_pairs(head_runs):
    _, sft, dpo, _ = head_runs
    assert dpo.lineage["base_model"] == sft.checkpoint_dir
    assert dpo.metrics["eval_start_reward_accuracy"] == 0.0
    assert dpo.metrics["eval_reward_accuracy"] >= 0.9
    assert Path(dpo.checkpoint_dir, "model.safetensors").is_file()


def test_bfloat16_forward_gives_nearly_the_float32_features():
    from training.config import ModelConfig
    from training.models import load_model

    model, tokenizer = load_model(ModelConfig(name_or_path="tiny", tiny_hidden_size=64))
    decision_head.untie_output_embeddings(model)
    rows = decision_head.action_rows(tokenizer, "")
    prompts = list(synthetic.sft_frame(12).prompt)
    exact = decision_head.decision_features(model, tokenizer, prompts, rows, system="")
    fast = decision_head.decision_features(
        model, tokenizer, prompts, rows, system="", forward_dtype="bfloat16"
    )
    assert next(model.parameters()).dtype == torch.float32  # the model itself is not converted
    relative = (fast.hidden - exact.hidden).norm(dim=1) / exact.hidden.norm(dim=1)
    assert float(relative.max()) < 0.05
    assert torch.allclose(fast.background, exact.background, atol=0.1)


def test_auto_forward_dtype_uses_bfloat16_only_where_it_is_native():
    from training.config import ModelConfig
    from training.models import load_model

    model, _ = load_model(ModelConfig(name_or_path="tiny", tiny_hidden_size=64))
    picked = decision_head.in_dtype(model, "auto")
    native = decision_head.native_bf16(torch.device("cpu"))
    assert next(picked.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
    assert (picked is model) == (not native)  # no copy when float32 is kept
    assert next(decision_head.in_dtype(model, "bfloat16").parameters()).dtype == torch.bfloat16
