"""Live trade collector: a websocket trade stream → micro-batch files in a feed's landing zone.

``python -m assets.live.collector --url ws://127.0.0.1:8765 --feed live-trades`` consumes a stream in
Binance's spot trade-stream format (``{"e":"trade","s":"BTCUSDT","t":<id>,"p":"…","q":"…",
"T":<ms>,"m":…,"M":…}``, raw or wrapped as ``{"stream":"btcusdt@trade","data":{…}}``) and lands
what it received every ``--flush-seconds`` or ``--flush-messages``, whichever comes first. The
rest of the platform then treats those files like any vendor's: the landing sensor sees them and
the ingestion validates them into ``raw/trades`` (feed ``live-trades`` in feeds.yaml).

Design, and why:

- **Files the existing reader already ingests.** One headerless binance-trades CSV per symbol and
  UTC day (a batch that crosses midnight is split), named
  ``<SYMBOL>-trades-<YYYY-MM-DD>-<first id>-<last id>.csv`` so that the feed's filename patterns
  find symbol and day. Ids are zero-padded to 19 digits (any int64) so that name order is trade
  order: the ingestion keeps landing (path) order.
- **Never a partial file.** A batch is written to a local staging file, hashed (SHA-256, logged
  with the name; ``Storage.sha256`` gives the same) and published in one atomic step with
  :meth:`Storage.commit_file`: a rename locally, a single PUT on S3. A name already landed is
  never overwritten.
- **Exactly once across restarts, SIGKILL included.** Binance trade ids only grow per symbol. The
  collector keeps a per-symbol *watermark*: the last id of a committed file. It advances only
  after the commit, and on start it is read back from the landed names (their last id) and from
  a state file, ``_collector-state.json`` next to them (names starting with '_' are skipped by
  listings and by the ingestion; it keeps the watermark if old files are ever cleaned up). A
  message with an id at or below the highest id already held (committed or waiting in the
  batch) is a repeat: it is dropped and counted. What a killed process held in memory was not
  committed, so its watermark did not move and the trades are fetched again.
- **Resume protocol.** On every (re)connect the collector asks the server to resume after the
  highest id it holds per symbol (committed or pending): the query parameter
  ``fromId=SYMBOL:ID,…`` on the websocket URL, ``ID`` being the first id wanted (inclusive, as
  Binance's REST ``fromId``), which :mod:`assets.live.replay` honours. Real Binance has no such parameter (turn it off with
  ``--no-resume-param``): there the gap is filled by the :data:`GapFill` hook, called after each
  connect with the same ids, before the first stream message is read. :class:`BinanceRestGapFill`
  is that hook for Binance (``GET /api/v3/historicalTrades?fromId=``); nothing calls it unless
  ``--gap-fill binance-rest`` is given. Connecting first and filling after leaves no hole: the
  stream buffers what happens meanwhile, and the overlap is dropped as repeats.
- **Reconnects** use exponential backoff with jitter, capped (``--reconnect-max-seconds``); the
  backoff resets once a connection delivers a trade. The batch survives a reconnect.
- **Shutdown.** SIGTERM/SIGINT close the connection, flush the batch and exit 0.
- Throughput (messages/s, rows, files, bytes, repeats, malformed) is logged every
  ``--stats-seconds``. Malformed messages (bad JSON, missing or invalid fields) are counted and
  skipped; well-formed non-trade events (subscription acks) are counted as ignored.

One collector per feed: the watermark and the state file assume a single writer.

Python API: ``Collector(storage, CollectorConfig(url=…))``, ``await collector.run()`` until
``collector.stop()``; tests and benchmarks run it in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import decimal
import hashlib
import ipaddress
import json
import logging
import random
import re
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidURI, WebSocketException
from websockets.uri import parse_uri

from assets.core.feeds import landed_path, load_feeds
from assets.core.settings import feeds_file_from_env, storage_settings_from_env
from assets.core.storage import Storage
from assets.live.wire import SYMBOL_NAME, format_from_ids

# Named, not __name__: under "python -m" that would be "__main__".
log = logging.getLogger("assets.live.collector")

DEFAULT_URL = "ws://127.0.0.1:8765"
DEFAULT_FEED = "live-trades"
STATE_FILE = "_collector-state.json"
ID_DIGITS = 19  # any int64 id, zero-padded so that file names sort in trade order
LANDED_NAME = re.compile(
    r"^(?P<symbol>[A-Z0-9]+)-trades-(?P<day>\d{4}-\d{2}-\d{2})-(?P<first_id>\d+)-(?P<last_id>\d+)"
    r"\.csv$"
)
US_PER_DAY = 86_400_000_000
EPOCH = date(1970, 1, 1)
# Quote quantity = price x qty, rounded to 8 decimals as Binance's dumps (and our simulator)
# write it; the wide context keeps the product exact before rounding.
QUOTE_CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
QUOTE_STEP = decimal.Decimal("0.00000001")


def landed_file_name(symbol: str, day: str, first_id: int, last_id: int) -> str:
    return f"{symbol}-trades-{day}-{first_id:0{ID_DIGITS}d}-{last_id:0{ID_DIGITS}d}.csv"


# --------------------------------------------------------------------------------------------
# Messages → CSV rows
# --------------------------------------------------------------------------------------------
class LandingFailed(RuntimeError):
    """Publishing a batch failed. Fatal on purpose: the batch is no longer held anywhere, so the
    process must end and restart from the landed watermark (which did not move past it) rather
    than carry on with a hole. Not an OSError, so it is never mistaken for a lost connection."""


class MalformedMessage(ValueError):
    """A message that is not a usable trade event: counted and skipped."""


class TradeRow(NamedTuple):
    """One accepted trade: what identifies it, and its line of the binance-trades CSV."""

    symbol: str
    trade_id: int
    day: str  # UTC day of the trade time, "YYYY-MM-DD"
    line: str  # id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n


def _decimal_text(value: Any, name: str) -> tuple[str, decimal.Decimal]:
    # Binance sends prices and sizes as decimal strings; keeping their digits (not a float's)
    # lands exactly what the exchange said. format "f" never writes an exponent.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MalformedMessage(f"{name} is not a number: {value!r}")
    try:
        number = decimal.Decimal(value if isinstance(value, str) else str(value))
    except decimal.InvalidOperation:
        raise MalformedMessage(f"{name} is not a number: {value!r}") from None
    if not number.is_finite():
        raise MalformedMessage(f"{name} is not finite: {value!r}")
    return format(number, "f"), number


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedMessage(f"{name} is not a non-negative integer: {value!r}")
    return value


def epoch_to_us(value: int) -> int:
    """An epoch number to microseconds, unit by magnitude as the binance-trades reader decides
    (``timestamp.unit: auto``), so the collector files a trade under the day the reader sees."""
    magnitude = abs(value)
    if magnitude >= 10**17:
        return value // 1_000
    if magnitude >= 10**14:
        return value
    if magnitude >= 10**11:
        return value * 1_000
    return value * 1_000_000


_day_names: dict[int, str] = {}


def _utc_day(epoch: int) -> str:
    index = epoch_to_us(epoch) // US_PER_DAY
    name = _day_names.get(index)
    if name is None:
        name = _day_names[index] = (EPOCH + timedelta(days=index)).isoformat()
    return name


def trade_row(event: Mapping[str, Any]) -> TradeRow | None:
    """A trade event (already unwrapped) as a CSV row; None for a well-formed non-trade event;
    MalformedMessage when it claims to be a trade but cannot be one."""
    if event.get("e") != "trade":
        if "e" in event or "result" in event:
            return None  # another event type, or a subscription ack
        raise MalformedMessage(f"not a trade event: {str(event)[:80]}")
    symbol = event.get("s")
    if not isinstance(symbol, str) or not SYMBOL_NAME.match(symbol.upper()):
        raise MalformedMessage(f"bad symbol {symbol!r}")
    trade_id = _integer(event.get("t"), "t")
    trade_time = _integer(event.get("T"), "T")
    price_text, price = _decimal_text(event.get("p"), "p")
    qty_text, qty = _decimal_text(event.get("q"), "q")
    buyer_is_maker = event.get("m")
    best_match = event.get("M", True)
    if not isinstance(buyer_is_maker, bool) or not isinstance(best_match, bool):
        raise MalformedMessage("m and M must be true or false")
    quote = QUOTE_CONTEXT.multiply(price, qty).quantize(QUOTE_STEP, context=QUOTE_CONTEXT)
    line = (
        f"{trade_id},{price_text},{qty_text},{format(quote, 'f')},{trade_time},"
        f"{buyer_is_maker},{best_match}\n"  # Python's True/False, as Binance's dumps write them
    )
    return TradeRow(symbol.upper(), trade_id, _utc_day(trade_time), line)


def parse_message(raw: str | bytes) -> TradeRow | None:
    """A websocket message (raw event or combined-stream wrapper) as a row; see trade_row."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise MalformedMessage(f"not a JSON object: {str(message)[:80]}")
    if "stream" in message and "data" in message:
        message = message["data"]
        if not isinstance(message, dict):
            raise MalformedMessage("combined-stream data is not an object")
    return trade_row(message)


# --------------------------------------------------------------------------------------------
# Watermarks
# --------------------------------------------------------------------------------------------
def landed_watermarks(storage: Storage, prefix: str) -> dict[str, int]:
    """Per symbol, the last trade id already landed under ``prefix``: the largest last id in the
    collector's file names, or the state file's, whichever is higher. Files of other names (a
    vendor's dump landed in the same feed) are not the collector's and are left out."""
    marks: dict[str, int] = {}
    for info in storage.list_files(prefix):
        match = LANDED_NAME.match(info.path.rsplit("/", 1)[-1])
        if match:
            symbol, last_id = match["symbol"], int(match["last_id"])
            marks[symbol] = max(marks.get(symbol, -1), last_id)
    state_rel = f"{prefix}/{STATE_FILE}"
    if storage.exists(state_rel):
        try:
            state = json.loads(storage.read_bytes(state_rel))
            for symbol, last_id in state.get("watermarks", {}).items():
                marks[symbol] = max(marks.get(symbol, -1), int(last_id))
        except (ValueError, TypeError, AttributeError) as exc:
            # The landed names are the truth; the state file only guards against cleaned-up files.
            log.warning("ignoring unreadable %s: %s", state_rel, exc)
    return marks


# --------------------------------------------------------------------------------------------
# Gap fill
# --------------------------------------------------------------------------------------------
# Called in a worker thread after each connect, for each symbol with a known id: the trades of
# ``symbol`` with ids above ``after_id``, as trade-stream events, oldest first.
GapFill = Callable[[str, int], Iterable[Mapping[str, Any]]]


class GapFillFailed(Exception):
    """The gap-fill hook failed: the connection is given up and retried after the backoff."""


def _gap_fill_events(gap_fill: GapFill, symbol: str, after_id: int) -> list[Mapping[str, Any]]:
    return list(gap_fill(symbol, after_id))


class BinanceRestGapFill:
    """Gap fill for real Binance: ``GET /api/v3/historicalTrades?symbol=&fromId=&limit=1000``,
    paged until a page comes back short (caught up), at most ``max_pages`` pages per call (the
    next reconnect continues from where it got). Needs network access; not used by the tests
    except against a local stand-in (``base_url``)."""

    def __init__(
        self,
        base_url: str = "https://api.binance.com",
        *,
        api_key: str | None = None,
        page_size: int = 1000,
        max_pages: int = 100,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.page_size, self.max_pages, self.timeout_s = page_size, max_pages, timeout_s

    def __call__(self, symbol: str, after_id: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        from_id = after_id + 1
        for _ in range(self.max_pages):
            page = self._fetch(symbol, from_id)
            events += [
                {
                    "e": "trade",
                    "s": symbol,
                    "t": item["id"],
                    "p": item["price"],
                    "q": item["qty"],
                    "T": item["time"],
                    "m": item["isBuyerMaker"],
                    "M": item.get("isBestMatch", True),
                }
                for item in page
            ]
            if len(page) < self.page_size:
                return events
            from_id = int(page[-1]["id"]) + 1
        log.warning("gap fill of %s stopped after %d pages", symbol, self.max_pages)
        return events

    def _fetch(self, symbol: str, from_id: int) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode(
            {"symbol": symbol, "fromId": from_id, "limit": self.page_size}
        )
        request = urllib.request.Request(f"{self.base_url}/api/v3/historicalTrades?{query}")
        if self.api_key:
            request.add_header("X-MBX-APIKEY", self.api_key)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())


# --------------------------------------------------------------------------------------------
# The collector
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectorConfig:
    """How the collector connects and batches. Landing goes to ``landing/<feed>/``."""

    url: str = DEFAULT_URL
    feed: str = DEFAULT_FEED
    flush_seconds: float = 60.0  # the oldest trade in a batch waits at most this long
    flush_messages: int = 100_000
    # Query parameter that asks the server to resume after our ids (None: the server has none).
    resume_param: str | None = "fromId"
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    stats_interval_s: float = 30.0
    open_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        try:
            parse_uri(self.url)
        except InvalidURI as exc:
            raise ValueError(f"bad websocket URL {self.url!r}: {exc}") from exc
        if self.flush_seconds <= 0 or self.flush_messages < 1:
            raise ValueError("flush_seconds must be > 0 and flush_messages >= 1")
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")

    @property
    def landing_prefix(self) -> str:
        return f"landing/{self.feed}"


@dataclass
class CollectorStats:
    """Counters since the collector started (this process)."""

    messages: int = 0  # websocket messages received (plus gap-fill events)
    accepted: int = 0  # trades put into a batch
    duplicates: int = 0  # trades at or below the highest id held: dropped
    malformed: int = 0  # not a usable trade event: skipped
    ignored: int = 0  # well-formed events that are not trades
    landed_rows: int = 0
    files: int = 0
    bytes: int = 0
    connections: int = 0
    reconnects: int = 0


@dataclass
class PendingFile:
    """The trades of one symbol and UTC day waiting for the next flush."""

    symbol: str
    day: str
    first_id: int
    last_id: int
    lines: list[str] = field(default_factory=list)


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the capped exponential step, plus a random
    share of the other half, so that many collectors restarted together spread out."""
    step = min(cap, initial * 2 ** min(attempt, 30))
    return step / 2 + rng.uniform(0, step / 2)


def with_query_param(url: str, name: str, value: str) -> str:
    """``url`` with query parameter ``name`` set to ``value`` (replaced if present)."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != name]
    query.append((name, value))
    # ":", "," and "/" are legal in a query; leaving them readable keeps logs readable.
    query_text = urllib.parse.urlencode(query, safe=":,/@")
    return parts._replace(path=parts.path or "/", query=query_text).geturl()


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Collector:
    """Consumes one websocket trade stream into ``landing/<feed>/`` (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        config: CollectorConfig | None = None,
        *,
        gap_fill: GapFill | None = None,
        seed: int | None = None,
    ) -> None:
        self.storage = storage
        self.config = config or CollectorConfig()
        self.gap_fill = gap_fill
        self.stats = CollectorStats()
        # Committed watermark per symbol (advanced by the flush thread after each commit) and
        # the highest id held, committed or pending (the dedup and resume point).
        self.watermarks: dict[str, int] = {}
        self.high_ids: dict[str, int] = {}
        self._pending: dict[tuple[str, str], PendingFile] = {}
        self._pending_count = 0
        self._pending_since: float | None = None
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._flush_lock: asyncio.Lock | None = None
        self._connection: ClientConnection | None = None
        self._closing: asyncio.Future | None = None
        self._failure: BaseException | None = None

    # -- control ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the collector to flush and return from run(). Safe from any thread or a signal
        handler; a stop before run() makes run() flush nothing and return at once."""
        self._stop_requested.set()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_in_loop)

    def _stop_in_loop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._connection is not None:
            # Closing ends the receive loop normally: nothing is cancelled mid-batch.
            self._closing = asyncio.ensure_future(self._connection.close())

    def resume_url(self) -> str:
        """The URL of the next connection: ``fromId`` asks for the ids after those held."""
        if not self.config.resume_param or not self.high_ids:
            return self.config.url
        first_wanted = {symbol: held + 1 for symbol, held in self.high_ids.items()}
        return with_query_param(
            self.config.url, self.config.resume_param, format_from_ids(first_wanted)
        )

    async def run(self) -> CollectorStats:
        """Collect until stop(); flush what is held, and return the counters."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        if self._stop_requested.is_set():
            self._stopping.set()
        marks = await asyncio.to_thread(landed_watermarks, self.storage, self.config.landing_prefix)
        self.watermarks.update(marks)
        self.high_ids.update(marks)
        if marks:
            log.info("resuming after landed ids %s", format_from_ids(marks))
        started = time.monotonic()
        side_tasks = [
            asyncio.create_task(self._flush_when_due()),
            asyncio.create_task(self._log_stats_periodically()),
        ]
        try:
            await self._connection_loop()
        finally:
            self._stopping.set()
            await asyncio.gather(*side_tasks)
            await self._flush("shutdown")
            elapsed = time.monotonic() - started
            self._log_stats("final", self.stats.messages / max(elapsed, 1e-9))
        if self._failure is not None:
            raise self._failure
        return self.stats

    # -- connections ------------------------------------------------------------------------
    async def _connection_loop(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            url = self.resume_url()
            try:
                connection = await self._connect_unless_stopped(url)
                if connection is None:
                    return
                self.stats.connections += 1
                log.info("connected to %s", url)
                self._connection = connection
                try:
                    await self._fill_gaps()
                    async for message in connection:
                        if self._receive(message) and attempt:
                            attempt = 0  # a working connection: start the backoff afresh
                        if self._pending_count >= self.config.flush_messages:
                            await self._flush("size")
                finally:
                    self._connection = None
                    await connection.close()
                if not self._stopping.is_set():
                    log.warning("connection to %s closed by the server", url)
            except (OSError, TimeoutError, WebSocketException, GapFillFailed) as exc:
                log.warning("connection to %s failed: %s", url, exc or type(exc).__name__)
            if self._stopping.is_set():
                return
            delay = backoff_delay(
                attempt, self.config.reconnect_initial_s, self.config.reconnect_max_s, self._rng
            )
            attempt += 1
            self.stats.reconnects += 1
            log.info("reconnecting in %.2f s (attempt %d)", delay, attempt)
            await self._wait_for_stop(delay)

    async def _connect_unless_stopped(self, url: str) -> ClientConnection | None:
        """Open a connection, or None if stop() comes first (an open may take seconds)."""
        opening = asyncio.ensure_future(
            connect(
                url,
                open_timeout=self.config.open_timeout_s,
                # A proxy from the environment must not capture a loopback replay server.
                proxy=None if _is_loopback(url) else True,
                max_queue=1024,
            )
        )
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not opening.done():
            opening.cancel()
            return None
        connection = opening.result()
        if self._stopping.is_set():  # stop() came with the connection: it had none to close
            await connection.close()
            return None
        return connection

    async def _fill_gaps(self) -> None:
        """Ask the gap-fill hook for what the stream cannot resend; a failure fails this
        connection (and is retried after the backoff) rather than leaving a hole."""
        if self.gap_fill is None:
            return
        for symbol, after_id in sorted(self.high_ids.items()):
            try:
                events = await asyncio.to_thread(_gap_fill_events, self.gap_fill, symbol, after_id)
            except Exception as exc:
                raise GapFillFailed(f"gap fill of {symbol} after id {after_id}: {exc}") from exc
            for event in events:
                self.stats.messages += 1
                try:
                    row = trade_row(event)
                except MalformedMessage as exc:
                    self.stats.malformed += 1
                    log.debug("malformed gap-fill event: %s", exc)
                    continue
                if row is not None:
                    self._accept(row)
            if events:
                log.info("gap fill: %d trades of %s after id %d", len(events), symbol, after_id)

    def _receive(self, raw: str | bytes) -> bool:
        """Take one message; True when it was a new trade."""
        self.stats.messages += 1
        try:
            row = parse_message(raw)
        except MalformedMessage as exc:
            self.stats.malformed += 1
            if self.stats.malformed <= 10 or self.stats.malformed % 10_000 == 0:
                log.warning("skipping malformed message #%d: %s", self.stats.malformed, exc)
            return False
        if row is None:
            self.stats.ignored += 1
            return False
        return self._accept(row)

    def _accept(self, row: TradeRow) -> bool:
        held = self.high_ids.get(row.symbol, -1)
        if row.trade_id <= held:
            # Ids only grow per symbol: this one is committed or waiting in the batch already.
            self.stats.duplicates += 1
            return False
        self.high_ids[row.symbol] = row.trade_id
        pending = self._pending.get((row.symbol, row.day))
        if pending is None:
            pending = PendingFile(row.symbol, row.day, row.trade_id, row.trade_id)
            self._pending[(row.symbol, row.day)] = pending
        pending.lines.append(row.line)
        pending.last_id = row.trade_id
        self._pending_count += 1
        self.stats.accepted += 1
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        return True

    # -- flushing ---------------------------------------------------------------------------
    async def _flush(self, reason: str) -> None:
        """Land everything pending. One flush at a time, so files of a symbol land in id order;
        the stream keeps being read meanwhile into the next batch."""
        async with self._flush_lock:
            if not self._pending:
                return
            batch = list(self._pending.values())
            self._pending, self._pending_count, self._pending_since = {}, 0, None
            log.debug("flushing %d files (%s)", len(batch), reason)
            try:
                await asyncio.to_thread(self._commit, batch)
            except Exception as exc:
                raise LandingFailed(f"landing a batch in {self.storage} failed: {exc}") from exc

    def _commit(self, batch: list[PendingFile]) -> None:
        """Write, hash and publish each file; advance the symbol's watermark after each commit.
        Per symbol in id order: if the process dies between two files, the watermark says
        exactly where the landed data ends."""
        for pending in sorted(batch, key=lambda p: (p.symbol, p.first_id)):
            name = landed_file_name(pending.symbol, pending.day, pending.first_id, pending.last_id)
            rel = landed_path(self.config.feed, name)
            data = "".join(pending.lines).encode()
            digest = hashlib.sha256(data).hexdigest()
            with self.storage.staging_dir() as staging:
                local = staging / name
                local.write_bytes(data)
                if self.storage.exists(rel):
                    # Only a second collector on the same feed could get here: the watermark
                    # keeps this one from landing an id range twice.
                    log.warning("%s is already landed; not overwritten", rel)
                    continue
                self.storage.commit_file(local, rel)
            self.watermarks[pending.symbol] = max(
                self.watermarks.get(pending.symbol, -1), pending.last_id
            )
            self.stats.files += 1
            self.stats.bytes += len(data)
            self.stats.landed_rows += len(pending.lines)
            log.info(
                "landed %s rows=%d bytes=%d sha256=%s", rel, len(pending.lines), len(data), digest
            )
        state = {
            "feed": self.config.feed,
            "watermarks": dict(sorted(self.watermarks.items())),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.storage.write_bytes(
            f"{self.config.landing_prefix}/{STATE_FILE}", json.dumps(state, indent=1).encode()
        )

    async def _flush_when_due(self) -> None:
        """Flush when the oldest pending trade is flush_seconds old (a quiet stream still lands)."""
        period = self.config.flush_seconds
        try:
            while not self._stopping.is_set():
                since = self._pending_since
                wait = period if since is None else max(0.0, since + period - time.monotonic())
                if await self._wait_for_stop(wait):
                    return
                since = self._pending_since
                if since is not None and time.monotonic() - since >= period:
                    await self._flush("age")
        except LandingFailed as exc:  # stop, and let run() raise it
            log.error("%s", exc)
            self._failure = exc
            self._stop_in_loop()

    async def _wait_for_stop(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if stop() came first."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    # -- reporting --------------------------------------------------------------------------
    async def _log_stats_periodically(self) -> None:
        last_time, last_messages = time.monotonic(), 0
        while not await self._wait_for_stop(self.config.stats_interval_s):
            now = time.monotonic()
            rate = (self.stats.messages - last_messages) / max(now - last_time, 1e-9)
            self._log_stats("throughput", rate)
            last_time, last_messages = now, self.stats.messages

    def _log_stats(self, label: str, rate: float) -> None:
        s = self.stats
        log.info(
            "%s: %.0f msg/s; messages=%d accepted=%d landed_rows=%d files=%d bytes=%d "
            "duplicates=%d malformed=%d ignored=%d reconnects=%d pending=%d",
            label,
            rate,
            s.messages,
            s.accepted,
            s.landed_rows,
            s.files,
            s.bytes,
            s.duplicates,
            s.malformed,
            s.ignored,
            s.reconnects,
            self._pending_count,
        )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m assets.live.collector",
        description="Collect a Binance-format websocket trade stream into a feed's landing zone.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"websocket URL (default {DEFAULT_URL})")
    parser.add_argument("--feed", default=DEFAULT_FEED, help="declared trades feed to land into")
    parser.add_argument("--flush-seconds", type=float, default=60.0)
    parser.add_argument("--flush-messages", type=int, default=100_000)
    parser.add_argument("--stats-seconds", type=float, default=30.0, help="throughput log period")
    parser.add_argument("--reconnect-max-seconds", type=float, default=30.0)
    parser.add_argument(
        "--no-resume-param",
        action="store_true",
        help="do not send fromId on connect (real Binance; use --gap-fill there)",
    )
    parser.add_argument("--gap-fill", choices=("none", "binance-rest"), default="none")
    parser.add_argument("--binance-rest-url", default="https://api.binance.com")
    parser.add_argument(
        "--storage-root", help="storage root (default: DD_STORAGE_ROOT, as the platform)"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


async def run_until_signalled(collector: Collector) -> CollectorStats:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, collector.stop)
    return await collector.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Our own lines say when a connection opens or fails; the library's would repeat them.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    feeds = load_feeds(feeds_file_from_env())
    feed = feeds.get(args.feed)
    if feed is None or (feed.kind, feed.format) != ("trades", "binance-trades"):
        parser.error(f"feed {args.feed!r} must be declared with kind trades, format binance-trades")
    settings = storage_settings_from_env()
    if args.storage_root:
        settings["root"] = args.storage_root
    storage = Storage(**settings)
    try:
        config = CollectorConfig(
            url=args.url,
            feed=args.feed,
            flush_seconds=args.flush_seconds,
            flush_messages=args.flush_messages,
            resume_param=None if args.no_resume_param else "fromId",
            reconnect_max_s=args.reconnect_max_seconds,
            stats_interval_s=args.stats_seconds,
        )
    except ValueError as exc:
        parser.error(str(exc))
    gap_fill = (
        BinanceRestGapFill(args.binance_rest_url) if args.gap_fill == "binance-rest" else None
    )
    log.info("collecting %s into %s", config.url, storage.uri(config.landing_prefix))
    stats = asyncio.run(run_until_signalled(Collector(storage, config, gap_fill=gap_fill)))
    log.info("stopped: %s", json.dumps(asdict(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
