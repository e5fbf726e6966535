"""Seeded market simulator: intraday trades for many symbols, with regimes and a drift shift.

It serves intraday, load and drift tests (DESIGN.md section 4) without any network access.

How a day is built, for each symbol:

1. A market-wide regime path (a Markov chain stepped once per hour) is drawn from (seed, day).
2. Trade times are a Poisson process whose rate depends on the regime and on the shift.
3. Log prices are a random walk whose drift and volatility depend on the regime and the shift,
   started at a deterministic opening price and pinned (Brownian bridge) to the next day's open,
   so consecutive days join up without having to simulate the days in between.
4. Sizes are lognormal; the aggressor side follows the sign of the price move.

Every random draw comes from a generator seeded by (seed, symbol, day), (seed, day) or, for the
opening prices, (seed, symbol, block of days), so any day can be generated on its own, in any
order, and always gives the same table. Adding a symbol leaves the other symbols' trades alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

__all__ = [
    "BINANCE_TRADE_COLUMNS",
    "DEFAULT_REGIMES",
    "DEFAULT_TRANSITIONS",
    "TRADE_ID_STRIDE",
    "TRADE_SCHEMA",
    "DriftShift",
    "MarketSimulator",
    "Regime",
    "SimulatorConfig",
    "default_symbols",
    "main",
    "parse_utc",
    "write_binance_trades",
    "write_csv",
    "write_parquet",
]

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000

# Trade ids are day_ordinal * TRADE_ID_STRIDE + i, so they grow across days without state.
TRADE_ID_STRIDE = 10_000_000

TRADE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("trade_id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("qty", pa.float64(), nullable=False),
        pa.field("is_buyer_maker", pa.bool_(), nullable=False),
        pa.field("regime", pa.string(), nullable=False),
    ]
)

# Column order of Binance's public spot trade dumps (data.binance.vision), which have no header.
BINANCE_TRADE_COLUMNS = (
    "id",
    "price",
    "qty",
    "quote_qty",
    "time",
    "is_buyer_maker",
    "is_best_match",
)

# Tags that keep the random streams apart (regimes, intraday trades, daily opening path).
_REGIME_STREAM = 1
_TRADE_STREAM = 2
_DAILY_STREAM = 3
# The opening-price path is drawn in blocks of days, so reaching any day costs a few draws.
_DAILY_BLOCK = 4096


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regime:
    """A market state: log drift per day, and multipliers on volatility and trade rate."""

    name: str
    drift_per_day: float = 0.0
    vol_multiplier: float = 1.0
    trade_rate_multiplier: float = 1.0


DEFAULT_REGIMES: tuple[Regime, ...] = (
    Regime("calm", drift_per_day=0.0, vol_multiplier=0.6, trade_rate_multiplier=0.7),
    Regime("trending_up", drift_per_day=0.08, vol_multiplier=1.0, trade_rate_multiplier=1.0),
    Regime("trending_down", drift_per_day=-0.08, vol_multiplier=1.1, trade_rate_multiplier=1.1),
    Regime("volatile", drift_per_day=0.0, vol_multiplier=2.0, trade_rate_multiplier=1.8),
)

# Hourly transition probabilities, rows = from, columns = to, in DEFAULT_REGIMES order.
# Regimes are sticky (a few hours on average) and trends tend to end in calm or volatility.
DEFAULT_TRANSITIONS: tuple[tuple[float, ...], ...] = (
    (0.92, 0.03, 0.03, 0.02),
    (0.06, 0.90, 0.01, 0.03),
    (0.06, 0.01, 0.90, 0.03),
    (0.10, 0.04, 0.04, 0.82),
)


@dataclass(frozen=True)
class DriftShift:
    """A distribution shift: trades at or after `at` get more volatile, bigger and more frequent."""

    at: datetime = field(metadata={"help": "UTC instant; trades at or after it are shifted"})
    vol_multiplier: float = field(default=3.0, metadata={"help": "multiplier on return volatility"})
    drift_per_day: float = field(
        default=-0.02, metadata={"help": "log-return drift per day added after the shift"}
    )
    volume_multiplier: float = field(default=2.0, metadata={"help": "multiplier on trade size"})
    trade_rate_multiplier: float = field(
        default=1.5, metadata={"help": "multiplier on the number of trades per unit of time"}
    )

    def __post_init__(self) -> None:
        # A naive datetime is taken as UTC, so "2024-01-03T00:00:00" means what it says.
        if self.at.tzinfo is None:
            object.__setattr__(self, "at", self.at.replace(tzinfo=UTC))
        for name in ("vol_multiplier", "volume_multiplier", "trade_rate_multiplier"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DriftShift.{name} must be > 0")

    @property
    def at_us(self) -> int:
        """The shift instant as microseconds since the Unix epoch."""
        return _epoch_us(self.at)


# Stands in for "no shift": it never happens, and every multiplier is 1.
_NO_SHIFT = DriftShift(
    at=datetime.max.replace(tzinfo=UTC),
    vol_multiplier=1.0,
    drift_per_day=0.0,
    volume_multiplier=1.0,
    trade_rate_multiplier=1.0,
)


def default_symbols(n: int = 5) -> tuple[str, ...]:
    """n synthetic tickers: SIMA, SIMB, ..., SIMZ, SIMAA, SIMAB, ..."""
    if n < 1:
        raise ValueError("need at least one symbol")
    names = []
    for i in range(1, n + 1):
        # Bijective base 26, like spreadsheet columns, so names never collide.
        suffix = ""
        while i:
            i, rem = divmod(i - 1, 26)
            suffix = chr(ord("A") + rem) + suffix
        names.append("SIM" + suffix)
    return tuple(names)


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything that determines the simulated trades; equal configs give equal data."""

    symbols: tuple[str, ...] = field(
        default=default_symbols(5), metadata={"help": "ticker names, one random stream each"}
    )
    seed: int = field(default=7, metadata={"help": "master seed (>= 0)"})
    trades_per_day: int = field(
        default=10_000, metadata={"help": "average trades per symbol per day, before any shift"}
    )
    start_price: float = field(
        default=100.0, metadata={"help": "opening price of every symbol on anchor_day"}
    )
    anchor_day: date = field(
        default=date(2024, 1, 1),
        metadata={"help": "day whose opening price is start_price; other opens follow a walk"},
    )
    base_daily_vol: float = field(
        default=0.02, metadata={"help": "standard deviation of log returns over one session"}
    )
    qty_median: float = field(default=0.05, metadata={"help": "median trade size"})
    qty_sigma: float = field(default=1.0, metadata={"help": "sigma of log trade size"})
    session_start: time = field(
        default=time(0, 0), metadata={"help": "UTC time of day when trading opens"}
    )
    session_hours: float = field(
        default=24.0, metadata={"help": "length of the session; 24 means round the clock"}
    )
    regimes: tuple[Regime, ...] = field(
        default=DEFAULT_REGIMES, metadata={"help": "market regimes the Markov chain moves between"}
    )
    regime_transitions: tuple[tuple[float, ...], ...] = field(
        default=DEFAULT_TRANSITIONS,
        metadata={"help": "hourly transition matrix between regimes (rows sum to 1)"},
    )
    shift: DriftShift | None = field(
        default=None, metadata={"help": "optional distribution shift injected at shift.at"}
    )

    def __post_init__(self) -> None:
        # Accept any sequence of symbols but store a tuple so the config stays hashable.
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if not self.symbols or len(set(self.symbols)) != len(self.symbols):
            raise ValueError("symbols must be non-empty and unique")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.trades_per_day <= 0:
            raise ValueError("trades_per_day must be > 0")
        if self.start_price <= 0 or self.base_daily_vol < 0 or self.qty_median <= 0:
            raise ValueError("start_price and qty_median must be > 0, base_daily_vol >= 0")
        start_h = self.session_start.hour + self.session_start.minute / 60
        if not 0 < self.session_hours <= 24 - start_h + 1e-9:
            raise ValueError("the session must be non-empty and end within the UTC day")
        matrix = np.asarray(self.regime_transitions, dtype=float)
        n = len(self.regimes)
        if n == 0 or matrix.shape != (n, n):
            raise ValueError("regime_transitions must be a square matrix, one row per regime")
        if (matrix < 0).any() or not np.allclose(matrix.sum(axis=1), 1.0):
            raise ValueError("each row of regime_transitions must be probabilities summing to 1")


# --------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------


def _epoch_us(moment: datetime) -> int:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _day_start_us(day: date) -> int:
    return (day.toordinal() - date(1970, 1, 1).toordinal()) * US_PER_DAY


def _symbol_key(symbol: str) -> int:
    # crc32 is stable across processes (unlike hash()), which determinism needs.
    return zlib.crc32(symbol.encode("utf-8"))


class MarketSimulator:
    """Generates one day of trades at a time; see the module docstring for the model."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        cfg = self.config
        self._transitions = np.asarray(cfg.regime_transitions, dtype=float)
        self._cum_transitions = np.cumsum(self._transitions, axis=1)
        self._stationary = _stationary_distribution(self._transitions)
        self._drift = np.array([r.drift_per_day for r in cfg.regimes])
        self._vol = np.array([r.vol_multiplier for r in cfg.regimes]) * cfg.base_daily_vol
        rate_mult = np.array([r.trade_rate_multiplier for r in cfg.regimes])
        # Normalise so the long-run average is trades_per_day whatever the regime multipliers.
        self._rate_mult = rate_mult / float(self._stationary @ rate_mult)
        self._session_offset_us = (
            cfg.session_start.hour * 3600 + cfg.session_start.minute * 60 + cfg.session_start.second
        ) * 1_000_000 + cfg.session_start.microsecond
        self._session_us = round(cfg.session_hours * US_PER_HOUR)

    # -- public -------------------------------------------------------------------------------

    def trades_for_day(self, day: date) -> pa.Table:
        """All trades of `day` (a UTC calendar day), grouped by symbol and sorted by time."""
        seg_start, seg_len, seg_regime, seg_shifted = self._segments(day)
        parts = [
            self._symbol_day(symbol, day, seg_start, seg_len, seg_regime, seg_shifted)
            for symbol in self.config.symbols
        ]
        counts = np.array([len(p["trade_id"]) for p in parts], dtype=np.int64)

        def concat(name: str) -> np.ndarray:
            return np.concatenate([p[name] for p in parts])

        # Dictionary arrays build the repeated string columns without Python string objects.
        symbols = pa.DictionaryArray.from_arrays(
            pa.array(np.repeat(np.arange(len(parts), dtype=np.int32), counts)),
            pa.array(self.config.symbols, pa.string()),
        ).cast(pa.string())
        regimes = pa.DictionaryArray.from_arrays(
            pa.array(concat("regime").astype(np.int32)),
            pa.array([r.name for r in self.config.regimes], pa.string()),
        ).cast(pa.string())
        columns = [
            symbols,
            pa.array(concat("trade_id"), pa.int64()),
            pa.array(concat("ts"), pa.timestamp("us", tz="UTC")),
            pa.array(concat("price"), pa.float64()),
            pa.array(concat("qty"), pa.float64()),
            pa.array(concat("is_buyer_maker"), pa.bool_()),
            regimes,
        ]
        return pa.Table.from_arrays(columns, schema=TRADE_SCHEMA)

    def trades(self, start: date, days: int) -> Iterator[tuple[date, pa.Table]]:
        """Yield (day, table) for `days` consecutive days from `start`."""
        for offset in range(days):
            day = start + timedelta(days=offset)
            yield day, self.trades_for_day(day)

    def opening_price(self, symbol: str, day: date) -> float:
        """The deterministic opening price of `symbol` on `day` (before rounding)."""
        return float(np.exp(self._log_open(symbol, day)))

    def regime_path(self, day: date) -> list[str]:
        """The regime in force in each hour of the session of `day`."""
        return [self.config.regimes[i].name for i in self._hourly_regimes(day)]

    # -- the day's time grid ------------------------------------------------------------------

    def _hourly_regimes(self, day: date) -> np.ndarray:
        n_hours = -(-self._session_us // US_PER_HOUR)
        rng = np.random.default_rng([self.config.seed, _REGIME_STREAM, day.toordinal()])
        u = rng.random(n_hours)
        # Each day starts from the stationary law, so no earlier day needs simulating.
        states = np.empty(n_hours, dtype=np.int64)
        states[0] = _pick(np.cumsum(self._stationary), u[0])
        for h in range(1, n_hours):  # one step per hour: at most 24 iterations
            states[h] = _pick(self._cum_transitions[states[h - 1]], u[h])
        return states

    def _segments(self, day: date) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Split the session into pieces of constant regime and shift state (epoch us)."""
        open_us = _day_start_us(day) + self._session_offset_us
        close_us = open_us + self._session_us
        edges = [*range(open_us, close_us, US_PER_HOUR), close_us]
        regimes = list(self._hourly_regimes(day))
        shift = self.config.shift or _NO_SHIFT
        if open_us < shift.at_us < close_us:
            # Cut the hour that contains the shift so the change happens exactly at `at`.
            k = int(np.searchsorted(edges, shift.at_us, side="right"))
            if edges[k - 1] != shift.at_us:
                edges.insert(k, shift.at_us)
                regimes.insert(k - 1, regimes[k - 1])
        starts = np.array(edges[:-1], dtype=np.int64)
        lengths = np.diff(np.array(edges, dtype=np.int64))
        return starts, lengths, np.array(regimes, dtype=np.int64), starts >= shift.at_us

    # -- opening prices -----------------------------------------------------------------------

    def _daily_log_returns(self, symbol: str, block: int) -> np.ndarray:
        """Open-to-next-open log returns of the days in one block (day 0 = anchor_day)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, _DAILY_STREAM, _symbol_key(symbol), block + 2**31])
        z = rng.standard_normal(_DAILY_BLOCK)
        first = cfg.anchor_day.toordinal() + block * _DAILY_BLOCK
        ordinals = np.arange(first, first + _DAILY_BLOCK)
        # Share of each day's session that lies after the shift: that share gets the shifted law.
        shift = cfg.shift or _NO_SHIFT
        opens = (ordinals - date(1970, 1, 1).toordinal()) * US_PER_DAY + self._session_offset_us
        frac = np.clip((opens + self._session_us - shift.at_us) / self._session_us, 0.0, 1.0)
        drift = frac * shift.drift_per_day
        var = cfg.base_daily_vol**2 * (1 - frac + frac * shift.vol_multiplier**2)
        return drift + np.sqrt(var) * z

    def _log_open(self, symbol: str, day: date) -> float:
        offset = day.toordinal() - self.config.anchor_day.toordinal()
        total = 0.0
        if offset >= 0:
            # Sum the returns of the days [anchor, day): whole blocks, then part of one.
            full, rest = divmod(offset, _DAILY_BLOCK)
            for block in range(full):
                total += float(self._daily_log_returns(symbol, block).sum())
            total += float(self._daily_log_returns(symbol, full)[:rest].sum())
        else:
            # Walk backwards: the open of `day` is the anchor open minus the returns in between.
            block, first = divmod(offset, _DAILY_BLOCK)
            total -= float(self._daily_log_returns(symbol, block)[first:].sum())
            for b in range(block + 1, 0):
                total -= float(self._daily_log_returns(symbol, b).sum())
        return float(np.log(self.config.start_price)) + total

    # -- one symbol, one day ------------------------------------------------------------------

    def _symbol_day(
        self,
        symbol: str,
        day: date,
        seg_start: np.ndarray,
        seg_len: np.ndarray,
        seg_regime: np.ndarray,
        seg_shifted: np.ndarray,
    ) -> dict[str, np.ndarray]:
        cfg = self.config
        shift = cfg.shift or _NO_SHIFT
        # One stream per quantity, so a shift later in the day leaves earlier draws alone.
        seeds = np.random.SeedSequence(
            [cfg.seed, _TRADE_STREAM, _symbol_key(symbol), day.toordinal()]
        )
        count_rng, time_rng, move_rng, size_rng, side_rng = map(
            np.random.default_rng, seeds.spawn(5)
        )

        # Trade times: Poisson counts per segment, uniform times inside each segment.
        rate = self._rate_mult[seg_regime] * np.where(seg_shifted, shift.trade_rate_multiplier, 1)
        counts = count_rng.poisson(cfg.trades_per_day * rate * seg_len / self._session_us)
        n = int(counts.sum())
        if n >= TRADE_ID_STRIDE:
            raise ValueError(f"{n} trades for {symbol} on {day}: over {TRADE_ID_STRIDE - 1}")
        seg_of = np.repeat(np.arange(len(seg_len)), counts)
        ts = seg_start[seg_of] + (time_rng.random(n) * seg_len[seg_of]).astype(np.int64)
        # Segments are disjoint and in order, so a global sort keeps seg_of aligned with ts.
        ts.sort()

        # Log-price steps between trades, with time measured in sessions (1.0 = whole session).
        drift = self._drift[seg_regime] + np.where(seg_shifted, shift.drift_per_day, 0)
        vol = self._vol[seg_regime] * np.where(seg_shifted, shift.vol_multiplier, 1)
        session_open = int(seg_start[0])
        session_close = session_open + self._session_us
        # One extra step from the last trade to the close, so the bridge can pin the close.
        times = np.append(ts, session_close)
        seg_all = np.append(seg_of, len(seg_len) - 1)
        dt = np.diff(times, prepend=session_open) / self._session_us
        z = move_rng.standard_normal(n + 1)
        path = np.cumsum(drift[seg_all] * dt + vol[seg_all] * np.sqrt(dt) * z)

        # Brownian bridge: bend the free path so the close lands on the next day's open, so days
        # join up. On the day of a shift the bend starts at the shift: the next open depends on
        # the shifted draws, and prices before the shift must not.
        log_open = self._log_open(symbol, day)
        gap = self._log_open(symbol, day + timedelta(days=1)) - log_open - path[-1]
        bend_from = shift.at_us if session_open < shift.at_us < session_close else session_open
        weight = np.clip((ts - bend_from) / (session_close - bend_from), 0.0, 1.0)
        log_price = log_open + path[:-1] + gap * weight
        price = np.maximum(np.round(np.exp(log_price), 2), 0.01)

        # Sizes: lognormal, bigger after the shift.
        qty = size_rng.lognormal(np.log(cfg.qty_median), cfg.qty_sigma, n)
        qty = qty * np.where(seg_shifted[seg_of], shift.volume_multiplier, 1)
        qty = np.maximum(np.round(qty, 6), 1e-6)
        # Aggressor side follows the price move: a down-move is more likely a seller hitting the
        # bid, i.e. the buyer is the maker.
        is_buyer_maker = (z[:-1] + side_rng.standard_normal(n)) < 0

        return {
            "trade_id": day.toordinal() * TRADE_ID_STRIDE + np.arange(n, dtype=np.int64),
            "ts": ts,
            "price": price,
            "qty": qty,
            "is_buyer_maker": is_buyer_maker,
            "regime": seg_regime[seg_of],
        }


def _pick(cumulative: np.ndarray, u: float) -> int:
    # Inverse-CDF draw; the clamp guards against cumulative sums ending a hair below 1.
    return min(int(np.searchsorted(cumulative, u, side="right")), len(cumulative) - 1)


def _stationary_distribution(transitions: np.ndarray) -> np.ndarray:
    # Power iteration: the chains here are small and mixing, so this converges fast.
    p = np.full(len(transitions), 1.0 / len(transitions))
    for _ in range(10_000):
        nxt = p @ transitions
        if np.abs(nxt - p).max() < 1e-13:
            break
        p = nxt
    return nxt / nxt.sum()


# --------------------------------------------------------------------------------------------
# Writers (all atomic: a temp file in the same folder, then os.replace)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; move it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fixed_decimals(values: np.ndarray, scale: int = 8) -> pa.Array:
    """Non-negative numbers as fixed-point text: "42283.58000000", "0.00000001", never "1E-8"."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) and not (values.min() >= 0 and values.max() < 9e18 / 10**scale):
        raise ValueError("fixed-point output needs values in [0, 9e10)")
    # Arrow's decimal-to-text switches to exponents below 1e-6, so print two integers instead.
    whole, frac = np.divmod(np.round(values * 10**scale).astype(np.int64), 10**scale)
    frac_text = pc.utf8_lpad(pa.array(frac).cast(pa.string()), scale, "0")
    return pc.binary_join_element_wise(pa.array(whole).cast(pa.string()), frac_text, ".")


def _split_by_symbol_day(table: pa.Table) -> list[tuple[str, date, pa.Table]]:
    """(symbol, UTC day, rows sorted by trade_id) for each symbol and day in the table."""
    ts_us = table["ts"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    day_index = ts_us // US_PER_DAY
    symbols = table["symbol"].combine_chunks().dictionary_encode()
    sym_index = symbols.indices.to_numpy().astype(np.int64)
    trade_id = table["trade_id"].to_numpy()
    # Each (symbol, day) group gets its own key; sorting by (key, trade_id) makes every group one
    # contiguous run, and slices of the result are zero-copy.
    key = sym_index * (1 << 32) + (day_index - day_index.min())
    step_key, step_id = np.diff(key), np.diff(trade_id)
    if ((step_key > 0) | ((step_key == 0) & (step_id > 0))).all():
        # Simulator output is already in this order: skip the sort and the copy.
        ordered = table
    else:
        order = np.lexsort((trade_id, key))
        ordered, key = table.take(order), key[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
    ends = np.append(starts[1:], len(key))
    group_sym = symbols.dictionary.take(pa.array(key[starts] >> 32)).to_pylist()
    group_day = (key[starts] & 0xFFFFFFFF) + day_index.min()
    epoch = date(1970, 1, 1)
    return [
        (sym, epoch + timedelta(days=int(day)), ordered.slice(lo, hi - lo))
        for sym, day, lo, hi in zip(group_sym, group_day, starts, ends, strict=True)
    ]


def _write_binance_file(rows: pa.Table, path: Path, time_unit: str) -> None:
    ts_us = rows["ts"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    price = rows["price"].to_numpy()
    qty = rows["qty"].to_numpy()
    dump = pa.table(
        {
            "id": rows["trade_id"],
            "price": _fixed_decimals(price),
            "qty": _fixed_decimals(qty),
            "quote_qty": _fixed_decimals(np.round(price * qty, 8)),
            "time": ts_us // 1000 if time_unit == "ms" else ts_us,
            # Binance writes Python-style booleans.
            "is_buyer_maker": pc.if_else(rows["is_buyer_maker"], "True", "False"),
            "is_best_match": pa.repeat("True", rows.num_rows),
        }
    )
    with _atomic_path(path) as tmp:
        pa_csv.write_csv(dump, tmp, pa_csv.WriteOptions(include_header=False, quoting_style="none"))


def write_binance_trades(table: pa.Table, out_dir: str | Path, time_unit: str = "ms") -> list[Path]:
    """Write Binance spot trade dumps: one headerless `{SYMBOL}-trades-{YYYY-MM-DD}.csv` per
    symbol and UTC day, columns id,price,qty,quote_qty,time,is_buyer_maker,is_best_match."""
    if time_unit not in ("ms", "us"):
        raise ValueError("time_unit must be 'ms' or 'us'")
    if table.num_rows == 0:
        return []
    groups = _split_by_symbol_day(
        table.select(["symbol", "trade_id", "ts", "price", "qty", "is_buyer_maker"])
    )
    paths = [Path(out_dir) / f"{sym}-trades-{day.isoformat()}.csv" for sym, day, _ in groups]
    # Arrow's formatting and writing release the GIL, so files are written in parallel.
    workers = max(1, min(len(groups), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        # list() waits for every file and re-raises the first error.
        list(pool.map(_write_binance_file, [g[2] for g in groups], paths, [time_unit] * len(paths)))
    return paths


def write_csv(table: pa.Table, path: str | Path) -> Path:
    """Write a CSV with a header: symbol,trade_id,ts,price,qty,is_buyer_maker (ts in ISO UTC)."""
    path = Path(path)
    columns = ["symbol", "trade_id", "ts", "price", "qty", "is_buyer_maker"]
    # Format the naive UTC wall time and add the "Z": casting the tz-aware column (or strftime)
    # looks the zone up per value and is ~20x slower.
    wall = table["ts"].cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
    iso = pc.replace_substring(wall.cast(pa.string()), " ", "T", max_replacements=1)
    out = table.select(columns).set_column(2, "ts", pc.binary_join_element_wise(iso, "Z", ""))
    with _atomic_path(path) as tmp, tmp.open("wb") as fh:
        # The header is written by hand because Arrow always quotes header names.
        fh.write((",".join(columns) + "\n").encode())
        pa_csv.write_csv(out, fh, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    return path


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write the table as Parquet (all columns, including the regime)."""
    path = Path(path)
    with _atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_utc(text: str) -> datetime:
    """An ISO instant as an aware UTC datetime (a naive one is taken as UTC)."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_symbols(text: str) -> tuple[str, ...]:
    # "--symbols 5" asks for 5 synthetic names; "--symbols BTC,ETH" names them.
    if text.isdigit():
        return default_symbols(int(text))
    return tuple(s.strip() for s in text.split(",") if s.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m assets.live.simulator", description="Write simulated market trades."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--start", required=True, type=date.fromisoformat, help="first UTC day")
    parser.add_argument("--days", type=int, default=1, help="number of days")
    parser.add_argument(
        "--symbols", type=_parse_symbols, default=default_symbols(5), help="count or A,B,C"
    )
    parser.add_argument("--trades-per-day", type=int, default=10_000, help="per symbol")
    parser.add_argument(
        "--format", choices=("binance-trades", "csv", "parquet"), default="binance-trades"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--time-unit", choices=("ms", "us"), default="ms", help="binance only")
    parser.add_argument("--shift-at", type=parse_utc, default=None, help="UTC instant")
    args = parser.parse_args(argv)

    config = SimulatorConfig(
        symbols=args.symbols,
        seed=args.seed,
        trades_per_day=args.trades_per_day,
        shift=DriftShift(at=args.shift_at) if args.shift_at else None,
    )
    simulator = MarketSimulator(config)
    for day, table in simulator.trades(args.start, args.days):
        if args.format == "binance-trades":
            paths = write_binance_trades(table, args.out, time_unit=args.time_unit)
            # Headerless files: one line per trade.
            rows = [_count_lines(path) for path in paths]
        elif args.format == "csv":
            paths = [write_csv(table, args.out / f"trades-{day.isoformat()}.csv")]
            rows = [table.num_rows]
        else:
            paths = [write_parquet(table, args.out / f"trades-{day.isoformat()}.parquet")]
            rows = [table.num_rows]
        for path, count in zip(paths, rows, strict=True):
            print(f"{path}\t{count} rows")
    return 0


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


if __name__ == "__main__":
    raise SystemExit(main())
