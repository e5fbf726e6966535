"""The likelihood scorer (training.scoring) and the gate on real tiny models.

The models are untrained 'tiny' Llamas (random weights, real SmolLM2 tokenizer and chat
template); a model is made to prefer an action by construction: a bias on its LM head's logit
of that action's first token. So the expected ranking of any two models is known in advance.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from training import scoring
from training.baselines import baselines_table
from training.config import ModelConfig
from training.data import prompt_ids
from training.decision_line import ACTIONS
from training.models import load_model
from training.promotion import gate_decision

PROMPTS = [
    f"Symbol: {s}\n- 5-bar log return: {r:+.2f}%\nDecide."
    for s, r in zip("ABCDEFGHIJKL", range(12), strict=True)
]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model(ModelConfig(name_or_path="tiny"), seed=1)
    return model, tokenizer


def preferring(model: torch.nn.Module, token_id: int, bias: float) -> torch.nn.Module:
    """A copy of ``model`` whose LM head adds ``bias`` to the logit of ``token_id``."""
    import copy

    biased = copy.deepcopy(model)
    head = biased.lm_head
    with_bias = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        with_bias.weight.copy_(head.weight)
        with_bias.bias.zero_()
        with_bias.bias[token_id] = bias
    biased.lm_head = with_bias
    return biased


def test_action_tokens_are_the_first_tokens_of_the_assistant_turn(tiny) -> None:
    _, tokenizer = tiny
    tokens = scoring.action_token_ids(tokenizer, system="")
    assert set(tokens) == set(ACTIONS)
    for action, ids in tokens.items():
        assert tokenizer.decode(ids).strip() == action  # SmolLM2: one token each


def test_scorer_matches_an_unbatched_forward_pass(tiny) -> None:
    model, tokenizer = tiny
    tokens = scoring.action_token_ids(tokenizer, system="")
    batched = scoring.action_logprobs(model, tokenizer, PROMPTS[:5], system="", batch_size=2)
    for row, prompt in zip(batched, PROMPTS[:5], strict=True):
        ids = torch.tensor([prompt_ids(tokenizer, prompt, "")])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
        expected = [logp[tokens[a][0]].item() for a in ACTIONS]
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-4)


def test_multi_token_actions_sum_their_tokens(tiny, monkeypatch) -> None:
    """An action spelled by two tokens ('hold' ':') scores log p(hold) + log p(':' | hold)."""
    model, tokenizer = tiny
    single = scoring.action_token_ids(tokenizer, system="")
    colon = tokenizer(":", add_special_tokens=False)["input_ids"][0]
    spelled = {**single, "hold": [single["hold"][0], colon]}
    monkeypatch.setattr(scoring, "action_token_ids", lambda tokenizer, system=None: spelled)
    got = scoring.action_logprobs(model, tokenizer, PROMPTS[:3], system="", batch_size=2)
    for row, prompt in zip(got, PROMPTS[:3], strict=True):
        ids = [*prompt_ids(tokenizer, prompt, ""), single["hold"][0]]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        hold = logp[-2, single["hold"][0]].item() + logp[-1, colon].item()
        buy = logp[-2, single["buy"][0]].item()
        assert row[ACTIONS.index("hold")] == pytest.approx(hold, abs=1e-4)
        assert row[ACTIONS.index("buy")] == pytest.approx(buy, abs=1e-4)


def test_a_model_made_to_prefer_an_action_scores_it_highest(tiny) -> None:
    model, tokenizer = tiny
    sell = scoring.action_token_ids(tokenizer, system="")["sell"][0]
    targets = ["sell"] * len(PROMPTS)
    base = scoring.score_choices(model, tokenizer, PROMPTS, targets, system="")
    biased = scoring.score_choices(
        preferring(model, sell, 6.0), tokenizer, PROMPTS, targets, system=""
    )
    probs = biased[["p_buy", "p_sell", "p_hold"]].to_numpy()
    assert (probs.argmax(axis=1) == ACTIONS.index("sell")).all()
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert biased["correct"].mean() == 1.0
    assert (biased["logp_target"] > base["logp_target"] + 1.0).all()
    assert biased["brier"].mean() < base["brier"].mean()
    assert (biased["action_mass"] > base["action_mass"]).all()


def test_gate_promotes_the_better_model_and_keeps_the_champion_otherwise(tiny) -> None:
    """The same items scored by models that differ by construction: the challenger prefers the
    target action (sell) over the base; the gate's continuous score must tell them apart both
    ways, and keep the champion when the two are the same model."""
    model, tokenizer = tiny
    sell = scoring.action_token_ids(tokenizer, system="")["sell"][0]
    better = preferring(model, sell, 1.0)  # a mild, real improvement on every item
    targets = ["sell"] * len(PROMPTS)

    def items(m: torch.nn.Module) -> pd.DataFrame:
        scores = scoring.score_choices(m, tokenizer, PROMPTS, targets, system="")
        return scores.assign(item_id=[f"dp{i:03d}" for i in range(len(PROMPTS))])

    base_items, better_items = items(model), items(better)
    promoted = gate_decision(better_items, base_items)
    assert promoted.promote, promoted.reason
    assert promoted.statistics["ci_low"] > 0
    kept = gate_decision(base_items, better_items)
    assert not kept.promote and kept.statistics["ci_high"] < 0, kept.reason
    same = gate_decision(items(model), base_items)
    assert not same.promote and same.statistics["mean_diff"] == pytest.approx(0.0, abs=1e-9)


def test_baselines_table_with_the_scorer(tiny) -> None:
    """The evaluated model (made to prefer sell) above the untrained base and train-majority,
    with a paired bootstrap lower bound above 0."""
    model, tokenizer = tiny
    sell = scoring.action_token_ids(tokenizer, system="")["sell"][0]
    items = pd.DataFrame({"prompt": PROMPTS, "target": ["sell"] * 11 + ["buy"]})
    train = pd.DataFrame({"prompt": PROMPTS, "target": ["buy"] * 7 + ["sell"] * 5})
    models = {
        "model": scoring.action_probabilities(
            preferring(model, sell, 3.0), tokenizer, PROMPTS, system=""
        ),
        "base": scoring.action_probabilities(model, tokenizer, PROMPTS, system=""),
    }
    table = baselines_table(items, train=train, models=models, probe=False).set_index("name")
    for other in ("base", "train-majority", "random"):
        assert table.loc[other, "delta_ci_low"] > 0, (other, table.loc[other])
    assert table.loc["model", "accuracy"] == pytest.approx(11 / 12)
    assert math.isnan(table.loc["model", "delta_logp"])


def test_generation_budget_fits_the_longest_completion(tiny) -> None:
    model, tokenizer = tiny
    completions = ["hold: no trade", "buy 0.2500 of capital\n" + "step " * 30]
    budget = scoring.generation_budget(tokenizer, completions, slack=0)
    longest = len(tokenizer(completions[1], add_special_tokens=False)["input_ids"])
    assert budget == longest + 1
    scores = scoring.decision_scores(
        model, tokenizer, PROMPTS[:4], ["sell 0.5000 of capital\nx"] * 4, system=""
    )
    assert scores["decision_max_new_tokens"] == scoring.generation_budget(
        tokenizer, ["sell 0.5000 of capital\nx"]
    )
    assert 0.0 <= scores["decision_well_formed"] <= 1.0
    assert scores["decision_logp_target"] < 0


def test_models_sharing_a_backbone_run_it_once(tiny) -> None:
    """A model that differs only in its LM head (as head-mode checkpoints do) reuses the cached
    backbone states and scores exactly as without the cache; other backbone weights miss."""
    import copy

    model, tokenizer = tiny
    sell = scoring.action_token_ids(tokenizer, system="")["sell"][0]
    cache = scoring.BackboneStates()
    plain = scoring.action_logprobs(model, tokenizer, PROMPTS, system="", cache=cache)
    assert (cache.hits, cache.misses) == (0, len(PROMPTS))
    biased = preferring(model, sell, 6.0)
    cached = scoring.action_logprobs(biased, tokenizer, PROMPTS, system="", cache=cache)
    assert (cache.hits, cache.misses) == (len(PROMPTS), len(PROMPTS))
    np.testing.assert_allclose(
        cached, scoring.action_logprobs(biased, tokenizer, PROMPTS, system=""), atol=1e-5
    )
    assert (cached[:, ACTIONS.index("sell")] > plain[:, ACTIONS.index("sell")]).all()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(2.0)
    again = scoring.action_logprobs(other, tokenizer, PROMPTS[:3], system="", cache=cache)
    assert cache.misses == len(PROMPTS) + 3
    assert not np.allclose(again, plain[:3])


def test_backbone_states_persist_and_merge_across_processes(tiny, tmp_path) -> None:
    """With a folder the states survive the cache object (a later stage or retrain, another
    process): a new cache on the same folder scores without running the backbone, exactly as
    before; two caches saving different prompts both keep theirs (merged on save)."""
    model, tokenizer = tiny
    first = scoring.BackboneStates(tmp_path)
    scored = scoring.action_logprobs(model, tokenizer, PROMPTS[:3], system="", cache=first)
    other = scoring.BackboneStates(tmp_path)  # opened before the first one saved
    scoring.action_logprobs(model, tokenizer, PROMPTS[3:], system="", cache=other)
    assert first.save() == 3 and other.save() == len(PROMPTS) - 3
    assert first.save() == 0  # nothing new since
    assert len(list(tmp_path.glob("*.pt"))) == 1  # one file per backbone

    later = scoring.BackboneStates(tmp_path)
    again = scoring.action_logprobs(model, tokenizer, PROMPTS, system="", cache=later)
    assert (later.hits, later.misses) == (len(PROMPTS), 0)
    np.testing.assert_allclose(again[:3], scored, atol=1e-6)
    np.testing.assert_allclose(
        again, scoring.action_logprobs(model, tokenizer, PROMPTS, system=""), atol=1e-5
    )
