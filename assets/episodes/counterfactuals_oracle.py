"""Brute-force pandas oracle of ``int_counterfactuals`` (dbt): counterfactual rewards, the
ex-ante counterfactual environment and the decision quality it implies.

Plain pandas and numpy, no Dagster and no warehouse. Inputs are the decision points (rows of
``int_decision_points``: symbol, bar_interval, ts, decision_ts, bar_date, vol_20, regime,
decision_point_id), the decisions (``int_decisions``: episode_id, decision_point_id, action,
size) and the bars (symbol, bar_interval or interval, ts, close) they come from.

Definitions (H = the largest horizon, cost = cost_bps / 1e4,
scale = max(vol_20 * sqrt(H), 1e-4) with the decision bar's own vol_20):

- outcome of bar t: ``fwd_ret = ln(close_{t+H} / close_t)`` with t+H the H-th next bar of the
  series, counted only if its bar_date is at most ``lookahead_days`` after t's; ``matured_at`` =
  that bar's ts + bar length. Otherwise the bar is immature.
- unit rewards: buy ``(fwd_ret - cost) / scale``, sell ``(-fwd_ret - cost) / scale``, hold 0.
- ``reward`` = size * unit reward of the action for buy / sell, 0 for hold.
- analogs of decision point d: points a of the same series and regime with
  ``matured_at_a <= decision_ts_d`` and ``bar_date_a >= bar_date_d - lookback_days``, the
  ``analog_count`` latest by matured_at. ev_<action> = mean of their unit rewards,
  ev_se = sample std / sqrt(n) (hold: 0, 0); NULL when n < ``min_analogs``.
- ``ev_action`` = size * ev_<action> (0 for hold); ``luck = reward - ev_action``;
  ``advantage`` = ev_<action> - max ev of the other two; ``advantage_se`` =
  sqrt(se_action^2 + se_best_other^2); ``decision_quality`` good / bad / neutral at 2 se;
  ``best_action_ex_ante`` = argmax ev (ties: hold, buy, sell).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from assets.episodes.point_in_time_features import bar_length, normalize_bars, round_half_away

ANALOG_COUNT = 250
MIN_ANALOGS = 20
SCALE_FLOOR = 1e-4
ORDER = ("hold", "buy", "sell")  # tie-break of best actions


def bar_outcomes(bars: pd.DataFrame, horizon: int, lookahead_days: int) -> pd.DataFrame:
    """fwd_ret and matured_at (NaN / NaT while immature) of every bar, by brute force."""
    rows = []
    for (symbol, interval), series in normalize_bars(bars).groupby(
        ["symbol", "bar_interval"], sort=False
    ):
        series = series.sort_values("ts")
        ts, close = list(series["ts"]), series["close"].to_numpy()
        days = [t.date() for t in ts]
        for i in range(len(ts)):
            j = i + horizon
            mature = j < len(ts) and (days[j] - days[i]).days <= lookahead_days
            rows.append(
                {
                    "symbol": symbol,
                    "bar_interval": interval,
                    "ts": ts[i],
                    "fwd_ret": np.log(close[j] / close[i]) if mature else np.nan,
                    "matured_at": ts[j] + bar_length(interval) if mature else pd.NaT,
                }
            )
    out = pd.DataFrame(rows)
    out["matured_at"] = pd.to_datetime(out["matured_at"], utc=True)
    return out


def _unit_rewards(fwd_ret: np.ndarray, scale: np.ndarray, cost: float) -> dict[str, np.ndarray]:
    return {"buy": (fwd_ret - cost) / scale, "sell": (-fwd_ret - cost) / scale}


def environment(
    points: pd.DataFrame,
    outcomes: pd.DataFrame,
    horizon: int,
    cost: float,
    lookback_days: int,
    analog_count: int = ANALOG_COUNT,
    min_analogs: int = MIN_ANALOGS,
) -> pd.DataFrame:
    """ev / ev_se / n_analogs / latest_analog_matured_at of every decision point, by looping
    over each point's analogs."""
    merged = points.merge(outcomes, on=["symbol", "bar_interval", "ts"], how="left")
    merged["scale"] = np.maximum(merged["vol_20"] * np.sqrt(horizon), SCALE_FLOOR)
    rewards = _unit_rewards(merged["fwd_ret"].to_numpy(), merged["scale"].to_numpy(), cost)
    merged["r_buy"], merged["r_sell"] = rewards["buy"], rewards["sell"]
    rows = []
    for _, group in merged.groupby(["symbol", "bar_interval", "regime"], sort=False):
        pool = group[group["matured_at"].notna()].sort_values("matured_at")
        matured = pool["matured_at"].dt.tz_convert(None).to_numpy()
        pool_dates = pool["bar_date"].to_numpy()
        for point in group.itertuples():
            first_date = np.datetime64(point.bar_date) - np.timedelta64(lookback_days, "D")
            decided = np.datetime64(pd.Timestamp(point.decision_ts).tz_convert(None))
            mask = (matured <= decided) & (pool_dates >= first_date)
            used = pool[mask].tail(analog_count)
            n = len(used)
            row = {
                "decision_point_id": point.decision_point_id,
                "n_analogs": n,
                "latest_analog_matured_at": used["matured_at"].iloc[-1] if n else pd.NaT,
            }
            enough = n >= min_analogs
            for action in ("buy", "sell"):
                values = used[f"r_{action}"]
                row[f"ev_{action}"] = values.mean() if enough else np.nan
                row[f"ev_se_{action}"] = values.std(ddof=1) / np.sqrt(n) if enough else np.nan
            row["ev_hold"] = row["ev_se_hold"] = 0.0 if enough else np.nan
            rows.append(row)
    out = pd.DataFrame(rows)
    for column in ("ev_buy", "ev_sell", "ev_se_buy", "ev_se_sell"):
        out[column] = round_half_away(out[column], 10)
    out["latest_analog_matured_at"] = pd.to_datetime(out["latest_analog_matured_at"], utc=True)
    return out


def compute_counterfactuals(
    points: pd.DataFrame,
    decisions: pd.DataFrame,
    bars: pd.DataFrame,
    horizons: list[int],
    cost_bps: float,
    lookback_days: int,
    lookahead_days: int = 45,
    analog_count: int = ANALOG_COUNT,
    min_analogs: int = MIN_ANALOGS,
) -> pd.DataFrame:
    """One row per decision with the columns of int_counterfactuals that carry values
    (episode_id, decision_point_id, action, size, is_mature, cf_reward_*, reward, n_analogs,
    latest_analog_matured_at, ev_*, ev_se_*, ev_action, advantage, advantage_se,
    best_action_ex_ante, decision_quality, luck)."""
    horizon = max(int(h) for h in horizons)
    cost = cost_bps / 1e4
    points = points.copy()
    points["bar_date"] = pd.to_datetime(points["bar_date"]).astype("datetime64[ns]")
    outcomes = bar_outcomes(bars, horizon, lookahead_days)
    env = environment(points, outcomes, horizon, cost, lookback_days, analog_count, min_analogs)
    base = decisions[["episode_id", "decision_point_id", "action", "size"]].merge(
        points[["decision_point_id", "symbol", "bar_interval", "ts", "vol_20"]],
        on="decision_point_id",
    )
    base = base.merge(outcomes, on=["symbol", "bar_interval", "ts"], how="left")
    base = base.merge(env, on="decision_point_id", how="left")
    scale = np.maximum(base["vol_20"].to_numpy() * np.sqrt(horizon), SCALE_FLOOR)
    rewards = _unit_rewards(base["fwd_ret"].to_numpy(), scale, cost)
    base["is_mature"] = base["matured_at"].notna()
    base["cf_reward_buy"], base["cf_reward_sell"] = rewards["buy"], rewards["sell"]
    base["cf_reward_hold"] = np.where(base["is_mature"], 0.0, np.nan)

    out = []
    for row in base.to_dict("records"):
        action, size = row["action"], row["size"]
        weight = 0.0 if action == "hold" else size
        row["reward"] = weight * row[f"cf_reward_{action}"]
        ev = {a: row[f"ev_{a}"] for a in ORDER}
        se = {a: row[f"ev_se_{a}"] for a in ORDER}
        if np.isnan(ev["buy"]):
            row.update(
                ev_action=np.nan,
                advantage=np.nan,
                advantage_se=np.nan,
                best_action_ex_ante=None,
                decision_quality=None,
                luck=np.nan,
            )
        else:
            others = [a for a in ORDER if a != action]
            best_other = max(others, key=lambda a: (ev[a], -ORDER.index(a)))
            row["ev_action"] = weight * ev[action]
            row["advantage"] = ev[action] - ev[best_other]
            row["advantage_se"] = float(np.sqrt(se[action] ** 2 + se[best_other] ** 2))
            row["best_action_ex_ante"] = max(ORDER, key=lambda a: (ev[a], -ORDER.index(a)))
            if row["advantage"] > 2 * row["advantage_se"]:
                row["decision_quality"] = "good"
            elif row["advantage"] < -2 * row["advantage_se"]:
                row["decision_quality"] = "bad"
            else:
                row["decision_quality"] = "neutral"
            row["luck"] = row["reward"] - row["ev_action"]
        out.append(row)
    return pd.DataFrame(out)
