"""Tests for the seeded market simulator and its writers (assets/live/simulator.py)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assets.live.simulator import (
    BINANCE_TRADE_COLUMNS,
    TRADE_SCHEMA,
    DriftShift,
    MarketSimulator,
    SimulatorConfig,
    default_symbols,
    main,
    write_binance_trades,
    write_csv,
    write_parquet,
)

DAY = date(2024, 1, 2)
SMALL = SimulatorConfig(trades_per_day=2_000)


@pytest.fixture(scope="module")
def three_days() -> list[tuple[date, pa.Table]]:
    return list(MarketSimulator(SMALL).trades(date(2024, 1, 1), 3))


def _per_symbol(table: pa.Table) -> dict[str, pa.Table]:
    return {
        s: table.filter(pc.equal(table["symbol"], s)) for s in table["symbol"].unique().to_pylist()
    }


def _log_returns(table: pa.Table) -> np.ndarray:
    """Trade-to-trade log returns, never across two symbols."""
    return np.concatenate(
        [np.diff(np.log(t["price"].to_numpy())) for t in _per_symbol(table).values()]
    )


def _realized_var_per_hour(table: pa.Table, hours: float) -> float:
    return float((_log_returns(table) ** 2).sum() / len(_per_symbol(table)) / hours)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_default_symbols_are_unique_tickers():
    assert default_symbols(3) == ("SIMA", "SIMB", "SIMC")
    assert SimulatorConfig().symbols == default_symbols(5)
    many = default_symbols(60)
    assert len(set(many)) == 60
    assert many[25:28] == ("SIMZ", "SIMAA", "SIMAB")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"symbols": ()},
        {"symbols": ("A", "A")},
        {"trades_per_day": 0},
        {"seed": -1},
        {"session_start": time(20, 0), "session_hours": 6},
        {"regime_transitions": ((1.0, 0.0), (0.0, 1.0))},
        {"regime_transitions": ((0.5, 0.6, 0, 0),) * 4},
    ],
)
def test_config_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        SimulatorConfig(**kwargs)


def test_config_fields_have_help_text():
    from dataclasses import fields

    for f in fields(SimulatorConfig):
        assert f.metadata.get("help"), f.name


def test_naive_shift_time_means_utc():
    assert DriftShift(at=datetime(2024, 1, 3)).at == datetime(2024, 1, 3, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Trades: schema, determinism, invariants
# --------------------------------------------------------------------------------------------


def test_schema_and_types(three_days):
    _, table = three_days[0]
    assert table.schema == TRADE_SCHEMA
    assert table.column_names == [
        "symbol",
        "trade_id",
        "ts",
        "price",
        "qty",
        "is_buyer_maker",
        "regime",
    ]
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert set(table["symbol"].unique().to_pylist()) == set(SMALL.symbols)
    assert set(table["regime"].unique().to_pylist()) <= {
        "calm",
        "trending_up",
        "trending_down",
        "volatile",
    }


def test_same_config_and_day_give_identical_tables():
    a = MarketSimulator(SMALL).trades_for_day(DAY)
    b = MarketSimulator(SimulatorConfig(trades_per_day=2_000)).trades_for_day(DAY)
    assert a.equals(b)
    assert MarketSimulator(SMALL).trades_for_day(DAY).equals(a)


def test_day_does_not_depend_on_days_generated_before():
    alone = MarketSimulator(SMALL).trades_for_day(DAY)
    sim = MarketSimulator(SMALL)
    sim.trades_for_day(DAY - timedelta(days=1))
    sim.trades_for_day(DAY + timedelta(days=5))
    after_others = sim.trades_for_day(DAY)
    assert after_others.equals(alone)
    assert after_others["trade_id"].equals(alone["trade_id"])


def test_other_seed_gives_other_trades():
    a = MarketSimulator(SMALL).trades_for_day(DAY)
    b = MarketSimulator(SimulatorConfig(trades_per_day=2_000, seed=8)).trades_for_day(DAY)
    assert not a.equals(b)


def test_adding_a_symbol_leaves_the_others_alone():
    few = MarketSimulator(SimulatorConfig(symbols=("SIMA", "SIMB"), trades_per_day=500))
    more = MarketSimulator(SimulatorConfig(symbols=("SIMA", "SIMB", "XYZ"), trades_per_day=500))
    a = few.trades_for_day(DAY)
    b = more.trades_for_day(DAY)
    assert b.filter(pc.not_equal(b["symbol"], "XYZ")).equals(a)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    day=st.dates(date(1990, 1, 1), date(2060, 12, 31)),
)
def test_any_seed_and_day_is_reproducible(seed, day):
    config = SimulatorConfig(symbols=("A", "B"), seed=seed, trades_per_day=50)
    table = MarketSimulator(config).trades_for_day(day)
    assert MarketSimulator(config).trades_for_day(day).equals(table)
    assert pc.min(table["price"]).as_py() is None or pc.min(table["price"]).as_py() > 0


def test_prices_and_sizes_are_positive_and_rounded(three_days):
    for _, table in three_days:
        price = table["price"].to_numpy()
        qty = table["qty"].to_numpy()
        assert (price > 0).all() and (qty > 0).all()
        np.testing.assert_array_equal(price, np.round(price, 2))
        np.testing.assert_array_equal(qty, np.round(qty, 6))


def test_timestamps_inside_the_day_and_sorted_per_symbol(three_days):
    for day, table in three_days:
        start = datetime.combine(day, time(0), tzinfo=UTC)
        assert pc.min(table["ts"]).as_py() >= start
        assert pc.max(table["ts"]).as_py() < start + timedelta(days=1)
        for sym, rows in _per_symbol(table).items():
            ts = rows["ts"].cast(pa.int64()).to_numpy()
            assert (np.diff(ts) >= 0).all(), sym


def test_session_hours_are_respected():
    config = SimulatorConfig(trades_per_day=1_000, session_start=time(14, 30), session_hours=6.5)
    table = MarketSimulator(config).trades_for_day(DAY)
    assert table.num_rows > 0
    assert pc.min(table["ts"]).as_py() >= datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    assert pc.max(table["ts"]).as_py() < datetime(2024, 1, 2, 21, 0, tzinfo=UTC)


def test_trade_ids_strictly_increase_per_symbol_across_days(three_days):
    joined = pa.concat_tables([t for _, t in three_days])
    for sym, rows in _per_symbol(joined).items():
        ids = rows["trade_id"].to_numpy()
        assert (np.diff(ids) > 0).all(), sym
        # ...and follow the time order.
        ts = rows["ts"].cast(pa.int64()).to_numpy()
        assert (np.diff(ts) >= 0).all(), sym


def test_days_join_up_without_price_gaps(three_days):
    # The intraday walk is pinned to the next day's open, so midnight shows no jump.
    for (_, today), (_, tomorrow) in itertools.pairwise(three_days):
        last = _per_symbol(today)
        first = _per_symbol(tomorrow)
        for sym in SMALL.symbols:
            close = last[sym]["price"][-1].as_py()
            open_ = first[sym]["price"][0].as_py()
            assert abs(np.log(open_ / close)) < 0.005, sym


def test_opening_prices_anchor_at_start_price():
    sim = MarketSimulator(SMALL)
    assert sim.opening_price("SIMA", SMALL.anchor_day) == pytest.approx(100.0)
    # Days far before and after the anchor are cheap and positive.
    assert sim.opening_price("SIMA", date(1995, 6, 1)) > 0
    assert sim.opening_price("SIMA", date(2050, 6, 1)) > 0


def test_regime_switches_at_most_once_per_hour():
    sim = MarketSimulator(SMALL)
    path = sim.regime_path(DAY)
    assert len(path) == 24
    table = sim.trades_for_day(DAY)
    hour = pc.hour(table["ts"]).to_numpy()
    regime = table["regime"].to_numpy(zero_copy_only=False)
    for h in range(24):
        assert set(regime[hour == h]) <= {path[h]}


def test_regimes_visit_several_states_over_a_month():
    sim = MarketSimulator(SMALL)
    seen = {r for offset in range(30) for r in sim.regime_path(DAY + timedelta(days=offset))}
    assert seen == {"calm", "trending_up", "trending_down", "volatile"}


def test_average_trade_count_matches_trades_per_day():
    sim = MarketSimulator(SimulatorConfig(symbols=("A",), trades_per_day=300))
    counts = [t.num_rows for _, t in sim.trades(date(2024, 1, 1), 60)]
    assert np.mean(counts) == pytest.approx(300, rel=0.2)


# --------------------------------------------------------------------------------------------
# Distribution shift
# --------------------------------------------------------------------------------------------

SHIFT_AT = datetime(2024, 1, 3, tzinfo=UTC)


@pytest.fixture(scope="module")
def shifted_run() -> pa.Table:
    config = SimulatorConfig(trades_per_day=2_000, shift=DriftShift(at=SHIFT_AT))
    return pa.concat_tables([t for _, t in MarketSimulator(config).trades(date(2024, 1, 1), 4)])


def test_shift_raises_volatility_after_shift_time(shifted_run):
    before = shifted_run.filter(pc.less(shifted_run["ts"], SHIFT_AT))
    after = shifted_run.filter(pc.greater_equal(shifted_run["ts"], SHIFT_AT))
    var_before = _realized_var_per_hour(before, 48)
    var_after = _realized_var_per_hour(after, 48)
    # vol_multiplier=3 means 9x the variance; regimes add noise, so ask for a clear 3x.
    assert var_after > 3 * var_before
    # Per trade too, even though there are more trades to share the variance.
    assert _log_returns(after).std() > 1.5 * _log_returns(before).std()


def test_shift_raises_trade_rate_and_size(shifted_run):
    before = shifted_run.filter(pc.less(shifted_run["ts"], SHIFT_AT))
    after = shifted_run.filter(pc.greater_equal(shifted_run["ts"], SHIFT_AT))
    assert after.num_rows > 1.2 * before.num_rows
    median_before = np.median(before["qty"].to_numpy())
    median_after = np.median(after["qty"].to_numpy())
    assert median_after == pytest.approx(2 * median_before, rel=0.1)


def test_shift_against_an_unshifted_run_of_the_same_day():
    # Same seed and day, so the regimes match: the only difference is the shift.
    day = SHIFT_AT.date()
    plain = MarketSimulator(SMALL).trades_for_day(day)
    config = SimulatorConfig(trades_per_day=2_000, shift=DriftShift(at=SHIFT_AT))
    shifted = MarketSimulator(config).trades_for_day(day)
    assert _realized_var_per_hour(shifted, 24) > 5 * _realized_var_per_hour(plain, 24)
    assert shifted.num_rows > 1.3 * plain.num_rows


def test_shift_leaves_earlier_trades_alone():
    at = datetime(2024, 1, 3, 12, tzinfo=UTC)
    plain = MarketSimulator(SMALL)
    shifted = MarketSimulator(SimulatorConfig(trades_per_day=2_000, shift=DriftShift(at=at)))
    # Whole days before the shift are identical to a run without it.
    assert shifted.trades_for_day(date(2024, 1, 2)).equals(plain.trades_for_day(date(2024, 1, 2)))
    # On the shift day, trades before it keep their times, sizes and sides. (Prices differ a
    # little: the plain run bends its whole day towards another next-day open.)
    a = plain.trades_for_day(at.date())
    b = shifted.trades_for_day(at.date())
    a = a.filter(pc.less(a["ts"], at))
    b = b.filter(pc.less(b["ts"], at))
    for col in ("symbol", "trade_id", "ts", "qty", "is_buyer_maker", "regime"):
        assert a[col].equals(b[col]), col


def test_nothing_before_the_shift_depends_on_its_size():
    # No look-ahead: how strong the shift is must not leak into earlier prices.
    at = datetime(2024, 1, 3, 12, tzinfo=UTC)
    mild = DriftShift(at=at, vol_multiplier=1.5, drift_per_day=0.0)
    wild = DriftShift(at=at, vol_multiplier=5.0, drift_per_day=-0.5, volume_multiplier=9.0)
    tables = [
        MarketSimulator(SimulatorConfig(trades_per_day=2_000, shift=s)).trades_for_day(at.date())
        for s in (mild, wild)
    ]
    a, b = (t.filter(pc.less(t["ts"], at)) for t in tables)
    assert a.num_rows > 0 and a.equals(b)
    # After the shift they differ.
    assert not tables[0].equals(tables[1])


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def _read_binance(path: Path) -> pa.Table:
    columns = {
        "id": "BIGINT",
        "price": "DOUBLE",
        "qty": "DOUBLE",
        "quote_qty": "DOUBLE",
        "time": "BIGINT",
        "is_buyer_maker": "VARCHAR",
        "is_best_match": "VARCHAR",
    }
    return duckdb.read_csv(str(path), header=False, columns=columns).fetch_arrow_table()


def test_binance_writer_one_headerless_file_per_symbol_and_day(tmp_path, three_days):
    table = pa.concat_tables([t for _, t in three_days[:2]])
    paths = write_binance_trades(table, tmp_path)
    expected = {
        f"{sym}-trades-{day.isoformat()}.csv" for sym in SMALL.symbols for day, _ in three_days[:2]
    }
    assert {p.name for p in paths} == expected
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temp files left behind
    first_line = paths[0].read_text().splitlines()[0]
    assert len(first_line.split(",")) == len(BINANCE_TRADE_COLUMNS) == 7
    assert first_line.split(",")[0].isdigit()  # a trade id, not a header
    assert sum(len(p.read_text().splitlines()) for p in paths) == table.num_rows


def test_binance_writer_round_trips(tmp_path, three_days):
    day, table = three_days[0]
    path = tmp_path / f"SIMB-trades-{day.isoformat()}.csv"
    assert path in write_binance_trades(table, tmp_path)
    source = table.filter(pc.equal(table["symbol"], "SIMB"))
    back = _read_binance(path)
    assert back["id"].to_pylist() == source["trade_id"].to_pylist()
    np.testing.assert_array_equal(back["price"].to_numpy(), source["price"].to_numpy())
    np.testing.assert_array_equal(back["qty"].to_numpy(), source["qty"].to_numpy())
    ts_us = source["ts"].cast(pa.int64()).to_numpy()
    np.testing.assert_array_equal(back["time"].to_numpy(), ts_us // 1000)
    np.testing.assert_allclose(
        back["quote_qty"].to_numpy(),
        source["price"].to_numpy() * source["qty"].to_numpy(),
        atol=1e-8,
    )
    makers = np.where(source["is_buyer_maker"].to_numpy(zero_copy_only=False), "True", "False")
    assert back["is_buyer_maker"].to_pylist() == makers.tolist()
    assert set(back["is_best_match"].to_pylist()) == {"True"}
    # Binance prints fixed decimals, never exponents.
    line = path.read_text().splitlines()[0].split(",")
    assert all("e" not in v.lower() for v in line[1:4])
    assert len(line[1].split(".")[1]) == 8


def test_binance_writer_prints_tiny_numbers_without_exponents(tmp_path):
    table = pa.Table.from_pydict(
        {
            "symbol": ["BTCUSDT"],
            "trade_id": [5],
            "ts": [datetime(2024, 1, 1, 0, 0, 1, 500, tzinfo=UTC)],
            "price": [0.01],
            "qty": [0.000001],
            "is_buyer_maker": [True],
            "regime": ["calm"],
        },
        schema=TRADE_SCHEMA,
    )
    [path] = write_binance_trades(table, tmp_path)
    assert path.name == "BTCUSDT-trades-2024-01-01.csv"
    assert path.read_text() == "5,0.01000000,0.00000100,0.00000001,1704067201000,True,True\n"


def test_binance_writer_microseconds(tmp_path, three_days):
    day, table = three_days[0]
    write_binance_trades(table, tmp_path, time_unit="us")
    back = _read_binance(tmp_path / f"SIMA-trades-{day.isoformat()}.csv")
    source = table.filter(pc.equal(table["symbol"], "SIMA"))
    assert back["time"].to_pylist() == source["ts"].cast(pa.int64()).to_pylist()
    with pytest.raises(ValueError):
        write_binance_trades(table, tmp_path, time_unit="s")


def test_binance_writer_sorts_shuffled_input(tmp_path, three_days):
    day, table = three_days[0]
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    write_binance_trades(shuffled, tmp_path)
    ids = _read_binance(tmp_path / f"SIMC-trades-{day.isoformat()}.csv")["id"].to_numpy()
    assert (np.diff(ids) > 0).all()


def test_csv_writer(tmp_path, three_days):
    _, table = three_days[0]
    path = write_csv(table, tmp_path / "sub" / "trades.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "symbol,trade_id,ts,price,qty,is_buyer_maker"
    ts_text = lines[1].split(",")[2]
    assert ts_text.endswith("Z") and "T" in ts_text
    back = duckdb.sql(
        f"SELECT symbol, trade_id, ts::TIMESTAMPTZ AS ts, price, qty, is_buyer_maker "
        f"FROM read_csv('{path}', header=true, columns={{'symbol': 'VARCHAR', "
        f"'trade_id': 'BIGINT', 'ts': 'VARCHAR', 'price': 'DOUBLE', 'qty': 'DOUBLE', "
        f"'is_buyer_maker': 'BOOLEAN'}})"
    ).fetch_arrow_table()
    assert back["trade_id"].to_pylist() == table["trade_id"].to_pylist()
    assert back["ts"].cast(pa.int64()).equals(table["ts"].cast(pa.int64()))
    assert back["price"].to_pylist() == table["price"].to_pylist()
    assert back["is_buyer_maker"].to_pylist() == table["is_buyer_maker"].to_pylist()
    assert [p.name for p in path.parent.iterdir()] == ["trades.csv"]


def test_parquet_writer(tmp_path, three_days):
    _, table = three_days[0]
    path = write_parquet(table, tmp_path / "trades.parquet")
    assert pq.read_table(path).equals(table)


# --------------------------------------------------------------------------------------------
# Command line and volume
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "files"),
    [("binance-trades", 6), ("csv", 2), ("parquet", 2)],
)
def test_cli_writes_files_and_reports_rows(tmp_path, capsys, fmt, files):
    argv = ["--out", str(tmp_path), "--start", "2024-01-01", "--days", "2", "--symbols", "3"]
    argv += ["--trades-per-day", "200", "--format", fmt, "--shift-at", "2024-01-02T00:00:00Z"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == files == len(list(tmp_path.iterdir()))
    config = SimulatorConfig(
        symbols=default_symbols(3),
        trades_per_day=200,
        shift=DriftShift(at=datetime(2024, 1, 2, tzinfo=UTC)),
    )
    expected = sum(t.num_rows for _, t in MarketSimulator(config).trades(date(2024, 1, 1), 2))
    assert sum(int(line.split("\t")[1].split()[0]) for line in out) == expected


def test_high_volume_day_generates_and_writes(tmp_path):
    # Volume sanity by row count only (no timing): about 700k trades in one day.
    config = SimulatorConfig(trades_per_day=100_000)
    table = MarketSimulator(config).trades_for_day(DAY)
    assert 350_000 < table.num_rows < 1_500_000
    paths = write_binance_trades(table, tmp_path)
    assert len(paths) == 5
    counted = duckdb.sql(
        f"SELECT count(*) FROM read_csv('{tmp_path}/*.csv', header=false)"
    ).fetchone()[0]
    assert counted == table.num_rows
