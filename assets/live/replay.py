"""Offline replay server: a local websocket that streams trades like Binance's spot trade stream.

``python -m assets.live.replay`` serves, on ``ws://127.0.0.1:8765`` by default, either landed
``binance-trades`` files (``--files`` a folder, a glob or a storage prefix such as
``landing/sim-trades``) or trades simulated on the fly (``--symbols``, ``--start``, ``--days``,
``--seed``, ``--shift-at`` for a regime/drift shift), merged across symbols in trade-time order,
at ``--speed`` times real time (``--speed 0``: as fast as the socket takes them).

Why it exists: the live collector (:mod:`assets.live.collector`) must be tested and benchmarked
without a network, and against a stream that is known exactly, so that "every message landed once"
can be checked id by id. The server therefore speaks the exchange's wire format:

- path ``/`` or ``/ws``: every symbol, one raw trade event per message
  (``{"e":"trade","E":…,"s":"BTCUSDT","t":…,"p":"…","q":"…","T":…,"m":…,"M":true}``);
- ``/ws/btcusdt@trade/ethusdt@trade``: only those symbols (Binance's raw-stream URL);
- ``/stream?streams=btcusdt@trade/ethusdt@trade`` (or ``/stream`` for all): each event wrapped
  as ``{"stream":"btcusdt@trade","data":{…}}`` (Binance's combined-stream URL).

**Resume protocol.** Every connection gets the stream from its beginning, except that the query
parameter ``fromId=SYMBOL:ID,SYMBOL:ID`` starts each named symbol at trade id ``ID``: trades with
smaller ids are skipped (symbols not named start from the beginning). Inclusive, as ``fromId``
of Binance's REST ``historicalTrades``. The collector sends it on each (re)connect with one past
the highest id it holds, so a reconnect or a restart neither loses nor repeats trades. Real
Binance has no such parameter on its streams; there the collector fills the gap over REST
instead (see :class:`assets.live.collector.BinanceRestGapFill`).

When the stream is exhausted a connection stays open and idle, as a quiet market would, unless
``loop`` (replay again with ids and times shifted past the previous pass, so the stream keeps
looking live) or ``close_at_end``. The server keeps accepting new connections until stopped;
``--exit-when-done`` stops it once one connection has been sent the whole stream.

Trades are read one UTC day at a time (landed files grouped by the date in their name, or one
simulated day), in a worker thread, so memory stays bounded by a day and other connections are
not stalled while a day is prepared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from assets.core.storage import Storage
from assets.live.simulator import (
    BINANCE_TRADE_COLUMNS,
    DriftShift,
    MarketSimulator,
    SimulatorConfig,
    default_symbols,
    parse_utc,
)
from assets.live.wire import SYMBOL_NAME, combined_message, parse_from_ids, trade_message

# Named, not __name__: under "python -m" that would be "__main__".
log = logging.getLogger("assets.live.replay")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# File names as feeds.yaml's binance-trades feeds read them: symbol first, the UTC day after it.
SYMBOL_FROM_FILENAME = re.compile(r"^(?P<symbol>[A-Z0-9]+)-trades-")
DATE_IN_FILENAME = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})")
DECIMAL_TEXT = re.compile(r"^\d+(\.\d+)?$")
US_PER_MS = 1_000
# Give other connections a turn after this many messages, even when no send had to wait.
YIELD_EVERY = 1_000


# --------------------------------------------------------------------------------------------
# Trades, one day at a time
# --------------------------------------------------------------------------------------------
@dataclass
class TradeDay:
    """Trades of one UTC day, all symbols, sorted by (time, symbol, id): the order they are sent.

    Prices and quantities are kept as decimal text, exactly as a file holds them, so the replay
    sends what was landed, not a float's re-rendering of it."""

    symbols: list[str]
    trade_ids: list[int]
    time_us: list[int]
    prices: list[str]
    quantities: list[str]
    buyer_is_maker: list[bool]

    def __len__(self) -> int:
        return len(self.trade_ids)

    @classmethod
    def from_columns(
        cls,
        symbols: np.ndarray,
        trade_ids: np.ndarray,
        time_us: np.ndarray,
        prices: np.ndarray,
        quantities: np.ndarray,
        buyer_is_maker: np.ndarray,
    ) -> TradeDay:
        # Sorting by symbol between equal times makes the merge deterministic (ms ties are common).
        order = np.lexsort((trade_ids, symbols, time_us))
        return cls(
            symbols=symbols[order].tolist(),
            trade_ids=trade_ids[order].tolist(),
            time_us=time_us[order].tolist(),
            prices=prices[order].tolist(),
            quantities=quantities[order].tolist(),
            buyer_is_maker=buyer_is_maker[order].tolist(),
        )


class TradeSource:
    """Where replayed trades come from: an iterator of days, each read when it is reached."""

    def days(self) -> Iterator[TradeDay]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def epoch_to_us(values: np.ndarray) -> np.ndarray:
    """Epoch numbers to microseconds, unit chosen by magnitude as the binance-trades reader does
    (``timestamp.unit: auto``): Binance spot dumps moved from milliseconds to microseconds."""
    values = np.asarray(values, dtype=np.int64)
    magnitude = np.abs(values)
    return np.select(
        [magnitude >= 10**17, magnitude >= 10**14, magnitude >= 10**11],
        [values // 1_000, values, values * 1_000],
        default=values * 1_000_000,
    )


@dataclass(frozen=True)
class LandedTradeFile:
    """One binance-trades file to replay: its name, symbol, day, and how to get a local copy."""

    name: str
    symbol: str
    day: str  # "" when the name carries no date: such files are replayed first
    open_local: Callable[[], contextlib.AbstractContextManager[Path]]


def read_binance_trades(path: Path, symbol: str) -> tuple[dict[str, np.ndarray], int]:
    """Columns of one binance-trades CSV (header optional, .gz fine) and the number of lines
    skipped as unreadable. A replay tool should not stop at a bad line the ingestion would
    quarantine, so such lines are skipped and counted instead."""
    # Newer dumps start with a header "id,price,…"; older ones, and ours, have none.
    with pa.input_stream(str(path), compression="detect") as stream:
        first_field = stream.read(16).split(b",", 1)[0].strip().lower()
    table = pa_csv.read_csv(
        str(path),
        read_options=pa_csv.ReadOptions(
            column_names=list(BINANCE_TRADE_COLUMNS), skip_rows=1 if first_field == b"id" else 0
        ),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=lambda _row: "skip"),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in BINANCE_TRADE_COLUMNS}
        ),
    )
    digits = r"^\d{1,18}$"
    valid = pc.and_(
        pc.and_(
            pc.match_substring_regex(table["id"], digits),
            pc.match_substring_regex(table["time"], digits),
        ),
        pc.and_(
            pc.match_substring_regex(table["price"], DECIMAL_TEXT.pattern),
            pc.match_substring_regex(table["qty"], DECIMAL_TEXT.pattern),
        ),
    )
    good = table.filter(pc.fill_null(valid, False))
    skipped = table.num_rows - good.num_rows
    columns = {
        "symbols": np.full(good.num_rows, symbol, dtype=object),
        "trade_ids": good["id"].cast(pa.int64()).to_numpy(),
        "time_us": epoch_to_us(good["time"].cast(pa.int64()).to_numpy()),
        "prices": np.asarray(good["price"].to_pylist(), dtype=object),
        "quantities": np.asarray(good["qty"].to_pylist(), dtype=object),
        "buyer_is_maker": pc.equal(pc.utf8_lower(good["is_buyer_maker"]), "true")
        .fill_null(False)
        .to_numpy(zero_copy_only=False),
    }
    return columns, skipped


class LandedFilesSource(TradeSource):
    """Landed binance-trades files, replayed day by day (files grouped by the date in their
    name). A file whose trades stray outside its named day is still replayed whole with it."""

    def __init__(self, files: Sequence[LandedTradeFile], label: str = "landed files") -> None:
        if not files:
            raise ValueError(f"no binance-trades files found in {label}")
        self.files = sorted(files, key=lambda f: (f.day, f.name))
        self.label = label

    @classmethod
    def from_location(cls, location: str, storage: Storage | None = None) -> LandedFilesSource:
        """A glob (``data/*.csv``), a local file or folder (every ``*.csv``/``*.csv.gz`` below
        it), or else a prefix under the storage root (``landing/sim-trades``)."""
        if glob.has_magic(location):
            paths = [Path(p) for p in sorted(glob.glob(location, recursive=True))]
            return cls([_local_file(p) for p in paths if p.is_file()], location)
        local = Path(location)
        if local.is_file():
            return cls([_local_file(local)], location)
        if local.is_dir():
            paths = sorted(p for p in local.rglob("*") if p.is_file() and _is_trade_file(p.name))
            return cls([_local_file(p) for p in paths], location)
        if storage is None:
            raise ValueError(f"{location!r} is neither a glob nor a local file or folder")
        files = []
        for info in storage.list_files(location.strip("/")):
            name = info.path.rsplit("/", 1)[-1]
            if _is_trade_file(name):
                rel = info.path
                files.append(
                    LandedTradeFile(name, _symbol_of(name), _day_of(name), _opener(storage, rel))
                )
        return cls(files, storage.uri(location))

    def describe(self) -> str:
        return f"{len(self.files)} binance-trades files from {self.label}"

    def days(self) -> Iterator[TradeDay]:
        by_day: dict[str, list[LandedTradeFile]] = {}
        for f in self.files:
            by_day.setdefault(f.day, []).append(f)
        for day, files in by_day.items():
            parts = []
            for f in files:
                with f.open_local() as local:
                    columns, skipped = read_binance_trades(local, f.symbol)
                if skipped:
                    log.warning("%s: skipped %d unreadable lines", f.name, skipped)
                parts.append(columns)
            merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
            log.debug("replaying day %s: %d trades", day or "(undated)", len(merged["trade_ids"]))
            yield TradeDay.from_columns(**merged)


def _is_trade_file(name: str) -> bool:
    return bool(SYMBOL_FROM_FILENAME.match(name)) and name.endswith((".csv", ".csv.gz"))


def _symbol_of(name: str) -> str:
    match = SYMBOL_FROM_FILENAME.match(name)
    if not match:
        raise ValueError(f"{name!r}: no symbol in the name (expected SYMBOL-trades-…)")
    return match.group("symbol")


def _day_of(name: str) -> str:
    match = DATE_IN_FILENAME.search(name)
    return match.group("date") if match else ""


def _local_file(path: Path) -> LandedTradeFile:
    return LandedTradeFile(
        path.name,
        _symbol_of(path.name),
        _day_of(path.name),
        lambda: contextlib.nullcontext(path),
    )


def _opener(storage: Storage, rel: str) -> Callable[[], contextlib.AbstractContextManager[Path]]:
    return lambda: storage.local_copy(rel)


class SimulatorSource(TradeSource):
    """Trades of :class:`assets.live.simulator.MarketSimulator`, generated one day at a time.

    Prices and sizes are rendered with 8 decimals, as ``write_binance_trades`` writes them, so a
    replayed simulation lands the same text as the simulator's own dump files."""

    def __init__(self, config: SimulatorConfig, start: date, days: int = 1) -> None:
        if days < 1:
            raise ValueError("days must be >= 1")
        self.config, self.start, self.n_days = config, start, days
        self.simulator = MarketSimulator(config)

    def describe(self) -> str:
        shift = f", shift at {self.config.shift.at.isoformat()}" if self.config.shift else ""
        return (
            f"simulator: {len(self.config.symbols)} symbols, {self.n_days} days from "
            f"{self.start}, seed {self.config.seed}{shift}"
        )

    def days(self) -> Iterator[TradeDay]:
        for _day, table in self.simulator.trades(self.start, self.n_days):
            time_us = table["ts"].cast(pa.int64()).to_numpy()
            yield TradeDay.from_columns(
                symbols=np.asarray(table["symbol"].to_pylist(), dtype=object),
                trade_ids=table["trade_id"].to_numpy(),
                time_us=time_us,
                prices=np.asarray([f"{p:.8f}" for p in table["price"].to_pylist()], dtype=object),
                quantities=np.asarray([f"{q:.8f}" for q in table["qty"].to_pylist()], dtype=object),
                buyer_is_maker=table["is_buyer_maker"].to_numpy(zero_copy_only=False),
            )


# --------------------------------------------------------------------------------------------
# The request path (the messages themselves: assets/live/wire.py)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamRequest:
    """What a connection asked for: which symbols (None: all), wrapper or not, resume point."""

    symbols: frozenset[str] | None
    combined: bool
    from_ids: dict[str, int]


def _stream_symbols(streams: Sequence[str]) -> frozenset[str] | None:
    symbols = set()
    for stream in filter(None, streams):
        name, sep, kind = stream.partition("@")
        if sep and kind != "trade":
            raise ValueError(f"stream {stream!r}: only <symbol>@trade streams are replayed")
        if not SYMBOL_NAME.match(name.upper()):
            raise ValueError(f"stream {stream!r}: not a symbol")
        symbols.add(name.upper())
    return frozenset(symbols) or None


def parse_stream_request(path: str) -> StreamRequest:
    """Read a request path as Binance's stream URLs (see the module docstring)."""
    parts = urlsplit(path)
    query = parse_qs(parts.query)
    from_ids = parse_from_ids(",".join(query.get("fromId", [])))
    route = parts.path.rstrip("/")
    if route in ("", "/ws"):
        return StreamRequest(None, False, from_ids)
    if route.startswith("/ws/"):
        return StreamRequest(_stream_symbols(route[4:].split("/")), False, from_ids)
    if route == "/stream":
        streams = "/".join(query.get("streams", [])).split("/")
        return StreamRequest(_stream_symbols(streams), True, from_ids)
    raise LookupError(f"no stream at {parts.path!r}: use /ws, /ws/<symbol>@trade or /stream")


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------
class ReplayServer:
    """A websocket server replaying a :class:`TradeSource` to every connection.

    ``async with ReplayServer(source) as server: server.url`` starts it on a free port of
    127.0.0.1 (``port=0``). ``drop_after_messages`` aborts each connection (no close frame, as a
    network failure would) after that many messages: for reconnect tests."""

    def __init__(
        self,
        source: TradeSource,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        speed: float = 0.0,
        loop: bool = False,
        close_at_end: bool = False,
        drop_after_messages: int | None = None,
    ) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0: as fast as possible)")
        self.source = source
        self.host, self.port = host, port
        self.speed = speed
        self.loop = loop
        self.close_at_end = close_at_end
        self.drop_after_messages = drop_after_messages
        self.messages_sent = 0
        self.connections_served = 0
        self.stream_completed = asyncio.Event()  # set when a connection got the whole stream
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> ReplayServer:
        # No compression: on loopback bytes are free and zlib per message is not.
        self._server = await serve(
            self._serve_connection,
            self.host,
            self.port,
            process_request=self._check_request,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("replaying %s on %s (speed %s)", self.source.describe(), self.url, self.speed)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ReplayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_connections(self) -> int:
        """Abort every open connection at once, as a network failure would. Returns how many."""
        connections = list(self._server.connections) if self._server else []
        for connection in connections:
            connection.transport.abort()
        return len(connections)

    # -- one connection ---------------------------------------------------------------------
    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a bad path or fromId during the handshake, with the reason in the body."""
        try:
            parse_stream_request(request.path)
        except LookupError as exc:
            return connection.respond(HTTPStatus.NOT_FOUND, f"{exc}\n")
        except ValueError as exc:
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        request = parse_stream_request(connection.request.path)
        self.connections_served += 1
        log.info("connection %s: %s", connection.remote_address, connection.request.path)
        try:
            sent = await self._send_stream(connection, request)
        except ConnectionClosed:
            return
        except Exception:
            log.exception("replay to %s failed", connection.remote_address)
            await connection.close(1011, "replay failed")
            return
        if sent is None:  # dropped on purpose
            return
        log.info("connection %s: whole stream sent (%d messages)", connection.remote_address, sent)
        self.stream_completed.set()
        if self.close_at_end:
            await connection.close(1000, "end of replay")
        else:
            await connection.wait_closed()

    async def _send_stream(
        self, connection: ServerConnection, request: StreamRequest
    ) -> int | None:
        """Send the stream; the number of messages sent, or None if the connection was dropped
        on purpose (``drop_after_messages``)."""
        clock = asyncio.get_running_loop()
        sent = 0
        wall_start = first_time_us = None
        passes = 0
        # Loop mode: each pass is shifted past the previous one, ids per symbol, time overall.
        id_offset: dict[str, int] = {}
        time_offset = 0
        while True:
            # First and last id per symbol, first and last time: ids and times only grow.
            pass_first_id: dict[str, int] = {}
            pass_last_id: dict[str, int] = {}
            pass_first_time = pass_last_time = None
            async for day in _days_in_thread(self.source):
                for i in range(len(day)):
                    symbol = day.symbols[i]
                    trade_id = day.trade_ids[i] + id_offset.get(symbol, 0)
                    time_us = day.time_us[i] + time_offset
                    if self.loop:
                        pass_first_id.setdefault(symbol, trade_id)
                        pass_last_id[symbol] = trade_id
                        pass_first_time = time_us if pass_first_time is None else pass_first_time
                        pass_last_time = time_us
                    if request.symbols is not None and symbol not in request.symbols:
                        continue
                    if trade_id < request.from_ids.get(symbol, 0):
                        continue
                    if self.speed > 0:
                        if wall_start is None:
                            wall_start, first_time_us = clock.time(), time_us
                        due = wall_start + (time_us - first_time_us) / 1e6 / self.speed
                        if due - clock.time() > 0.001:
                            await asyncio.sleep(due - clock.time())
                    event = trade_message(
                        symbol,
                        trade_id,
                        time_us // US_PER_MS,
                        day.prices[i],
                        day.quantities[i],
                        day.buyer_is_maker[i],
                    )
                    await connection.send(
                        combined_message(symbol, event) if request.combined else event
                    )
                    sent += 1
                    self.messages_sent += 1
                    if self.drop_after_messages and sent >= self.drop_after_messages:
                        log.info("dropping %s after %d messages", connection.remote_address, sent)
                        connection.transport.abort()
                        return None
                    if sent % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
            passes += 1
            if not self.loop or pass_first_time is None:
                return sent
            for symbol, first_id in pass_first_id.items():
                id_offset[symbol] = id_offset.get(symbol, 0) + pass_last_id[symbol] - first_id + 1
            time_offset += pass_last_time - pass_first_time + US_PER_MS
            log.info("connection %s: pass %d done, looping", connection.remote_address, passes)


async def _days_in_thread(source: TradeSource) -> AsyncIterator[TradeDay]:
    """The source's days, each read or simulated in a worker thread."""
    days = source.days()
    while True:
        day = await asyncio.to_thread(next, days, None)
        if day is None:
            return
        yield day


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _parse_symbols(text: str) -> tuple[str, ...]:
    # "--symbols 3" asks for 3 synthetic names; "--symbols BTCUSDT,ETHUSDT" names them.
    if text.isdigit():
        return default_symbols(int(text))
    symbols = tuple(s.strip().upper() for s in text.split(",") if s.strip())
    for symbol in symbols:
        if not SYMBOL_NAME.match(symbol):
            raise argparse.ArgumentTypeError(f"{symbol!r}: symbols are letters and digits")
    return symbols


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m assets.live.replay",
        description="Replay trades as a Binance spot trade stream on a local websocket.",
    )
    source = parser.add_argument_group("source (landed files, else the simulator)")
    source.add_argument(
        "--files",
        help="binance-trades files: a glob, a local file or folder, or a storage prefix "
        "(e.g. landing/sim-trades under DD_STORAGE_ROOT)",
    )
    source.add_argument("--storage-root", help="storage root for a prefix (default: env)")
    source.add_argument("--symbols", type=_parse_symbols, default=default_symbols(3))
    source.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 2))
    source.add_argument("--days", type=int, default=1)
    source.add_argument("--seed", type=int, default=7)
    source.add_argument("--trades-per-day", type=int, default=10_000, help="per symbol")
    source.add_argument("--shift-at", type=parse_utc, help="UTC instant of a drift shift")
    source.add_argument("--shift-vol", type=float, default=3.0, help="volatility multiplier")
    source.add_argument("--shift-drift", type=float, default=-0.02, help="log drift per day")
    source.add_argument("--shift-volume", type=float, default=2.0, help="trade size multiplier")
    source.add_argument("--shift-rate", type=float, default=1.5, help="trade rate multiplier")
    serving = parser.add_argument_group("serving")
    serving.add_argument("--host", default=DEFAULT_HOST)
    serving.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: a free port")
    serving.add_argument("--speed", type=float, default=1.0, help="x real time; 0: no pacing")
    serving.add_argument("--loop", action="store_true", help="replay forever, shifted each pass")
    serving.add_argument(
        "--exit-when-done", action="store_true", help="stop once a connection got everything"
    )
    serving.add_argument("--drop-every", type=int, help="abort each connection after N messages")
    parser.add_argument("--log-level", default="INFO")
    return parser


def source_from_args(args: argparse.Namespace) -> TradeSource:
    if args.files:
        storage = None
        if args.storage_root:
            storage = Storage(args.storage_root)
        elif not glob.has_magic(args.files) and not Path(args.files).exists():
            from assets.core.settings import storage_settings_from_env

            storage = Storage(**storage_settings_from_env())
        return LandedFilesSource.from_location(args.files, storage)
    shift = None
    if args.shift_at:
        shift = DriftShift(
            at=args.shift_at,
            vol_multiplier=args.shift_vol,
            drift_per_day=args.shift_drift,
            volume_multiplier=args.shift_volume,
            trade_rate_multiplier=args.shift_rate,
        )
    config = SimulatorConfig(
        symbols=args.symbols, seed=args.seed, trades_per_day=args.trades_per_day, shift=shift
    )
    return SimulatorSource(config, args.start, args.days)


async def serve_until_stopped(server: ReplayServer, exit_when_done: bool) -> None:
    stop = asyncio.Event()
    clock = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        clock.add_signal_handler(signum, stop.set)
    async with server:
        # Scripts (and --port 0 users) read the address from this line.
        print(f"listening on {server.url}", flush=True)
        waits = [asyncio.create_task(stop.wait())]
        if exit_when_done:
            waits.append(asyncio.create_task(server.stream_completed.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
    log.info(
        "stopped after %d connections, %d messages", server.connections_served, server.messages_sent
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)  # we log connections ourselves
    if args.loop and args.exit_when_done:
        parser.error("--loop never finishes: it cannot be combined with --exit-when-done")
    try:
        source = source_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    server = ReplayServer(
        source,
        host=args.host,
        port=args.port,
        speed=args.speed,
        loop=args.loop,
        close_at_end=args.exit_when_done,
        drop_after_messages=args.drop_every,
    )
    asyncio.run(serve_until_stopped(server, args.exit_when_done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
