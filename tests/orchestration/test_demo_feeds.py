"""The demo's example feeds (orchestration/demo_feeds.py) go through the real ingestion with the feeds
declared in feeds.yaml: every row accepted, and the journal never looks ahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from assets.core.feeds import load_feeds
from assets.core.lakehouse import connect
from assets.core.storage import Storage
from assets.ingestion.ingest import ingest_partitions, scan_landing
from assets.ingestion.landing import default_feed_file, land_file
from orchestration.demo_feeds import desk_journal, simulated_expert_feedback

ROOT = Path(__file__).resolve().parents[2]


def test_desk_journal_is_ingested_whole(tmp_path: Path) -> None:
    journal = desk_journal(first="2010-01-01", last="2010-06-30")
    assert 30 < len(journal) < 400 and set(journal["action"]) == {"buy", "sell", "hold"}
    source = tmp_path / "desk-journal.csv"
    journal.to_csv(source, index=False)
    storage, feeds = Storage(str(tmp_path / "root")), load_feeds(ROOT / "feeds.yaml")
    land_file(storage, feeds["recorded-decisions"], source)
    landed = scan_landing(storage, {"recorded-decisions": feeds["recorded-decisions"]})
    report = ingest_partitions(storage, feeds, "decisions", landed[0].dates, landed=landed)
    assert report.rows_accepted == len(journal) and report.rows_quarantined == 0


def test_desk_journal_decides_from_closes_before_it() -> None:
    journal = desk_journal(first="2010-01-01", last="2010-03-31")
    bars = pd.read_csv(default_feed_file(), usecols=["Ticker", "Date", "Close"])
    bars["Date"] = pd.to_datetime(bars["Date"])
    for row in journal.sample(20, random_state=0).itertuples():
        decided = pd.Timestamp(row.decided_at).tz_convert("America/New_York").tz_localize(None)
        known = bars[(bars["Ticker"] == row.ticker) & (bars["Date"] < decided.normalize())]
        closes = known.sort_values("Date")["Close"].to_numpy()
        move = np.log(closes[-1] / closes[-11])
        assert f"{move:+.1%}" in row.why, (row, move)


def test_simulated_feedback_rates_existing_steps(tmp_path: Path) -> None:
    warehouse = tmp_path / "lakehouse.sqlite"
    con = connect(warehouse, read_only=False)
    con.execute(
        "create table fct_step_labels as select 'e' || (i // 5) as episode_id, "
        "'e' || (i // 5) as trace_id, i % 5 + 1 as step_index, 'inference' as kind, "
        "i % 3 = 0 as auto_hard_label, false as is_perturbed from range(100) t(i)"
    )
    con.close()
    feedback = simulated_expert_feedback(warehouse, n_steps=40)
    assert len(feedback) == 40 and set(feedback["rating"]) <= {-1, 0, 1}
    assert feedback[["episode_id", "step"]].drop_duplicates().shape[0] == 40
    assert feedback["rated_at"].is_unique
