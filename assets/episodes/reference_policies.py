"""Reference policies and their reasoning traces in plain Python: the oracle of ``int_decisions``.

No Dagster and no warehouse. The rules and the text are the same as the dbt model
``int_decisions`` (dbt_project/models/intermediate/int_decisions.sql); the parameters are the
rows of the seed ``dbt_project/seeds/reference_policies.csv`` (:func:`load_policies`), so a
threshold is data: a new parameter set is a new seed row with a new ``policy_version``. The
``rule`` column names the code that interprets the parameters (``momentum_v1`` ...); a rule
that changes needs a new rule name in both places.

A decision reads only the features of its decision point (the context known at decision_ts);
nothing here or in the model may look at later bars or outcomes (see :func:`hindsight_terms`).

Numbers
-------
Every number a step shows is formatted like C's printf (DuckDB's ``printf`` and Python's format
spec agree digit for digit): observation claims carry the feature at 6 decimals
(``ret_20=0.031000``), texts show returns and volatilities as percentages with 2 decimals
(``+3.10%``), signals with 2 decimals (``+2.58 sigma``). A derived signal is rounded to 4
decimals *as rendered* (:func:`as_rendered`: format, then parse back) before it is compared with
a threshold, so every comparison a claim states is true of the numbers it shows; sizes are
rounded the same way. ``vol_floor`` keeps signals finite when vol_20 is 0 (constant prices).

Rules
-----
s = the signal in sigmas, rounded to 4 decimals; k = entry_sigma; v = max(vol_20, vol_floor);
size = min(size_cap, size_per_sigma * |s|) rounded to 4 decimals for buy/sell, 0 for hold.

- ``momentum_v1``: s = ret_20 / (v * sqrt(20)) (the 20-bar return in 20-bar sigmas);
  buy if s > k, sell if s < -k, else hold.
- ``mean_reversion_v1``: z1 = ret_1 / v, z5 = ret_5 / (v * sqrt(5)); s = z1 if |z1| >= |z5|
  else z5; sell if s > k (stretched up), buy if s < -k (stretched down), else hold.
- ``breakout_v1``: s = trend_gap_50 / (v * sqrt(20)) (the close's distance from its 50-bar mean
  in 20-bar sigmas); confirmed when the bar's range in vols, range_pct / v (4 decimals), is above
  range_vols_min, or volume_z_20 (4 decimals; NULL = no) is above volume_z_min; buy if s > k and
  confirmed (upside breakout), sell if s < -k and confirmed (downside breakout), else hold.
- ``risk_off_v1``: sell size_cap (exit to flat) when the regime ends in ``_volatile`` or vol_20
  (6 decimals) is above vol_max; else hold. It never buys.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

SEED_PATH = Path(__file__).resolve().parents[2] / "dbt_project" / "seeds" / "reference_policies.csv"
ACTIONS = ("buy", "sell", "hold")
KINDS = ("observation", "inference", "decision")
PARAMETERS = (
    "entry_sigma",
    "size_per_sigma",
    "size_cap",
    "vol_floor",
    "volume_z_min",
    "range_vols_min",
    "vol_max",
)
# Words that would mean a decision saw its own future (checked in the compiled SQL).
HINDSIGHT_TERMS = ("fwd_", "outcome", "lead(", "matured")


@dataclass(frozen=True)
class Policy:
    policy_id: str
    policy_version: int
    rule: str
    description: str
    params: dict[str, float | None] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        value = self.params[name]
        if value is None:
            raise KeyError(f"{self.policy_id} v{self.policy_version} has no {name}")
        return value


@dataclass(frozen=True)
class Step:
    step_index: int
    kind: str
    text: str
    claim: str
    # The action this step commits the trace to under the policy's rule: None for observations
    # and for inferences that leave it open; a decision step implies its own action.
    implies: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "step_index": self.step_index,
            "kind": self.kind,
            "implies": self.implies,
            "text": self.text,
            "claim": self.claim,
        }


@dataclass(frozen=True)
class Decision:
    policy_id: str
    policy_version: int
    action: str
    size: float
    steps: tuple[Step, ...]


def load_policies(path: Path | str = SEED_PATH) -> list[Policy]:
    """The seed's rows; empty parameter cells are None."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        Policy(
            policy_id=row["policy_id"],
            policy_version=int(row["policy_version"]),
            rule=row["rule"],
            description=row["description"],
            params={name: float(row[name]) if row[name].strip() else None for name in PARAMETERS},
        )
        for row in rows
    ]


# ---------------------------------------------------------------- formatting (printf semantics)


def fixed(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def signed(value: float, decimals: int = 2) -> str:
    return f"{value:+.{decimals}f}"


def pct(value: float) -> str:
    """A signed return as a percentage: 0.031 -> '+3.10%'."""
    return f"{value * 100:+.2f}%"


def upct(value: float) -> str:
    """A non-negative level as a percentage: 0.012 -> '1.20%'."""
    return f"{value * 100:.2f}%"


def as_rendered(value: float, decimals: int) -> float:
    """The value a reader sees at ``decimals``: formatted, then parsed back."""
    return float(fixed(value, decimals))


def episode_id(
    symbol: str, bar_interval: str, decision_ts: Any, policy_id: str, policy_version: int
) -> str:
    """md5 of 'symbol|bar_interval|decision_ts|policy_id|policy_version', decision_ts as UTC
    ISO-8601 with microseconds. bar_interval is in the key because a 1d and a 1m series of one
    symbol can close at the same instant."""
    stamp = pd.Timestamp(decision_ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    key = f"{symbol}|{bar_interval}|{stamp}|{policy_id}|{policy_version}"
    return hashlib.md5(key.encode()).hexdigest()


# ---------------------------------------------------------------- steps shared by the rules


def _observe(index: int, name: str, value: float, text: str) -> Step:
    return Step(index, "observation", text, f"{name}={fixed(value, 6)}")


def _vol_step(index: int, vol_20: float) -> Step:
    return _observe(index, "vol_20", vol_20, f"20-bar volatility is {upct(vol_20)} per bar.")


def _band_claim(name: str, s: float, k: float) -> str:
    """'name=s>k', 'name=s<-k' or both bounds when s is inside the band [-k, k]."""
    if s > k:
        return f"{name}={fixed(s, 4)}>{fixed(k, 4)}"
    if s < -k:
        return f"{name}={fixed(s, 4)}<{fixed(-k, 4)}"
    return f"{name}={fixed(s, 4)}<={fixed(k, 4)};{name}={fixed(s, 4)}>={fixed(-k, 4)}"


def _band_side(s: float, k: float, above: Any, below: Any, inside: Any = "hold") -> Any:
    """``above`` when s > k, ``below`` when s < -k, else ``inside`` (a signal rule's action);
    the macro band_side of int_decisions."""
    return above if s > k else below if s < -k else inside


def _signal_size(policy: Policy, s: float, action: str) -> float:
    """0 for hold, else min(size_cap, size_per_sigma * |s|) as rendered at 4 decimals."""
    if action == "hold":
        return 0.0
    return as_rendered(min(policy["size_cap"], policy["size_per_sigma"] * abs(s)), 4)


def _band_inference(
    index: int, implies: str | None, says: str, wording: tuple, s: float, k: float
) -> Step:
    """The inference placing s against the +/-k band, as the macro band_inference of
    int_decisions: ``says``, then '<word> the +k sigma <band>: <conclusion>.' from the (word,
    conclusion) pairs above and below, or 'within the +/-k sigma <band>: <inside>.'.
    ``wording`` is (band, above, below, inside, claim name)."""
    band, above, below, inside, claim_name = wording
    bound = fixed(k, 2)
    text = says + _band_side(
        s,
        k,
        f"{above[0]} the +{bound} sigma {band}: {above[1]}.",
        f"{below[0]} the -{bound} sigma {band}: {below[1]}.",
        f"within the +/-{bound} sigma {band}: {inside}.",
    )
    return Step(index, "inference", text, _band_claim(claim_name, s, k), implies)


def _decision_step(index: int, action: str, size: float) -> Step:
    text = "hold: no trade" if action == "hold" else f"{action} {fixed(size, 4)} of capital"
    return Step(index, "decision", text, f"action={action};size={fixed(size, 4)}", action)


# ---------------------------------------------------------------- the rules

# How each signal rule words its band inference (the arguments of band_inference in
# int_decisions): (band, (word, conclusion) above it, (word, conclusion) below it, conclusion
# inside it, claim name).
MOMENTUM_BAND = (
    "entry band",
    ("above", "the trend is up"),
    ("below", "the trend is down"),
    "no clear trend",
    "momentum_sigma",
)
STRETCH_BAND = (
    "stretch band",
    ("beyond", "expect a pullback"),
    ("beyond", "expect a bounce"),
    "not stretched",
    "stretch_sigma",
)
BREAKOUT_BAND = (
    "band",
    ("above", "an upside breakout"),
    ("below", "a downside breakout"),
    "no breakout",
    "trend_sigma",
)


def _momentum_v1(f: Mapping[str, Any], p: Policy) -> tuple[str, float, list[Step]]:
    k = p["entry_sigma"]
    s = as_rendered(f["ret_20"] / (max(f["vol_20"], p["vol_floor"]) * math.sqrt(20)), 4)
    action = _band_side(s, k, "buy", "sell")
    steps = [
        _observe(1, "ret_20", f["ret_20"], f"20-bar log return is {pct(f['ret_20'])}."),
        _vol_step(2, f["vol_20"]),
        Step(
            3,
            "observation",
            f"Regime is {f['regime']}; the close is {pct(f['trend_gap_50'])} from its 50-bar mean.",
            f"regime={f['regime']};trend_gap_50={fixed(f['trend_gap_50'], 6)}",
        ),
        _band_inference(4, action, f"20-bar momentum is {signed(s)} sigma, ", MOMENTUM_BAND, s, k),
    ]
    return action, _signal_size(p, s, action), steps


def _mean_reversion_v1(f: Mapping[str, Any], p: Policy) -> tuple[str, float, list[Step]]:
    k = p["entry_sigma"]
    v = max(f["vol_20"], p["vol_floor"])
    z1 = as_rendered(f["ret_1"] / v, 4)
    z5 = as_rendered(f["ret_5"] / (v * math.sqrt(5)), 4)
    s, which = (z1, "1-bar") if abs(z1) >= abs(z5) else (z5, "5-bar")
    action = _band_side(s, k, "sell", "buy")
    steps = [
        _observe(1, "ret_1", f["ret_1"], f"Last bar's log return is {pct(f['ret_1'])}."),
        _observe(2, "ret_5", f["ret_5"], f"5-bar log return is {pct(f['ret_5'])}."),
        _vol_step(3, f["vol_20"]),
        Step(
            4,
            "inference",
            f"The 1-bar move is {signed(z1)} sigma and the 5-bar move {signed(z5)} sigma; "
            f"the {which} move is the larger.",
            f"move_1_sigma={fixed(z1, 4)};move_5_sigma={fixed(z5, 4)}",
        ),
        _band_inference(5, action, f"A {signed(s)} sigma move is ", STRETCH_BAND, s, k),
    ]
    return action, _signal_size(p, s, action), steps


def _breakout_v1(f: Mapping[str, Any], p: Policy) -> tuple[str, float, list[Step]]:
    k, range_min, volume_min = p["entry_sigma"], p["range_vols_min"], p["volume_z_min"]
    v = max(f["vol_20"], p["vol_floor"])
    s = as_rendered(f["trend_gap_50"] / (v * math.sqrt(20)), 4)
    range_vols = as_rendered(f["range_pct"] / v, 4)
    raw_z = f["volume_z_20"]
    volume_z = None if raw_z is None or pd.isna(raw_z) else as_rendered(raw_z, 4)
    range_ok = range_vols > range_min
    volume_ok = volume_z is not None and volume_z > volume_min
    confirmed = range_ok or volume_ok
    trend = _band_side(s, k, "buy", "sell")
    action = trend if confirmed else "hold"
    if volume_z is None:
        volume_step = Step(
            4,
            "observation",
            "Volume z-score is undefined: the previous 20 volumes were constant.",
            "volume_z_20=null",
        )
        volume_text, volume_claim = "volume z is undefined", "volume_z=null"
    else:
        volume_step = _observe(
            4,
            "volume_z_20",
            raw_z,
            f"Volume z-score against the previous 20 bars is {signed(raw_z)}.",
        )
        volume_text = f"volume z is {signed(volume_z)} against {fixed(volume_min, 2)} needed"
        op = ">" if volume_ok else "<="
        volume_claim = f"volume_z={fixed(volume_z, 4)}{op}{fixed(volume_min, 4)}"
    range_op = ">" if range_ok else "<="
    confirm_text = (
        f"The bar's range is {fixed(range_vols, 2)} vols against {fixed(range_min, 2)} needed "
        f"and {volume_text}: {'confirmed' if confirmed else 'not confirmed'}."
    )
    confirm_claim = (
        f"range_vols={fixed(range_vols, 4)}{range_op}{fixed(range_min, 4)};{volume_claim};"
        f"confirmed={'true' if confirmed else 'false'}"
    )
    steps = [
        _observe(
            1,
            "trend_gap_50",
            f["trend_gap_50"],
            f"The close is {pct(f['trend_gap_50'])} from its 50-bar mean.",
        ),
        _vol_step(2, f["vol_20"]),
        _observe(
            3,
            "range_pct",
            f["range_pct"],
            f"The bar's high-low range is {upct(f['range_pct'])} of the close.",
        ),
        volume_step,
        _band_inference(
            5, trend, f"The close is {signed(s)} sigma from its 50-bar mean, ", BREAKOUT_BAND, s, k
        ),
        Step(6, "inference", confirm_text, confirm_claim, None if confirmed else "hold"),
    ]
    return action, _signal_size(p, s, action), steps


def _risk_off_v1(f: Mapping[str, Any], p: Policy) -> tuple[str, float, list[Step]]:
    vol_max = p["vol_max"]
    volatile = str(f["regime"]).endswith("_volatile")
    high_vol = as_rendered(f["vol_20"], 6) > vol_max
    action = "sell" if volatile or high_vol else "hold"
    text = (
        f"The regime is {'volatile' if volatile else 'calm'} and volatility "
        f"{upct(f['vol_20'])} is {'above' if high_vol else 'at or below'} the "
        f"{upct(vol_max)} ceiling: "
        f"{'risk is elevated, go flat' if action == 'sell' else 'risk is normal'}."
    )
    claim = (
        f"regime_volatile={'true' if volatile else 'false'};vol_20={fixed(f['vol_20'], 6)}"
        f"{'>' if high_vol else '<='}{fixed(vol_max, 6)}"
    )
    steps = [
        Step(1, "observation", f"Regime is {f['regime']}.", f"regime={f['regime']}"),
        _vol_step(2, f["vol_20"]),
        Step(3, "inference", text, claim, action),
    ]
    return action, as_rendered(p["size_cap"], 4) if action == "sell" else 0.0, steps


RULES = {
    "momentum_v1": _momentum_v1,
    "mean_reversion_v1": _mean_reversion_v1,
    "breakout_v1": _breakout_v1,
    "risk_off_v1": _risk_off_v1,
}


def decide(features: Mapping[str, Any], policy: Policy) -> Decision:
    """The policy's action, size and reasoning steps from one decision point's features (keys
    ret_1, ret_5, ret_20, vol_20, volume_z_20, range_pct, trend_gap_50, regime)."""
    action, size, steps = RULES[policy.rule](features, policy)
    steps.append(_decision_step(len(steps) + 1, action, size))
    return Decision(policy.policy_id, policy.policy_version, action, size, tuple(steps))


# ---------------------------------------------------------------- checks on traces

_ITEM = re.compile(r"^(?P<name>[a-z0-9_]+)=(?P<value>[^<>=]+)(?:(?P<op><=|>=|<|>)(?P<bound>.+))?$")


def parse_claim(claim: str) -> list[dict[str, Any]]:
    """A claim 'name=value[op bound];...' as a list of {name, value, op, bound}; values that
    parse as numbers are floats, others (regime, action, true, null) stay strings."""

    def number(text: str | None) -> float | str | None:
        if text is None:
            return None
        try:
            return float(text)
        except ValueError:
            return text

    items = []
    for part in claim.split(";"):
        match = _ITEM.match(part)
        if match is None:
            raise ValueError(f"malformed claim item {part!r} in {claim!r}")
        items.append(
            {
                "name": match["name"],
                "value": number(match["value"]),
                "op": match["op"],
                "bound": number(match["bound"]),
            }
        )
    return items


def observation_mismatches(steps: list[Mapping[str, Any]], features: Mapping[str, Any]) -> list:
    """Items of observation claims that differ from the features: a number must equal the feature
    formatted at 6 decimals, a string (regime, null) the feature itself. Empty when all hold."""
    wrong = []
    for step in steps:
        if step["kind"] != "observation":
            continue
        for item in parse_claim(step["claim"]):
            actual = features[item["name"]]
            if actual is None or (not isinstance(actual, str) and pd.isna(actual)):
                ok = item["value"] == "null"
            elif isinstance(item["value"], float):
                ok = item["value"] == as_rendered(float(actual), 6)
            else:
                ok = item["value"] == actual
            if not ok:
                wrong.append((step["step_index"], item["name"], item["value"], actual))
    return wrong


def hindsight_terms(sql: str) -> list[str]:
    """The HINDSIGHT_TERMS found in ``sql`` (case-insensitive; 'lead (' counts as 'lead(')."""
    text = re.sub(r"\blead\s+\(", "lead(", sql.lower())
    return [term for term in HINDSIGHT_TERMS if term in text]
