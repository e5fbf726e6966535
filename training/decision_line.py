"""The decision line: the one place that renders and parses a decision.

Completions are decision-first (the episode contract): the assistant turn opens with the
decision line, then optionally the reasoning, one step per line::

    buy 0.2500 of capital                  (or "sell 0.5000 of capital", "hold: no trade")
    20-bar momentum is +1.20 sigma, above the +1.00 sigma entry band: the trend is up.

The decision line is rendered by ``dbt_project/macros/reasoning.sql`` (``decision_step``) and
its Python oracle ``assets/policies.py``; :func:`render_decision` gives the same characters.
Every reader of a generated or stored decision goes through :func:`parse_decision`: the
generation format metric, the likelihood scorer (which reads the action word's tokens off a
rendered line) and the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ACTIONS: tuple[str, ...] = ("buy", "sell", "hold")

# "buy 0.5000 of capital" / "sell .25 of capital" / "hold: no trade" (case-insensitive, the
# line stripped). The size is a plain decimal; a size outside [0, 1] is not a decision.
_TRADE = re.compile(r"(buy|sell)\s+(\d+(?:\.\d*)?|\.\d+)\s+of\s+capital", re.IGNORECASE)
_HOLD = re.compile(r"hold\s*:\s*no\s+trade", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedDecision:
    """The decision of a completion.

    action: ``buy`` / ``sell`` / ``hold``.
    size: fraction of capital in [0, 1]; 0.0 for hold.
    n_steps: non-empty lines after the decision line (the reasoning).
    """

    action: str
    size: float
    n_steps: int


def render_decision(action: str, size: float = 0.0) -> str:
    """The decision line as the marts render it: ``buy 0.2500 of capital``, ``hold: no trade``."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r}: expected one of {ACTIONS}")
    return "hold: no trade" if action == "hold" else f"{action} {size:.4f} of capital"


def parse_decision_line(line: str) -> tuple[str, float] | None:
    """(action, size) of one line that is, in full, a decision line; None otherwise."""
    line = line.strip()
    if _HOLD.fullmatch(line):
        return "hold", 0.0
    match = _TRADE.fullmatch(line)
    if match is None:
        return None
    size = float(match.group(2))
    if not 0.0 <= size <= 1.0:
        return None
    return match.group(1).lower(), size


def parse_decision(text: str | None) -> ParsedDecision | None:
    """The decision of a decision-first completion, or None when it has none.

    The first non-empty line (stripped) must match, in full, ``buy <size> of capital``,
    ``sell <size> of capital`` or ``hold: no trade`` (case-insensitive) with ``0 <= size <= 1``;
    the lines after it are reasoning and are only counted. Anything else (no text, an
    out-of-range size, extra words, reasoning before the decision) gives None: a completion
    that does not open with its decision is not well-formed.
    """
    if not isinstance(text, str):
        return None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None
    parsed = parse_decision_line(lines[0])
    if parsed is None:
        return None
    return ParsedDecision(parsed[0], parsed[1], len(lines) - 1)
