"""Backtest of decisions on a held-out period, against simple baselines and the reference policies.

Return convention
-----------------
A decision's reward is ``size * cf_reward_<action>`` (hold: 0), the realized reward of the
episode contract (DESIGN.md §5, ``int_counterfactuals``): ``cf_reward_buy = (fwd_ret_H - cost) /
scale``, ``cf_reward_sell = (-fwd_ret_H - cost) / scale``, ``cf_reward_hold = 0``, with
``fwd_ret_H`` the forward log return over the reward horizon H (the largest horizon), ``cost``
the round-trip cost and ``scale = vol_20 * sqrt(H)`` the ex-ante volatility over H bars. A reward
is thus a risk-scaled unit return ("sigmas earned per unit of capital"), not a percentage of
capital, and rewards add up (no compounding): ``total_return`` is their plain sum.

Portfolio series
----------------
Decisions are also pooled into an equal-weighted daily portfolio: per UTC decision date, the mean
reward of each symbol (over that symbol's decisions of the day, for intraday bars), then the mean
over the symbols that have one. ``sharpe`` and ``max_drawdown`` are computed on that series:

- ``sharpe = mean / std (ddof 1) * sqrt(periods_per_year)``; ``periods_per_year`` defaults to
  252, the trading days of a year, right for daily bars (pass e.g. 252 * bars_per_day for a
  per-bar series, or 252 / H to discount the overlap below). A series with zero spread has
  Sharpe 0.0 when its mean is 0 (always holding) and NaN otherwise; fewer than 2 days: NaN.
- ``max_drawdown``: the largest fall of the cumulative sum of the series from its running peak
  (the peak starts at 0, before the first day), reported as a positive number.

With H > 1 bars, a decision's reward spans H bars, so consecutive days' rewards overlap in time
and are autocorrelated; the annualized Sharpe then overstates what one could trade. It is meant
for ranking strategies on the same decision points and period, not as a tradable figure.

Strategies
----------
- each model (``decisions``: one action and size per decision point; a decision point with no
  decision, or an unparseable one, is a hold: no trade);
- ``hold``: always flat (reward 0), the floor every strategy has to beat;
- ``random``: uniform over buy / sell / hold at every decision point, buy and sell with a fixed
  size (by default the mean trade size of the models, so sizing does not decide the comparison),
  each metric averaged over ``n_random_seeds`` seeded draws;
- ``policy:<policy_id>``: each reference policy's (or recorded trader's) own decisions, from the
  episodes' rows, on the decision points where it decided (``@<policy_version>`` is appended
  when a policy has several versions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from training.decision_line import ACTIONS

SUMMARY_COLUMNS: tuple[str, ...] = (
    "strategy",
    "kind",
    "n",
    "n_trades",
    "mean_reward",
    "total_return",
    "hit_rate",
    "n_days",
    "portfolio_return",
    "sharpe",
    "max_drawdown",
)


# ---------------------------------------------------------------- series statistics


def sharpe_ratio(
    returns: Sequence[float] | np.ndarray | pd.Series, periods_per_year: float = 252.0
) -> float:
    """Annualized Sharpe ratio ``mean / std(ddof=1) * sqrt(periods_per_year)`` (no risk-free
    rate: the rewards are already excess, net-of-cost returns). NaN with fewer than 2 values;
    with zero spread, 0.0 for an all-zero mean and NaN otherwise."""
    r = np.asarray(returns, dtype=float)
    if r.size < 2:
        return math.nan
    mean, std = float(r.mean()), float(r.std(ddof=1))
    if std == 0.0 or not math.isfinite(std):
        return 0.0 if mean == 0.0 else math.nan
    return mean / std * math.sqrt(periods_per_year)


def max_drawdown(returns: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Largest drop of the cumulative sum of ``returns`` from its running peak (the peak starts
    at 0, before the first value), as a positive number; 0.0 for an empty or rising series."""
    r = np.asarray(returns, dtype=float)
    if r.size == 0:
        return 0.0
    cumulative = np.concatenate([[0.0], np.cumsum(r)])
    return float((np.maximum.accumulate(cumulative) - cumulative).max())


def daily_portfolio(frame: pd.DataFrame) -> pd.Series:
    """Equal-weighted daily series of a per-decision frame (``date``, ``symbol``, ``reward``):
    the mean per (date, symbol), then the mean over symbols; indexed by date, sorted."""
    if frame.empty:
        return pd.Series(dtype=float, name="reward")
    per_symbol = frame.groupby(["date", "symbol"], sort=True)["reward"].mean()
    return per_symbol.groupby(level="date", sort=True).mean()


def summarize(frame: pd.DataFrame, *, periods_per_year: float = 252.0) -> dict[str, float]:
    """The metrics of one strategy's per-decision frame (action, size, reward, date, symbol).

    n: decisions; n_trades: buys and sells with a positive size; mean_reward: mean reward per
    decision; total_return: sum of rewards; hit_rate: share of trades with a positive reward
    (NaN without trades); n_days, portfolio_return (sum of the daily series), sharpe and
    max_drawdown of the daily series (module docstring).
    """
    rewards = frame["reward"].to_numpy(dtype=float)
    trades = frame["action"].isin(["buy", "sell"]).to_numpy() & (frame["size"].to_numpy() > 0)
    daily = daily_portfolio(frame)
    return {
        "n": float(len(frame)),
        "n_trades": float(trades.sum()),
        "mean_reward": float(rewards.mean()) if rewards.size else math.nan,
        "total_return": float(rewards.sum()),
        "hit_rate": float((rewards[trades] > 0).mean()) if trades.any() else math.nan,
        "n_days": float(len(daily)),
        "portfolio_return": float(daily.sum()),
        "sharpe": sharpe_ratio(daily.to_numpy(), periods_per_year),
        "max_drawdown": max_drawdown(daily.to_numpy()),
    }


# ---------------------------------------------------------------- decision points and rewards


def _mature_split(episodes: pd.DataFrame, split: str | None) -> pd.DataFrame:
    rows = episodes
    if split is not None and "split" in rows.columns:
        rows = rows[rows["split"] == split]
    if "is_mature" in rows.columns:
        rows = rows[rows["is_mature"].fillna(False).astype(bool)]
    return rows.dropna(subset=["cf_reward_buy", "cf_reward_sell"])


def _with_date(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["date"] = pd.to_datetime(frame["decision_ts"], utc=True).dt.floor("D")
    return frame


def decision_points(
    episodes: pd.DataFrame, *, key: str = "prompt", split: str | None = "test"
) -> pd.DataFrame:
    """One row per decision point (unique ``key``) of a split's mature episodes with realized
    rewards: key, symbol, decision_ts, date (UTC day), cf_reward_buy / sell / hold; sorted by
    decision_ts, symbol and key."""
    rows = _mature_split(episodes, split)
    columns = [key, "symbol", "decision_ts", "cf_reward_buy", "cf_reward_sell", "cf_reward_hold"]
    points = rows.drop_duplicates(key)[columns].copy()
    points["cf_reward_hold"] = points["cf_reward_hold"].fillna(0.0)
    points = points.sort_values(["decision_ts", "symbol", key], kind="stable")
    return _with_date(points).reset_index(drop=True)


def _rewards(points: pd.DataFrame, actions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """size * cf_reward_<action> per row; hold earns cf_reward_hold (0) whatever its size."""
    unit = np.select(
        [actions == "buy", actions == "sell"],
        [points["cf_reward_buy"].to_numpy(float), points["cf_reward_sell"].to_numpy(float)],
        default=points["cf_reward_hold"].to_numpy(float),
    )
    return np.where(actions == "hold", unit, sizes * unit)


def model_rewards(
    points: pd.DataFrame, decisions: pd.DataFrame, *, key: str = "prompt"
) -> pd.DataFrame:
    """A model's per-decision frame on ``points`` (:func:`decision_points`).

    ``decisions`` has ``key``, ``action`` and ``size`` (e.g. ``DecisionMetrics.items``). A point
    without a decision, or whose action is missing / not buy, sell or hold, is a hold (size 0);
    a buy or sell needs a size in [0, 1]. Returns the points' columns plus action, size, reward
    (one row per point, in the points' order).
    """
    if decisions[key].duplicated().any():
        raise ValueError(f"decisions has several rows for one {key}")
    merged = points.merge(
        decisions[[key, "action", "size"]], on=key, how="left", validate="one_to_one"
    )
    action = merged["action"].where(merged["action"].isin(ACTIONS), "hold").to_numpy(object)
    size = np.where(action == "hold", 0.0, merged["size"].to_numpy(dtype=float))
    if np.isnan(size).any() or (size < 0).any() or (size > 1).any():
        raise ValueError("every buy or sell needs a size in [0, 1]")
    merged["action"], merged["size"] = action, size
    merged["reward"] = _rewards(merged, action, size)
    return merged


def policy_rewards(
    episodes: pd.DataFrame,
    points: pd.DataFrame,
    *,
    key: str = "prompt",
    split: str | None = "test",
) -> dict[str, pd.DataFrame]:
    """Each reference policy's per-decision frame on ``points`` (strategy name → frame): its own
    episodes' action and size on the points where it decided, rewards as the models'."""
    rows = _mature_split(episodes, split)
    rows = rows[rows[key].isin(points[key])].dropna(subset=["policy_id"])
    versions = "policy_version" in rows.columns
    out: dict[str, pd.DataFrame] = {}
    for policy_id, own in rows.groupby("policy_id", sort=True):
        groups = own.groupby("policy_version", sort=True) if versions else [(None, own)]
        several = versions and own["policy_version"].nunique() > 1
        for version, group in groups:
            name = f"policy:{policy_id}" + (f"@{version}" if several else "")
            frame = group[[key, "action", "size"]].merge(points, on=key, how="inner")
            action = frame["action"].to_numpy(object)
            size = np.where(action == "hold", 0.0, frame["size"].fillna(0.0).to_numpy(float))
            frame["size"] = size
            frame["reward"] = _rewards(frame, action, size)
            out[name] = frame.sort_values(["decision_ts", "symbol", key], kind="stable")
    return out


# ---------------------------------------------------------------- the backtest


def backtest(
    episodes: pd.DataFrame,
    decisions: pd.DataFrame | Mapping[str, pd.DataFrame] | None = None,
    *,
    key: str = "prompt",
    split: str | None = "test",
    model_name: str = "model",
    periods_per_year: float = 252.0,
    n_random_seeds: int = 20,
    seed: int = 0,
    random_size: float | None = None,
    include_policies: bool = True,
) -> pd.DataFrame:
    """Backtest the models' decisions and the baselines on one split's decision points.

    episodes: ``fct_decision_episodes`` rows (key, symbol, decision_ts, policy_id, action, size,
        split, is_mature, cf_reward_buy / sell / hold); the decision points are its unique
        ``key`` values of the split (mature, with realized rewards).
    decisions: one frame (named ``model_name``) or a mapping name → frame of ``key``, ``action``,
        ``size``; None backtests the baselines and policies only.
    random_size: the size of the random strategy's buys and sells; None: the mean size of the
        models' trades (1.0 without any).

    Returns one row per strategy, columns :data:`SUMMARY_COLUMNS` (``kind`` is ``model``,
    ``baseline`` or ``policy``; the metrics are those of :func:`summarize`; the random
    strategy's are means over its seeds). Conventions: module docstring.
    """
    points = decision_points(episodes, key=key, split=split)
    if decisions is None:
        models: dict[str, pd.DataFrame] = {}
    elif isinstance(decisions, pd.DataFrame):
        models = {model_name: decisions}
    else:
        models = dict(decisions)

    rows: list[dict[str, object]] = []

    def add(name: str, kind: str, metrics: Mapping[str, float]) -> None:
        rows.append({"strategy": name, "kind": kind, **metrics})

    trade_sizes: list[np.ndarray] = []
    for name, frame in models.items():
        rewards = model_rewards(points, frame, key=key)
        add(name, "model", summarize(rewards, periods_per_year=periods_per_year))
        traded = rewards["action"].isin(["buy", "sell"]) & (rewards["size"] > 0)
        trade_sizes.append(rewards.loc[traded, "size"].to_numpy(float))

    hold = points.assign(action="hold", size=0.0, reward=0.0)
    add("hold", "baseline", summarize(hold, periods_per_year=periods_per_year))

    if random_size is None:
        sizes = np.concatenate(trade_sizes) if trade_sizes else np.array([])
        random_size = float(sizes.mean()) if sizes.size else 1.0
    draws = np.random.default_rng(seed).integers(
        0, len(ACTIONS), size=(n_random_seeds, len(points))
    )
    per_seed = []
    for draw in draws:
        action = np.asarray(ACTIONS, dtype=object)[draw]
        size = np.where(action == "hold", 0.0, random_size)
        frame = points.assign(action=action, size=size, reward=_rewards(points, action, size))
        per_seed.append(summarize(frame, periods_per_year=periods_per_year))
    if per_seed:
        mean = pd.DataFrame(per_seed).mean(axis=0, skipna=True)
        add("random", "baseline", {k: float(v) for k, v in mean.items()})

    if include_policies:
        for name, frame in policy_rewards(episodes, points, key=key, split=split).items():
            add(name, "policy", summarize(frame, periods_per_year=periods_per_year))

    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
