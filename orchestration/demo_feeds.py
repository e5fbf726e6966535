"""Example files for the two human-in-the-loop feeds, so the demo exercises them end to end.

* ``desk_journal``: a recorded-decisions file (feed ``recorded-decisions``) of a fictional
  desk trading the default feed's stocks: now and then, at 15:30 New York time, a trader
  acts on the last close's 10-day move (with a seeded share of contrarian calls) and writes
  why. Built from the landed daily bars only, up to the previous close: no look-ahead.
* ``simulated_expert_feedback``: an expert-feedback file (feed ``expert-feedback``) rating a
  seeded sample of steps of built episodes, as reviewers would: mostly agreeing with the
  automatic label, sometimes not, sometimes neutral. It stands in for real raters so the
  demo shows ratings overriding labels and the agreement report; it reads the lakehouse.

``python -m orchestration.demo_feeds journal OUT.csv`` / ``feedback OUT.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from assets.core.lakehouse import Lakehouse, connect, lakehouse_from_env
from assets.ingestion.landing import default_feed_file

AGENTS = ("desk-alice", "desk-bob")


def desk_journal(
    bars_csv: Path | None = None, seed: int = 7, first: str = "2005-01-01", last: str = "2012-12-31"
) -> pd.DataFrame:
    """Columns as the ``recorded-decisions`` feed declares them (decision_id, agent, ticker,
    decided_at, action, size, why). About two decisions per symbol and month."""
    bars = pd.read_csv(bars_csv or default_feed_file(), usecols=["Ticker", "Date", "Close"])
    bars["Date"] = pd.to_datetime(bars["Date"])
    bars = bars.sort_values(["Ticker", "Date"])
    bars["ret_10"] = bars.groupby("Ticker")["Close"].transform(lambda c: np.log(c / c.shift(10)))
    window = bars[(bars["Date"] >= first) & (bars["Date"] <= last) & bars["ret_10"].notna()]
    rng = np.random.default_rng(seed)
    picked = window[rng.random(len(window)) < 0.1].copy()
    contrarian = rng.random(len(picked)) < 0.3
    agents = rng.choice(AGENTS, len(picked))
    rows = []
    for i, (row, fade, agent) in enumerate(
        zip(picked.itertuples(), contrarian, agents, strict=True)
    ):
        move = row.ret_10
        if abs(move) < 0.02:
            action, size, why = "hold", 0.0, f"10-day move {move:+.1%} is noise; staying flat."
        elif (move > 0) != fade:
            action, size = "buy", round(min(1.0, abs(move) * 5), 2)
            why = f"10-day move {move:+.1%}; " + ("fading the drop." if fade else "riding it.")
        else:
            action, size = "sell", round(min(1.0, abs(move) * 5), 2)
            why = f"10-day move {move:+.1%}; " + ("fading the rally." if fade else "riding it.")
        # Decided the next calendar day at 15:30 New York time, after that close was known.
        decided = (row.Date + pd.Timedelta(days=1, hours=15, minutes=30)).tz_localize(
            "America/New_York", nonexistent="shift_forward", ambiguous=False
        )
        rows.append((f"desk-{i:05d}", agent, row.Ticker, decided.isoformat(), action, size, why))
    return pd.DataFrame(
        rows, columns=["decision_id", "agent", "ticker", "decided_at", "action", "size", "why"]
    )


def simulated_expert_feedback(
    warehouse: Lakehouse | str | Path, n_steps: int = 60, seed: int = 11, agree: float = 0.85
) -> pd.DataFrame:
    """Columns as the ``expert-feedback`` feed declares them (episode_id, step, rating, rater,
    rated_at, comment): ``n_steps`` steps of original traces with an automatic hard label, each
    rated by one of two raters."""
    con = connect(warehouse)
    try:
        steps = con.execute(
            """
            select episode_id, step_index, kind, auto_hard_label
            from fct_step_labels
            where not is_perturbed and auto_hard_label is not null
            order by md5(trace_id || ':' || step_index)
            limit ?
            """,
            [n_steps],
        ).df()
    finally:
        con.close()
    rng = np.random.default_rng(seed)
    agrees = rng.random(len(steps)) < agree
    neutral = rng.random(len(steps)) < 0.1
    rating = np.where(steps["auto_hard_label"] == agrees, 1, -1)
    rating = np.where(neutral, 0, rating)
    rated_at = pd.Timestamp("2026-01-15 10:00:00") + pd.to_timedelta(
        np.arange(len(steps)) * 30, unit="s"
    )
    return pd.DataFrame(
        {
            "episode_id": steps["episode_id"],
            "step": steps["step_index"],
            "rating": rating,
            "rater": np.where(np.arange(len(steps)) % 2 == 0, "expert-1", "expert-2"),
            "rated_at": rated_at.strftime("%Y-%m-%d %H:%M:%S"),
            "comment": np.where(rating < 0, "disagree with this step", ""),
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.demo_feeds", description=__doc__)
    parser.add_argument("what", choices=["journal", "feedback"])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--warehouse",
        help="the lakehouse's SQLite catalog (feedback only; default: the environment's "
        "lakehouse, DD_LAKEHOUSE_*)",
    )
    args = parser.parse_args(argv)
    if args.what == "journal":
        frame = desk_journal()
    else:
        frame = simulated_expert_feedback(args.warehouse or lakehouse_from_env())
    frame.to_csv(args.out, index=False)
    print(f"{len(frame)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
