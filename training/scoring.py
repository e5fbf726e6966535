"""Scoring with a model: what the evaluation, the trainers and the gate ask a checkpoint.

    action_probabilities  the likelihood scorer: one forward pass per item, p(buy / sell / hold)
                          as the first tokens of the assistant turn, renormalised over the three
                          (as multiple-choice evaluations score answer options)
    score_choices         that, per item, against a target: log p(target), Brier, accuracy
    generate              greedy completions, for the format metric only
                          (``training.metrics.decision_metrics``), with a token budget from the
                          data (:func:`generation_budget`)
    completion_logprobs   summed (or per-token mean) log p(completion | prompt), chat-formatted
    preference_accuracy   share of pairs where the chosen completion scores higher

Everything runs batched under ``torch.no_grad`` on the model's own device; no Trainer needed, so
a registry or gate can call these on any loaded checkpoint.

The likelihood scorer
---------------------
Completions are decision-first (``training.decision_line``), so the action is what the model
says first. For each action the scorer renders its decision line as the assistant turn of a
chat and takes the fewest tokens after the generation prompt that spell the action word: those
are exactly the tokens an SFT model is trained to put there, whatever the tokenizer does at the
start of the assistant turn (SmolLM2: one token each, ``buy`` / ``sell`` / ``hold``). log p(action)
is the sum of those tokens' log-probabilities given the prompt; the three are renormalised by a
softmax over them. When every action is one token, one forward pass of the prompt gives all
three (the logits of the last position); otherwise each distinct multi-token prefix adds a row
(prompt + prefix) to the same batched pass. Only the last positions go through the LM head, so
memory does not grow with vocabulary x prompt length.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from training.data import messages, prompt_ids, prompt_text
from training.decision_line import ACTIONS, parse_decision, render_decision
from training.metrics import choice_scores, choice_summary


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def autocast_for(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that has it (as in training), nothing on CPU."""
    device = next(model.parameters()).device
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 8,
) -> list[str]:
    """Greedy completions of chat-formatted prompts (batched, left-padded)."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of each row
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for chunk in _batches(list(prompts), batch_size):
            texts = [prompt_text(tokenizer, p, system) for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(device)
            with autocast_for(model):
                ids = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


@torch.no_grad()
def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    system: str | None = None,
    batch_size: int = 8,
    per_token: bool = False,
) -> list[float]:
    """Sum of log p(completion token | prefix) over the completion's tokens, chat-formatted;
    ``per_token``: their mean instead (length-normalised, so a longer completion is not
    penalised for its length).

    The completion tokens are those after the templated prompt, up to and including the
    template's end-of-turn, which is what DPO scores too.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        head = prompt_ids(tokenizer, prompt, system)
        text = tokenizer.apply_chat_template(messages(prompt, completion, system), tokenize=False)
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        start = _common_prefix(head, full)
        rows.append((full, start))
    out: list[float] = []
    try:
        for chunk in _batches(rows, batch_size):
            ids, mask = padded([row for row, _ in chunk], tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            with autocast_for(model):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            token_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            for i, (row, start) in enumerate(chunk):
                # Position t predicts token t+1: completion tokens start..len-1.
                picked = token_logp[i, start - 1 : len(row) - 1]
                out.append((picked.mean() if per_token else picked.sum()).item())
    finally:
        model.train(was_training)
    return out


def preference_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    **kwargs: Any,
) -> dict[str, float]:
    """Share of pairs the model prefers as labelled, and the mean log-prob gap."""
    if not prompts:
        return {"preference_accuracy": float("nan"), "logp_margin": float("nan")}
    good = completion_logprobs(model, tokenizer, prompts, chosen, **kwargs)
    bad = completion_logprobs(model, tokenizer, prompts, rejected, **kwargs)
    gaps = [g - b for g, b in zip(good, bad, strict=True)]
    return {
        "preference_accuracy": sum(g > 0 for g in gaps) / len(gaps),
        "logp_margin": sum(gaps) / len(gaps),
    }


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return max(n, 1)


# ----------------------------------------------------------------------- the likelihood scorer


def action_token_ids(tokenizer: Any, system: str | None = None) -> dict[str, list[int]]:
    """The tokens that spell each action word at the start of the assistant turn.

    Each action's decision line (``render_decision``) is rendered as the assistant turn of a
    chat; the tokens after the generation prompt are read until their text covers the action
    word. Raises ValueError when the template renders the prompt differently with an answer
    than without, or when one action's tokens are a prefix of another's (their probabilities
    would overlap).
    """
    probe = "x"
    head = prompt_ids(tokenizer, probe, system)
    out: dict[str, list[int]] = {}
    for action in ACTIONS:
        line = render_decision(action, 0.25)
        text = tokenizer.apply_chat_template(messages(probe, line, system), tokenize=False)
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        if full[: len(head)] != head:
            raise ValueError("the chat template renders the prompt differently with an answer")
        rest = full[len(head) :]
        for k in range(1, len(rest) + 1):
            spelled = tokenizer.decode(rest[:k]).lstrip()
            if spelled.startswith(action):
                out[action] = rest[:k]
                break
        else:
            raise ValueError(f"no tokens spell {action!r} at the start of the assistant turn")
    for a in ACTIONS:
        for b in ACTIONS:
            if a != b and out[b][: len(out[a])] == out[a]:
                raise ValueError(f"the tokens of {a!r} are a prefix of those of {b!r}")
    return out


def padded(
    rows: Sequence[Sequence[int]], pad_id: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of token rows padded to the longest, on the right (each row
    starts at column 0) or on the left (each row ends at the last column)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row))
        mask[i, span] = 1
    return ids, mask


def left_padded(
    rows: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, position ids) of token rows padded on the left, so that
    every row ends at the last column; positions count from each row's first real token."""
    ids, mask = padded(rows, pad_id, left=True)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


class BackboneStates:
    """The decoder's final hidden states at the positions the scorer reads, per model backbone
    and input row, so that models that share a backbone run it once.

    Head-mode checkpoints (``training.decision_head``) differ from each other and from their
    truncated base only in a few LM-head rows: an evaluation that scores the challenger, its SFT
    reference and the base on the same prompts needs one backbone pass, not three. Keyed by a
    SHA-256 of every backbone weight (exact: any other weight, or the same weights in another
    dtype, is another key), then the input row. Only the scorer's last ``keep`` positions are
    held (a few KiB per prompt).

    With a ``folder`` the states also persist, one file per backbone (``<digest>.pt``): the SFT
    and DPO stages and the evaluation of a run, and every later retrain on the same backbone,
    run the frozen backbone only over prompts it has not seen. The backbone pass is nearly all
    of head-mode training's cost (0.1 to 0.5 s per prompt on 2 CPU cores). :meth:`save` writes
    what is new, merged with what another process saved meanwhile, atomically."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self._states: dict[tuple[str, str], torch.Tensor] = {}
        self._digests: dict[int, tuple[tuple[int, ...], str]] = {}
        self._loaded: set[str] = set()
        self._new: dict[str, set[str]] = {}
        self.hits = 0
        self.misses = 0

    def digest(self, model: torch.nn.Module) -> str:
        backbone = model.get_decoder()
        # Recomputed when a weight changed since (data_ptr and version of every tensor).
        stamp = tuple(
            v for p in backbone.parameters() for v in (p.data_ptr(), p._version, p.numel())
        )
        known = self._digests.get(id(backbone))
        if known is not None and known[0] == stamp:
            return known[1]
        sha = hashlib.sha256()
        for name, tensor in backbone.state_dict().items():
            sha.update(name.encode())
            sha.update(str(tensor.dtype).encode())
            sha.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        self._digests[id(backbone)] = (stamp, sha.hexdigest())
        return self._digests[id(backbone)][1]

    @staticmethod
    def row_key(row: Sequence[int], keep: int) -> str:
        return hashlib.sha256(np.asarray([keep, *row], dtype=np.int64).tobytes()).hexdigest()

    def _file(self, digest: str) -> Path | None:
        return self.folder / f"{digest}.pt" if self.folder is not None else None

    def _read(self, digest: str) -> dict[str, torch.Tensor]:
        path = self._file(digest)
        if path is None or not path.exists():
            return {}
        return torch.load(path, map_location="cpu", weights_only=True)

    def _load(self, digest: str) -> None:
        if digest in self._loaded:
            return
        self._loaded.add(digest)
        for key, states in self._read(digest).items():
            self._states.setdefault((digest, key), states)

    def get(self, digest: str, row: Sequence[int], keep: int) -> torch.Tensor | None:
        self._load(digest)
        found = self._states.get((digest, self.row_key(row, keep)))
        self.hits += found is not None
        return found

    def put(self, digest: str, row: Sequence[int], keep: int, states: torch.Tensor) -> None:
        self.misses += 1
        key = self.row_key(row, keep)
        # A copy: a view would keep (and pickle) the whole batch's storage.
        self._states[(digest, key)] = states.detach().to("cpu", copy=True).contiguous()
        if self.folder is not None:
            self._new.setdefault(digest, set()).add(key)

    def save(self) -> int:
        """Write the states computed since the last save (no-op without a folder); returns how
        many were written."""
        if self.folder is None:
            return 0
        written = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        for digest, keys in self._new.items():
            merged = self._read(digest)
            merged.update({key: self._states[(digest, key)] for key in keys})
            path = self._file(digest)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(merged, tmp)
            os.replace(tmp, path)
            written += len(keys)
        self._new.clear()
        return written


def final_states(
    model: Any,
    rows: list[list[int]],
    keep: int,
    pad_token_id: int,
    cache: BackboneStates | None,
) -> torch.Tensor:
    """The decoder's final hidden states (after its norm) at the last ``keep`` positions of each
    row: (rows, keep, d), from ``cache`` where it has them."""
    digest = cache.digest(model) if cache is not None else ""
    found = [cache.get(digest, row, keep) if cache is not None else None for row in rows]
    missing = [i for i, states in enumerate(found) if states is None]
    device = next(model.parameters()).device
    if missing:
        # Left padding: every row ends at the last column, so the last `keep` positions are the
        # ones that predict the action tokens.
        ids, mask, positions = left_padded([rows[i] for i in missing], pad_token_id)
        with autocast_for(model):
            hidden = model.get_decoder()(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
            ).last_hidden_state[:, -keep:]
        for j, i in enumerate(missing):
            found[i] = hidden[j]
            if cache is not None:
                cache.put(digest, rows[i], keep, hidden[j])
    return torch.stack([states.to(device) for states in found])


@torch.no_grad()
def action_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    batch_size: int = 8,
    cache: BackboneStates | None = None,
) -> np.ndarray:
    """log p(action word as the first tokens of the assistant turn | prompt), unnormalised:
    shape (n prompts, 3), columns in ``ACTIONS`` order (module docstring). ``cache``: reuse the
    backbone's states of a model scored before with the same backbone weights."""
    tokens = action_token_ids(tokenizer, system)
    prefixes = sorted({tuple(t[:-1]) for t in tokens.values()})
    keep = max(len(t) for t in tokens.values())  # last positions that predict action tokens
    heads = [prompt_ids(tokenizer, p, system) for p in prompts]
    was_training = model.training
    model.eval()
    head = model.get_output_embeddings()
    out = np.empty((len(heads), len(ACTIONS)))
    try:
        for start in range(0, len(heads), batch_size):
            chunk = heads[start : start + batch_size]
            rows = [head_ids + list(prefix) for head_ids in chunk for prefix in prefixes]
            states = final_states(model, rows, keep, tokenizer.pad_token_id, cache)
            with autocast_for(model):
                logits = head(states.to(head.weight.device)).float()
            logp = torch.log_softmax(logits, dim=-1).cpu()
            for i in range(len(chunk)):
                for j, action in enumerate(ACTIONS):
                    seq = tokens[action]
                    row = i * len(prefixes) + prefixes.index(tuple(seq[:-1]))
                    # The row ends with seq[:-1]; the position predicting seq[k] is the one
                    # len(seq) - 1 - k places before the end.
                    total = sum(
                        logp[row, keep - len(seq) + k, token].item() for k, token in enumerate(seq)
                    )
                    out[start + i, j] = total
    finally:
        model.train(was_training)
    return out


def action_probabilities(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    batch_size: int = 8,
    cache: BackboneStates | None = None,
) -> pd.DataFrame:
    """The likelihood scorer: p(buy), p(sell), p(hold) per prompt (renormalised over the three),
    and ``action_mass``, the probability the model puts on the three action words before
    renormalising (how much of its first-token mass is a valid decision)."""
    logp = action_logprobs(
        model, tokenizer, prompts, system=system, batch_size=batch_size, cache=cache
    )
    mass = np.exp(logp).sum(axis=1) if len(logp) else np.empty(0)
    shifted = np.exp(logp - logp.max(axis=1, keepdims=True)) if len(logp) else logp
    probs = shifted / shifted.sum(axis=1, keepdims=True) if len(logp) else logp
    frame = pd.DataFrame(probs.reshape(-1, len(ACTIONS)), columns=[f"p_{a}" for a in ACTIONS])
    frame["action_mass"] = mass
    return frame


def score_choices(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str | None],
    *,
    system: str | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Per prompt: p(action) (:func:`action_probabilities`) and, against its target, log
    p(target), Brier and argmax accuracy (``training.metrics.choice_scores``)."""
    probs = action_probabilities(model, tokenizer, prompts, system=system, batch_size=batch_size)
    scores = choice_scores(probs, targets)
    scores["action_mass"] = probs["action_mass"].to_numpy()
    return scores


def generation_budget(tokenizer: Any, completions: Sequence[str], slack: int = 8) -> int:
    """max_new_tokens that fits the longest completion of the data: its token count, plus one
    for the end-of-turn token and ``slack`` more, so a perfect imitator is never cut off."""
    lengths = [
        len(tokenizer(c, add_special_tokens=False)["input_ids"])
        for c in completions
        if isinstance(c, str)
    ]
    return max(lengths, default=0) + 1 + slack


def decision_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    system: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> dict[str, float]:
    """What a trainer reports after training on held-out (prompt, reference completion) rows.

    decision_accuracy, decision_logp_target, decision_brier: the likelihood scorer against the
    reference's decision (rows whose reference has no decision line are not scored);
    decision_well_formed: share of greedy completions that open with a decision line, with
    ``max_new_tokens`` (None: :func:`generation_budget` of the references).
    """
    if not prompts:
        return {"decision_accuracy": math.nan, "decision_well_formed": math.nan}
    targets = [getattr(parse_decision(r), "action", None) for r in references]
    summary = choice_summary(
        score_choices(model, tokenizer, prompts, targets, system=system, batch_size=batch_size)
    )
    budget = max_new_tokens or generation_budget(tokenizer, references)
    generated = generate(
        model, tokenizer, prompts, system=system, max_new_tokens=budget, batch_size=batch_size
    )
    well_formed = [parse_decision(g) is not None for g in generated]
    return {
        "decision_accuracy": summary["accuracy"],
        "decision_logp_target": summary["logp_target"],
        "decision_brier": summary["brier"],
        "decision_well_formed": sum(well_formed) / len(well_formed),
        "decision_max_new_tokens": float(budget),
    }
