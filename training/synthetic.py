"""Small synthetic datasets in the shape of the ds_sft / ds_dpo / ds_prm marts.

Each has a signal a tiny model can learn in a few dozen steps, so a test (or the GPU smoke run)
can tell "training works" from "training runs":

    sft  the prompt says the signal is up or down; the completion opens with the decision
         ('buy ...' or 'sell ...', decision-first as the marts' completions) and restates it
    dpo  the prompt says risk is high or low; chosen holds when risk is high and buys when it is
         low, rejected does the opposite (decision-first too)
    prm  reasoning traces of 3-5 steps; a perturbed trace has one faulty step that contains the
         marker 'MISREAD' and is labelled false (faulty_step_index counts from 1, as in the marts)

Splits are assigned round-robin (70% train, 15% validation, 15% test).
"""

from __future__ import annotations

import hashlib
import random

import pandas as pd

MARKER = "MISREAD"
SYMBOLS = ("AAPL", "MSFT", "IBM", "GOOG")


def _split(i: int) -> str:
    return "train" if i % 20 < 14 else "validation" if i % 20 < 17 else "test"


def _hash(*parts: object) -> str:
    return hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()


def _context(rng: random.Random, i: int) -> tuple[str, str]:
    symbol = rng.choice(SYMBOLS)
    ts = pd.Timestamp("2024-01-02", tz="UTC") + pd.Timedelta(days=i)
    return symbol, ts.isoformat()


def _filler(rng: random.Random, lines: int) -> str:
    """Feature lines that carry no signal: realistic prompt length for throughput runs."""
    names = ("ret_1", "ret_5", "ret_20", "vol_20", "trend_gap_50", "volume_z")
    return "".join(f"\n{rng.choice(names)}={rng.uniform(-1, 1):.6f}" for _ in range(lines))


def _prompt(rng: random.Random, symbol: str, ts: str, says: str, context_lines: int) -> str:
    """'<symbol> <day>: <says>.', then ``context_lines`` filler lines."""
    return f"{symbol} {ts[:10]}: {says}.{_filler(rng, context_lines)}"


def _coin(rng: random.Random, heads: str, tails: str) -> tuple[bool, str]:
    """A fair coin: whether it came up heads, and the word for the side it came up."""
    flip = rng.random() < 0.5
    return flip, heads if flip else tails


def sft_frame(n: int = 200, seed: int = 0, context_lines: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        symbol, ts = _context(rng, i)
        up, signal = _coin(rng, "up", "down")
        prompt = _prompt(rng, symbol, ts, f"signal {signal}", context_lines)
        completion = f"{'buy' if up else 'sell'} 0.5000 of capital\nSignal {signal}."
        rows.append(
            {
                "prompt": prompt,
                "completion": completion,
                "split": _split(i),
                "episode_id": _hash("sft", seed, i),
                "decision_ts": pd.Timestamp(ts),
                "symbol": symbol,
                "policy_id": "momentum_v1",
                "source_hashes": [_hash("src", seed, i)],
            }
        )
    return pd.DataFrame(rows)


def dpo_frame(n: int = 200, seed: int = 0, context_lines: int = 0) -> pd.DataFrame:
    rng = random.Random(seed + 1)
    rows = []
    for i in range(n):
        symbol, ts = _context(rng, i)
        high, risk = _coin(rng, "high", "low")
        prompt = _prompt(rng, symbol, ts, f"risk {risk}", context_lines)
        hold, buy = f"hold: no trade\nRisk {risk}.", f"buy 0.5000 of capital\nRisk {risk}."
        chosen, rejected = (hold, buy) if high else (buy, hold)
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "margin": rng.uniform(0.01, 0.2),
                "split": _split(i),
                "pair_id": _hash("dpo", seed, i),
                "chosen_action": "hold" if high else "buy",
                "rejected_action": "buy" if high else "hold",
            }
        )
    return pd.DataFrame(rows)


def prm_frame(n: int = 200, seed: int = 0, context_lines: int = 0) -> pd.DataFrame:
    """n traces: per episode its original trace and a perturbed copy (one faulty step)."""
    rng = random.Random(seed + 2)
    rows = []
    for e in range(max(1, n // 2)):
        symbol, ts = _context(rng, e)
        n_steps = rng.randint(3, 5)
        values = [rng.uniform(-2, 2) for _ in range(n_steps - 1)]
        original = [f"Reading {k + 1} is {v:+.2f}." for k, v in enumerate(values)]
        prompt = _prompt(rng, symbol, ts, "reason step by step", context_lines)
        original.append("hold: no trade")
        episode = _hash("prm", seed, e)
        for perturbed in (False, True):
            steps = list(original)
            faulty = rng.randrange(n_steps) if perturbed else None
            if faulty is not None:
                steps[faulty] = f"{steps[faulty]} {MARKER}"
            labels = [k != faulty for k in range(n_steps)]
            soft = [
                rng.uniform(0.0, 0.2) if k == faulty else rng.uniform(0.7, 1.0)
                for k in range(n_steps)
            ]
            rows.append(
                {
                    "prompt": prompt,
                    "completions": steps,
                    "labels": labels,
                    "soft_labels": soft,
                    "split": _split(e),  # a trace and its perturbed copy share a split
                    "trace_id": _hash("trace", episode, perturbed),
                    "episode_id": episode,
                    "is_perturbed": perturbed,
                    "perturbation": "misread_number" if perturbed else None,
                    "faulty_step_index": faulty + 1 if faulty is not None else None,
                }
            )
    frame = pd.DataFrame(rows)
    frame["faulty_step_index"] = frame["faulty_step_index"].astype("Int64")
    return frame
