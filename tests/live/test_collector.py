"""Tests for the live trade collector (assets/live/collector.py) against the offline replay server
(assets/live/replay.py), all on 127.0.0.1.

What is replayed is known exactly (simulated trades), so every test compares the landed files,
read back with the project's own binance-trades reader, against the replayed trades id by id:
each replayed trade must land exactly once, with its price, size, time and side.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import http.server
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import InvalidStatus

from assets.core.feeds import FeedSpec, load_feeds
from assets.core.settings import feeds_file_from_env, storage_settings_from_env
from assets.core.storage import Storage
from assets.ingestion.ingest import ingest_partitions, new_connection, scan_landing
from assets.ingestion.readers import select_canonical
from assets.live.collector import (
    LANDED_NAME,
    BinanceRestGapFill,
    Collector,
    CollectorConfig,
    backoff_delay,
    landed_file_name,
    trade_row,
    with_query_param,
)
from assets.live.replay import (
    LandedFilesSource,
    ReplayServer,
    SimulatorSource,
    TradeSource,
)
from assets.live.simulator import MarketSimulator, SimulatorConfig, write_binance_trades
from assets.live.wire import parse_from_ids

REPO = Path(__file__).resolve().parents[2]
FEED: FeedSpec = load_feeds(REPO / "feeds.yaml")["live-trades"]
PREFIX = FEED.landing_prefix
START = date(2024, 1, 2)
LANDED_LOG = re.compile(
    r"landed (?P<rel>\S+) rows=(?P<rows>\d+) bytes=\d+ sha256=(?P<sha>[0-9a-f]{64})"
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Trade:
    symbol: str
    trade_id: int
    time_ms: int
    price: float
    size: float
    side: str


def sim_source(symbols: tuple[str, ...] = ("SIMA", "SIMB"), per_day: int = 1500, days: int = 2):
    config = SimulatorConfig(symbols=symbols, trades_per_day=per_day, seed=11)
    return SimulatorSource(config, START, days)


def replayed(source: TradeSource) -> list[Trade]:
    """Every trade the source replays, as the reader should give it back."""
    return [
        Trade(
            day.symbols[i],
            day.trade_ids[i],
            day.time_us[i] // 1000,
            float(day.prices[i]),
            float(day.quantities[i]),
            "sell" if day.buyer_is_maker[i] else "buy",
        )
        for day in source.days()
        for i in range(len(day))
    ]


def read_landed(storage: Storage) -> list[tuple[str, Trade]]:
    """(file name, trade) for every row of every landed file, through assets.ingestion.readers."""
    con = new_connection(threads=1)
    rows = []
    for info in storage.list_files(PREFIX):
        name = info.path.rsplit("/", 1)[-1]
        with storage.local_copy(info.path) as local:
            sql, _ = select_canonical(FEED, local, name)
            query = f"SELECT symbol, trade_id, epoch_ms(ts), price, size, side FROM ({sql})"
            rows += [(name, Trade(*row)) for row in con.execute(query).fetchall()]
    return rows


def assert_landed_exactly(storage: Storage, expected: list[Trade]) -> list[tuple[str, Trade]]:
    landed = read_landed(storage)
    counts = Counter((t.symbol, t.trade_id) for _, t in landed)
    repeated = {key: n for key, n in counts.items() if n > 1}
    assert not repeated, f"landed more than once: {list(repeated.items())[:5]}"
    missing = {(t.symbol, t.trade_id) for t in expected} - set(counts)
    assert not missing, f"{len(missing)} trades never landed, e.g. {sorted(missing)[:5]}"
    assert sorted(t for _, t in landed) == sorted(expected)  # prices, sizes, times, sides too
    return landed


def landed_ids(storage: Storage) -> int:
    """How many trades the landed names cover (simulated ids are consecutive per symbol-day)."""
    total = 0
    for info in storage.list_files(PREFIX):
        match = LANDED_NAME.match(info.path.rsplit("/", 1)[-1])
        total += int(match["last_id"]) - int(match["first_id"]) + 1
    return total


async def collect_until(
    storage: Storage,
    config: CollectorConfig,
    done: Callable[[Collector], bool],
    timeout: float = 20.0,
    **kwargs,
) -> Collector:
    """Run a collector in this event loop until ``done(collector)``, then stop it (which lands
    what it holds) and return it."""
    collector = Collector(storage, config, seed=0, **kwargs)
    task = asyncio.create_task(collector.run())
    deadline = time.monotonic() + timeout
    try:
        while not done(collector):
            if task.done():
                task.result()  # raises what ended it
                raise AssertionError("collector returned before it was done")
            if time.monotonic() > deadline:
                raise AssertionError(f"not done after {timeout} s: {collector.stats}")
            await asyncio.sleep(0.02)
    finally:
        collector.stop()
        await asyncio.wait_for(task, 20)
    return collector


def fast_config(url: str, **overrides) -> CollectorConfig:
    settings = {
        "url": url,
        "flush_seconds": 0.2,
        "flush_messages": 700,
        "reconnect_initial_s": 0.02,
        "reconnect_max_s": 0.2,
        "stats_interval_s": 0.5,
    }
    return CollectorConfig(**{**settings, **overrides})


class HashLog(logging.Handler):
    """Keeps the collector's "landed … sha256=…" lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.hashes: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = LANDED_LOG.search(record.getMessage())
        if match:
            self.hashes[match["rel"]] = match["sha"]


@contextlib.contextmanager
def replay_in_thread(source: TradeSource, **kwargs) -> Iterator[ReplayServer]:
    """A ReplayServer on its own event loop in a thread, for a collector in another process."""
    started = threading.Event()
    box: dict = {}

    async def serve_until_stopped() -> None:
        async with ReplayServer(source, **kwargs) as server:
            box.update(server=server, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            started.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve_until_stopped(),), daemon=True)
    thread.start()
    assert started.wait(10), "replay server did not start"
    try:
        yield box["server"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


# --------------------------------------------------------------------------------------------
# One collection, several checks
# --------------------------------------------------------------------------------------------
@dataclass
class Collected:
    storage: Storage
    expected: list[Trade]
    collector: Collector
    hashes: dict[str, str]
    listings: int  # listings taken while it ran
    seen_files: int  # files read back in those listings
    partial: list[str]  # files that a listing showed incomplete (must stay empty)


def _check_complete(storage: Storage, rel: str) -> str | None:
    """Why a landed file is not a complete batch, or None: its lines must be exactly the ids
    its name promises (simulated ids are consecutive), each line whole."""
    match = LANDED_NAME.match(rel.rsplit("/", 1)[-1])
    if match is None:
        return f"{rel}: not a collector file name"
    data = storage.read_bytes(rel)
    lines = data.decode().splitlines()
    if not data.endswith(b"\n") or any(line.count(",") != 6 for line in lines):
        return f"{rel}: a line is cut"
    ids = [int(line.split(",", 1)[0]) for line in lines]
    if ids != list(range(int(match["first_id"]), int(match["last_id"]) + 1)):
        return f"{rel}: {len(ids)} lines, not the ids of its name"
    return None


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    """2 symbols x 2 days (~6,000 trades) collected in micro-batches of 700, while another
    thread lists and reads the landing zone over and over."""
    storage = Storage(str(tmp_path_factory.mktemp("collected")))
    source = sim_source()
    expected = replayed(source)
    hash_log = HashLog()
    logging.getLogger("assets.live.collector").addHandler(hash_log)
    logging.getLogger("assets.live.collector").setLevel(logging.INFO)
    stop_listing = threading.Event()
    seen: dict[str, str | None] = {}
    listings = 0

    def list_while_running() -> None:
        nonlocal listings
        while not stop_listing.is_set():
            for info in storage.list_files(PREFIX):
                if info.path not in seen:
                    seen[info.path] = _check_complete(storage, info.path)
            listings += 1

    lister = threading.Thread(target=list_while_running)
    lister.start()

    async def run() -> Collector:
        async with ReplayServer(source) as server:
            config = fast_config(server.url, flush_messages=700)
            return await collect_until(storage, config, lambda c: c.stats.accepted >= len(expected))

    try:
        collector = asyncio.run(run())
    finally:
        stop_listing.set()
        lister.join()
        logging.getLogger("assets.live.collector").removeHandler(hash_log)
    partial = [reason for reason in seen.values() if reason]
    return Collected(storage, expected, collector, hash_log.hashes, listings, len(seen), partial)


def test_every_replayed_trade_lands_once_with_its_values(collected: Collected) -> None:
    assert len(collected.expected) > 5000
    landed = assert_landed_exactly(collected.storage, collected.expected)
    stats = collected.collector.stats
    assert stats.messages == stats.accepted == stats.landed_rows == len(landed)
    assert (stats.duplicates, stats.malformed, stats.reconnects) == (0, 0, 0)
    # The state file records the same watermark as the names, and is not listed as landed.
    state = json.loads(collected.storage.read_bytes(f"{PREFIX}/_collector-state.json"))
    assert state["watermarks"] == {
        symbol: max(t.trade_id for t in collected.expected if t.symbol == symbol)
        for symbol in ("SIMA", "SIMB")
    }


def test_files_split_by_symbol_and_utc_day(collected: Collected) -> None:
    by_file: dict[str, list[Trade]] = {}
    for name, trade in read_landed(collected.storage):
        by_file.setdefault(name, []).append(trade)
    assert len(by_file) > 8  # micro-batches of 700 over ~6,000 trades
    days = set()
    for name, trades in by_file.items():
        match = LANDED_NAME.match(name)
        assert match, name
        assert {t.symbol for t in trades} == {match["symbol"]}
        utc_days = {time.strftime("%Y-%m-%d", time.gmtime(t.time_ms / 1000)) for t in trades}
        assert utc_days == {match["day"]}, name
        ids = [t.trade_id for t in trades]
        assert (ids[0], ids[-1]) == (int(match["first_id"]), int(match["last_id"]))
        days.add(match["day"])
    assert days == {"2024-01-02", "2024-01-03"}
    # Zero-padded ids: name order is trade order within a symbol and day.
    names = [LANDED_NAME.match(name) for name in sorted(by_file)]
    for a, b in itertools.pairwise(names):
        if (a["symbol"], a["day"]) == (b["symbol"], b["day"]):
            assert int(a["last_id"]) < int(b["first_id"])


def test_listings_during_the_run_only_show_complete_files(collected: Collected) -> None:
    assert collected.listings > 10 and collected.seen_files > 8
    assert collected.partial == []


def test_logged_sha256_is_the_stored_hash(collected: Collected) -> None:
    files = [info.path for info in collected.storage.list_files(PREFIX)]
    assert sorted(collected.hashes) == files
    for rel, digest in collected.hashes.items():
        assert collected.storage.sha256(rel) == digest
        assert hashlib.sha256(collected.storage.read_bytes(rel)).hexdigest() == digest


def test_landed_files_ingest_into_raw_trades(collected: Collected, tmp_path: Path) -> None:
    day = "2024-01-02"
    report = ingest_partitions(
        collected.storage, {FEED.name: FEED}, "trades", [day], landed=None, con=new_connection()
    )
    in_day = sum(1 for t in collected.expected if t.time_ms < 1_704_240_000_000)
    assert report.rows_by_day == {day: in_day}
    assert report.rows_quarantined == 0 and not report.file_errors
    landed = scan_landing(collected.storage, {FEED.name: FEED})
    assert all(f.dates in ((day,), ("2024-01-03",)) for f in landed)


# --------------------------------------------------------------------------------------------
# Reconnects and resume
# --------------------------------------------------------------------------------------------
def test_reconnects_after_the_server_drops_and_resumes_with_from_id(tmp_path: Path) -> None:
    """The server aborts every connection after 900 messages (no close frame, as a network
    failure). The collector reconnects with fromId, on a combined-stream URL: nothing is lost,
    and nothing is sent twice (zero repeats), so the server honoured fromId."""
    storage = Storage(str(tmp_path))
    source = sim_source(per_day=1200)
    expected = replayed(source)

    async def run() -> tuple[Collector, ReplayServer]:
        async with ReplayServer(source, drop_after_messages=900) as server:
            url = f"{server.url}/stream?streams=sima@trade/simb@trade"
            collector = await collect_until(
                storage, fast_config(url), lambda c: c.stats.accepted >= len(expected)
            )
            return collector, server

    collector, server = asyncio.run(run())
    assert_landed_exactly(storage, expected)
    assert collector.stats.reconnects >= len(expected) // 900
    assert server.connections_served == collector.stats.connections >= 1 + len(expected) // 900
    assert collector.stats.duplicates == 0


def test_restart_resumes_after_landed_ids_and_drops_repeats(tmp_path: Path) -> None:
    """A second collector on the same landing zone, without fromId (the server then sends
    everything again): the watermark read from the landed names drops every trade already
    landed, and counts them."""
    storage = Storage(str(tmp_path))
    source = sim_source(per_day=800)
    expected = replayed(source)

    async def run() -> tuple[Collector, Collector]:
        async with ReplayServer(source) as server:
            config = fast_config(server.url, resume_param=None)
            first = await collect_until(
                storage, config, lambda c: c.stats.accepted >= len(expected) // 2
            )
            second = await collect_until(
                storage, config, lambda c: c.stats.messages >= len(expected)
            )
            return first, second

    first, second = asyncio.run(run())
    assert_landed_exactly(storage, expected)
    assert second.stats.duplicates == first.stats.landed_rows > 0
    assert second.stats.landed_rows == len(expected) - first.stats.landed_rows


def _client(url: str):
    # No receive queue limit: with one, a client that stops reading mid-stream stops reading
    # the socket too, and its close handshake then waits out close_timeout (10 s).
    return connect(url, max_queue=None)


def test_replay_server_from_id_paths_and_wrapper() -> None:
    source = sim_source(per_day=300, days=1)
    expected = replayed(source)
    sima = [t for t in expected if t.symbol == "SIMA"]
    after = sima[100].trade_id

    async def run() -> None:
        async with ReplayServer(source) as server:
            query = urllib.parse.urlencode({"fromId": f"SIMA:{after + 1}"})
            async with _client(f"{server.url}/?{query}") as ws:
                got = [json.loads(await ws.recv()) for _ in range(len(expected) - 101)]
            assert [m["t"] for m in got if m["s"] == "SIMA"] == [t.trade_id for t in sima[101:]]
            assert sum(m["s"] == "SIMB" for m in got) == len(expected) - len(sima)
            assert [m["T"] for m in got] == sorted(m["T"] for m in got)  # merged in time order
            async with _client(f"{server.url}/stream?streams=simb@trade") as ws:
                wrapped = json.loads(await ws.recv())
            assert wrapped["stream"] == "simb@trade" and wrapped["data"]["s"] == "SIMB"
            async with _client(f"{server.url}/ws/sima@trade") as ws:
                first = json.loads(await ws.recv())
            assert (first["e"], first["s"], first["t"]) == ("trade", "SIMA", sima[0].trade_id)
            for bad in ("/?fromId=SIMA", "/nowhere"):
                with pytest.raises(InvalidStatus):
                    async with _client(server.url + bad):
                        pass

    asyncio.run(run())
    assert parse_from_ids("sima:5, SIMB:7") == {"SIMA": 5, "SIMB": 7}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"DD_STORAGE_ROOT": "/data/dd", "DD_FEEDS_FILE": "/etc/dd/feeds.yaml"},
        {"DD_STORAGE_ROOT": "s3://bucket/dd", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
    ],
)
def test_storage_and_feeds_are_chosen_as_the_platform_chooses_them(env: dict) -> None:
    """The collector reads the environment through assets.core.settings, without Dagster (its
    import costs seconds); it must pick what assets.core.resources.resources_from_env picks."""
    from assets.core.resources import resources_from_env

    platform = resources_from_env(env)
    ours = storage_settings_from_env(env)
    storage = platform["storage"]
    assert (ours["root"], ours["s3_endpoint_url"]) == (storage.root, storage.s3_endpoint_url)
    assert feeds_file_from_env(env) == platform["feeds"].path


def test_landed_dumps_replayed_and_collected_read_back_the_same(tmp_path: Path) -> None:
    """Simulator dumps landed in sim-trades (one file per symbol and day, one gzipped), replayed
    from the storage prefix and collected into live-trades: the reader gives the same rows."""
    storage = Storage(str(tmp_path))
    table = MarketSimulator(sim_source().config).trades_for_day(START)
    dumps = write_binance_trades(table, tmp_path / "landing" / "sim-trades")
    with open(dumps[0], "rb") as raw, gzip.open(f"{dumps[0]}.gz", "wb") as packed:
        packed.write(raw.read())
    dumps[0].unlink()
    source = LandedFilesSource.from_location("landing/sim-trades", storage)
    assert len(source.files) == 2
    expected = replayed(source)
    assert len(expected) == table.num_rows

    async def run() -> None:
        async with ReplayServer(source) as server:
            await collect_until(
                storage, fast_config(server.url), lambda c: c.stats.accepted >= len(expected)
            )

    asyncio.run(run())
    assert_landed_exactly(storage, expected)


def test_replay_command_line_serves_on_a_free_port_and_exits_when_done() -> None:
    command = [
        sys.executable,
        "-m",
        "assets.live.replay",
        "--port",
        "0",
        "--speed",
        "0",
        "--symbols",
        "2",
        "--trades-per-day",
        "200",
        "--shift-at",
        "2024-01-02T12:00:00",
        "--exit-when-done",
    ]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("listening on ws://127.0.0.1:")

        async def receive_all() -> list[dict]:
            async with connect(line.split()[-1]) as ws:
                return [json.loads(message) async for message in ws]

        messages = asyncio.run(receive_all())
        assert server.wait(10) == 0
    finally:
        server.kill()
    assert {m["s"] for m in messages} == {"SIMA", "SIMB"}
    assert 300 < len(messages) < 800  # ~200 a symbol, more after the shift
    assert [m["T"] for m in messages] == sorted(m["T"] for m in messages)


def test_resume_url_and_backoff() -> None:
    url = with_query_param("ws://h:1/stream?streams=a@trade&fromId=X:1", "fromId", "A:5,B:6")
    assert url == "ws://h:1/stream?streams=a@trade&fromId=A:5,B:6"
    assert with_query_param("ws://h:1", "fromId", "A:5") == "ws://h:1/?fromId=A:5"
    import random

    rng = random.Random(1)
    delays = [backoff_delay(n, 0.5, 8.0, rng) for n in range(40)]
    assert 0.25 <= delays[0] <= 0.5 and all(4.0 <= d <= 8.0 for d in delays[5:])
    assert len(set(delays[5:])) > 30  # jittered


# --------------------------------------------------------------------------------------------
# Malformed messages
# --------------------------------------------------------------------------------------------
def _event(trade_id: int, price: str = "100.5", symbol: str = "SIMA") -> dict:
    return {
        "e": "trade",
        "E": 1_704_160_000_000 + trade_id,
        "s": symbol,
        "t": trade_id,
        "p": price,
        "q": "0.25",
        "T": 1_704_160_000_000 + trade_id,
        "m": trade_id % 2 == 0,
        "M": True,
    }


async def _serve_messages(messages: list[str | bytes]) -> Server:
    """A bare websocket server that sends these messages to each connection, then idles."""

    async def handler(ws: ServerConnection) -> None:
        for message in messages:
            await ws.send(message)
        await ws.wait_closed()

    return await serve(handler, "127.0.0.1", 0)


def test_malformed_messages_are_counted_and_skipped(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    good = [_event(1), _event(2, "100.75"), _event(3, "1E+2")]
    messages: list[str | bytes] = [
        json.dumps(good[0]),
        "{not json",
        "[1, 2, 3]",
        json.dumps({"e": "trade", "s": "SIMA"}),  # no id, price, …
        json.dumps({"result": None, "id": 1}),  # a subscription ack: ignored, not malformed
        json.dumps({**_event(9), "p": "abc"}),
        json.dumps({**_event(9), "p": "NaN"}),
        json.dumps({**_event(9), "s": "SI,MA"}),
        json.dumps({"stream": "sima@trade", "data": good[1]}),
        json.dumps(good[0]),  # a repeat
        json.dumps(good[2]).encode(),  # a binary frame
    ]

    async def run() -> Collector:
        server = await _serve_messages(messages)
        try:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            return await collect_until(
                storage, fast_config(url), lambda c: c.stats.messages >= len(messages)
            )
        finally:
            server.close()
            await server.wait_closed()

    collector = asyncio.run(run())
    stats = collector.stats
    assert (stats.malformed, stats.ignored, stats.duplicates, stats.landed_rows) == (6, 1, 1, 3)
    landed = read_landed(storage)
    assert [(t.trade_id, t.price, t.size) for _, t in landed] == [
        (1, 100.5, 0.25),
        (2, 100.75, 0.25),
        (3, 100.0, 0.25),
    ]
    line = storage.read_bytes(f"{PREFIX}/{landed[0][0]}").decode().splitlines()[2]
    assert line == "3,100,0.25,25.00000000,1704160000003,False,True"


# --------------------------------------------------------------------------------------------
# Gap fill hook (Binance REST), against a local stand-in
# --------------------------------------------------------------------------------------------
def test_binance_rest_gap_fill_closes_the_gap(tmp_path: Path) -> None:
    """Landed up to id 1049; the live stream starts at 1100 (it missed 1050-1099). The REST
    hook pages /api/v3/historicalTrades from 1050 up to now (1199); the stream's overlap is
    dropped as repeats. Everything 1000-1199 lands once."""
    storage = Storage(str(tmp_path))
    history = {i: _event(i) for i in range(1000, 1200)}
    rest_calls: list[dict] = []

    class HistoricalTrades(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            rest_calls.append(query)
            start, limit = int(query["fromId"]), int(query["limit"])
            page = [
                {
                    "id": e["t"],
                    "price": e["p"],
                    "qty": e["q"],
                    "quoteQty": "0",
                    "time": e["T"],
                    "isBuyerMaker": e["m"],
                    "isBestMatch": True,
                }
                for i, e in sorted(history.items())
                if i >= start
            ][:limit]
            body = json.dumps(page).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    rest = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HistoricalTrades)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    # What an earlier run landed.
    lines = "".join(trade_row(history[i]).line for i in range(1000, 1050))
    storage.write_bytes(
        f"{PREFIX}/{landed_file_name('SIMA', '2024-01-02', 1000, 1049)}", lines.encode()
    )
    live = [json.dumps(history[i]) for i in range(1100, 1200)]

    async def run() -> Collector:
        server = await _serve_messages(live)
        try:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws/sima@trade"
            gap_fill = BinanceRestGapFill(f"http://127.0.0.1:{rest.server_port}", page_size=40)
            return await collect_until(
                storage,
                fast_config(url, resume_param=None),
                lambda c: c.stats.messages >= 150 + 100,
                gap_fill=gap_fill,
            )
        finally:
            server.close()
            await server.wait_closed()

    try:
        collector = asyncio.run(run())
    finally:
        rest.shutdown()
    assert [c["fromId"] for c in rest_calls] == ["1050", "1090", "1130", "1170"]
    assert all(c["symbol"] == "SIMA" for c in rest_calls)
    assert collector.stats.duplicates == 100
    ids = sorted(t.trade_id for _, t in read_landed(storage))
    assert ids == list(range(1000, 1200))


# --------------------------------------------------------------------------------------------
# SIGKILL mid-stream, as a real process
# --------------------------------------------------------------------------------------------
def _start_collector(url: str, root: Path, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "DD_STORAGE_ROOT": str(root), "DD_FEEDS_FILE": str(REPO / "feeds.yaml")}
    command = [
        sys.executable,
        "-m",
        "assets.live.collector",
        "--url",
        url,
        "--flush-seconds",
        "0.25",
        "--flush-messages",
        "400",
        "--stats-seconds",
        "1",
        "--reconnect-max-seconds",
        "1",
    ]
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=log_file)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_and_restart_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Kill -9 the collector while it streams (a batch held in memory, files landed), start it
    again: the landed ids are exactly the replayed ids, once each; SIGTERM then exits 0."""
    root = tmp_path / "root"
    storage = Storage(str(root))
    source = sim_source(per_day=2500, days=1)
    expected = replayed(source)
    # One simulated day in about 4 s of wall time.
    with replay_in_thread(source, speed=86_400 / 4) as server:
        first = _start_collector(server.url, root, tmp_path / "first.log")
        try:
            _wait_for(lambda: len(storage.list_files(PREFIX)) >= 3, 30, "files to land")
            time.sleep(0.1)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            first.kill()
        landed_before = landed_ids(storage)
        assert 0 < landed_before < len(expected), "the kill must come mid-stream"

        second = _start_collector(server.url, root, tmp_path / "second.log")
        try:
            _wait_for(lambda: landed_ids(storage) >= len(expected), 30, "the rest to land")
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
        finally:
            second.kill()
    second_log = (tmp_path / "second.log").read_text()
    assert "resuming after landed ids" in second_log and "final:" in second_log
    assert_landed_exactly(storage, expected)
    # Every hash either run logged is the stored file's.
    for log_name in ("first.log", "second.log"):
        for match in LANDED_LOG.finditer((tmp_path / log_name).read_text()):
            assert storage.sha256(match["rel"]) == match["sha"]
