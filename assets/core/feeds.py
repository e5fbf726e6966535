"""Feeds declared by the user in a YAML file: adding a vendor's file needs an entry, not code.

A feed says what its files hold (``kind``), how to read them (``format``, ``columns``,
``timestamp``) and which symbols are known. See ``feeds.yaml`` at the repository root and the
README's "Feeds" section for every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("trades", "bars", "decisions", "feedback")
FORMATS = ("csv", "parquet", "binance-trades")
TIME_UNITS = ("s", "ms", "us", "ns", "auto")

# Canonical columns each kind needs from a file (mapped through ``columns``) and their types.
# Optional columns may be absent from a file; they are then NULL.
REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    "trades": {
        "symbol": "VARCHAR",
        "ts": "VARCHAR",
        "trade_id": "BIGINT",
        "price": "DOUBLE",
        "size": "DOUBLE",
    },
    "bars": {
        "symbol": "VARCHAR",
        "ts": "VARCHAR",
        "open": "DOUBLE",
        "high": "DOUBLE",
        "low": "DOUBLE",
        "close": "DOUBLE",
        "volume": "DOUBLE",
    },
    # Recorded decisions of a trader or agent: buy/sell/hold a fraction ``size`` in [0, 1].
    "decisions": {
        "decision_id": "VARCHAR",
        "agent_id": "VARCHAR",
        "symbol": "VARCHAR",
        "ts": "VARCHAR",
        "action": "VARCHAR",
        "size": "DOUBLE",
    },
    # Expert process feedback (PRM800K-style): a rating in {-1, 0, +1} of one reasoning step.
    "feedback": {
        "episode_id": "VARCHAR",
        # Read as numbers and checked to be whole by the rules (a DuckDB cast would round 0.5 to
        # 1); written to raw/ as int64.
        "step_index": "DOUBLE",
        "rating": "DOUBLE",
        "rater_id": "VARCHAR",
        "ts": "VARCHAR",
    },
}
OPTIONAL_COLUMNS: dict[str, dict[str, str]] = {
    "trades": {"side": "VARCHAR", "is_buyer_maker": "BOOLEAN"},
    "bars": {"adj_close": "DOUBLE"},
    "decisions": {"rationale": "VARCHAR"},
    "feedback": {"comment": "VARCHAR"},
}
# Kinds whose rows name an instrument: their feeds map a symbol column or give a constant one.
SYMBOL_KINDS = tuple(kind for kind, cols in REQUIRED_COLUMNS.items() if "symbol" in cols)

# Binance's public spot trade dump: no header (newer dumps may carry one), epoch time in
# milliseconds (microseconds for spot since 2025).
BINANCE_TRADE_COLUMNS = {
    "id": "BIGINT",
    "price": "DOUBLE",
    "qty": "DOUBLE",
    "quote_qty": "DOUBLE",
    "time": "BIGINT",
    "is_buyer_maker": "BOOLEAN",
    "is_best_match": "BOOLEAN",
}
BINANCE_COLUMN_MAP = {
    "trade_id": "id",
    "price": "price",
    "size": "qty",
    "ts": "time",
    "is_buyer_maker": "is_buyer_maker",
}

SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9._:/-]{1,32}$")
FEED_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
# A landed file's name: one plain name inside its feed's folder. Letters, digits and a few
# punctuation marks; no separators, no "..", no control characters, nothing DuckDB reads as a
# glob (* ? [ ] { }) or SQL quoting; it starts with a letter or digit because names starting
# with "." or "_" are in-flight writes and bookkeeping files (the collector's state).
LANDED_NAME_PATTERN = re.compile(r"[^\W_][\w.+=@,~() -]*")
LANDED_NAME_MAX_BYTES = 255
# A corrected version of a landed file: ``<stem>.correction-<N><suffixes>`` (see land_file).
CORRECTION_PATTERN = re.compile(
    r"(?P<stem>.+?)\.correction-(?P<n>[1-9][0-9]*)(?P<suffixes>(\.[^.]*)*)"
)


class FeedConfigError(ValueError):
    """The feeds file is wrong; the message names the feed and the field."""


class LandingNameError(ValueError):
    """A name that cannot be a landed file: it could leave the feed's folder or hide there."""


def check_landed_name(name: object) -> str:
    """``name`` if it is a plain file name a feed's folder can hold, else LandingNameError.

    The one check every way into the landing zone goes through (the landing CLI and API, the
    collector, the landing scan), so that nothing is written outside the storage root and
    every landed file can be indexed."""
    if not isinstance(name, str) or not name:
        raise LandingNameError(f"landed file name {name!r}: empty or not text")
    if "/" in name or "\\" in name:
        raise LandingNameError(f"landed file name {name!r}: contains a path separator")
    if name in (".", "..") or name.startswith((".", "_")):
        raise LandingNameError(
            f"landed file name {name!r}: starts with '.' or '_' (reserved for in-flight writes "
            "and bookkeeping files)"
        )
    if len(name.encode()) > LANDED_NAME_MAX_BYTES or name != name.strip():
        raise LandingNameError(
            f"landed file name {name!r}: longer than {LANDED_NAME_MAX_BYTES} bytes, or leading "
            "or trailing blanks"
        )
    if not LANDED_NAME_PATTERN.fullmatch(name):
        raise LandingNameError(
            f"landed file name {name!r}: only letters, digits, spaces and . _ - + = @ , ~ ( ) "
            "are allowed (no control characters, quotes or glob characters)"
        )
    return name


def landed_path(feed_name: str, name: str) -> str:
    """``landing/<feed>/<name>`` after checking both parts (see :func:`check_landed_name`)."""
    if not isinstance(feed_name, str) or not FEED_NAME_PATTERN.fullmatch(feed_name):
        raise LandingNameError(f"feed name {feed_name!r} is not a declared feed's name")
    return f"landing/{feed_name}/{check_landed_name(name)}"


def correction_of(name: str) -> tuple[str, int]:
    """(the originally landed name, version): ``x.correction-2.csv`` → ("x.csv", 2);
    a name that is not a correction is version 0 of itself."""
    match = CORRECTION_PATTERN.fullmatch(name)
    if not match:
        return name, 0
    return match["stem"] + match["suffixes"], int(match["n"])


def correction_name(name: str, version: int) -> str:
    """The name of correction ``version`` of the landed ``name``: the marker goes before the
    file's suffixes (``.csv.gz``) so readers still recognise the format."""
    base, _ = correction_of(name)
    stem, dot, suffixes = base.partition(".")
    return f"{stem}.correction-{version}{dot}{suffixes}"


@dataclass(frozen=True)
class TimestampSpec:
    """How a file's timestamp column is read."""

    unit: str | None = None  # epoch numbers: s / ms / us / ns / auto (by magnitude)
    format: str | None = None  # strptime format for text timestamps; None = ISO-8601
    timezone: str = "UTC"  # zone of naive text timestamps; converted to UTC


@dataclass(frozen=True)
class FeedSpec:
    """One declared feed. Files land under ``landing/<name>/``."""

    name: str
    kind: str
    format: str
    columns: dict[str, str] = field(default_factory=dict)
    timestamp: TimestampSpec = field(default_factory=TimestampSpec)
    delimiter: str = ","
    header: bool = True
    symbol: str | None = None
    symbol_from_filename: str | None = None
    file_date_pattern: str | None = None
    symbols: tuple[str, ...] = ()
    interval: str = "1d"
    description: str = ""

    @property
    def landing_prefix(self) -> str:
        return f"landing/{self.name}"

    def landed_path(self, name: str) -> str:
        """Where a file named ``name`` lands; refuses names that are not plain file names."""
        return landed_path(self.name, name)

    def source_column(self, canonical: str) -> str | None:
        """The file's column holding a canonical column, or None when the file lacks it."""
        if self.format == "binance-trades":
            return BINANCE_COLUMN_MAP.get(canonical)
        return self.columns.get(canonical)

    def symbol_for_file(self, filename: str) -> str | None:
        """The constant symbol of a file that has no symbol column (config or file name)."""
        if self.symbol:
            return self.symbol
        if self.symbol_from_filename:
            match = re.search(self.symbol_from_filename, filename)
            if match:
                return match.group("symbol") if "symbol" in match.groupdict() else match.group(1)
        return None

    def date_for_file(self, filename: str) -> str | None:
        """The day a daily file covers, from its name, when the feed declares a pattern."""
        if not self.file_date_pattern:
            return None
        match = re.search(self.file_date_pattern, filename)
        if not match:
            return None
        return match.group("date") if "date" in match.groupdict() else match.group(1)


def _timestamp_spec(feed_name: str, raw: Any) -> TimestampSpec:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise FeedConfigError(f"feed {feed_name!r}: 'timestamp' must be a mapping")
    unknown = set(raw) - {"unit", "format", "timezone"}
    if unknown:
        raise FeedConfigError(f"feed {feed_name!r}: unknown timestamp keys {sorted(unknown)}")
    unit = raw.get("unit")
    if unit is not None and unit not in TIME_UNITS:
        raise FeedConfigError(f"feed {feed_name!r}: timestamp.unit must be one of {TIME_UNITS}")
    if unit and raw.get("format"):
        raise FeedConfigError(
            f"feed {feed_name!r}: give timestamp.unit or timestamp.format, not both"
        )
    return TimestampSpec(unit=unit, format=raw.get("format"), timezone=raw.get("timezone", "UTC"))


def parse_feed(raw: dict[str, Any]) -> FeedSpec:
    """Validate one feed entry and return its spec."""
    if not isinstance(raw, dict):
        raise FeedConfigError(f"feed entry {raw!r} must be a mapping (name: …, kind: …)")
    name = raw.get("name")
    if not name or not FEED_NAME_PATTERN.fullmatch(str(name)):
        raise FeedConfigError(f"feed name {name!r} must be lower-case letters, digits, - or _")
    known = {f for f in FeedSpec.__dataclass_fields__}
    unknown = set(raw) - known
    if unknown:
        raise FeedConfigError(f"feed {name!r}: unknown keys {sorted(unknown)}")
    kind, fmt = raw.get("kind"), raw.get("format")
    if kind not in KINDS:
        raise FeedConfigError(f"feed {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if fmt not in FORMATS:
        raise FeedConfigError(f"feed {name!r}: format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "binance-trades" and kind != "trades":
        raise FeedConfigError(f"feed {name!r}: format binance-trades holds trades, not {kind}")
    for key, typ, what in (
        ("columns", dict, "a mapping"),
        ("symbols", list, "a list"),
        ("header", bool, "true or false"),
    ):
        if raw.get(key) is not None and not isinstance(raw[key], typ):
            raise FeedConfigError(f"feed {name!r}: {key!r} must be {what}, got {raw[key]!r}")
    columns = {str(k): str(v) for k, v in (raw.get("columns") or {}).items()}
    timestamp = _timestamp_spec(name, raw.get("timestamp"))
    if fmt == "binance-trades" and timestamp.unit is None:
        timestamp = TimestampSpec(unit="auto")
    spec = FeedSpec(
        name=name,
        kind=kind,
        format=fmt,
        columns=columns,
        timestamp=timestamp,
        delimiter=str(raw.get("delimiter", ",")),
        header=bool(raw.get("header", fmt != "binance-trades")),
        symbol=raw.get("symbol"),
        symbol_from_filename=raw.get("symbol_from_filename"),
        file_date_pattern=raw.get("file_date_pattern"),
        symbols=tuple(str(s) for s in raw.get("symbols") or ()),
        interval=str(raw.get("interval", "1d")),
        description=str(raw.get("description", "")),
    )
    if fmt != "binance-trades":
        needed = set(REQUIRED_COLUMNS[kind]) - {"symbol"}
        missing = sorted(needed - set(columns))
        if missing:
            raise FeedConfigError(f"feed {name!r}: columns must map {missing}")
    symbol_keys = [k for k in ("symbol", "symbol_from_filename", "symbols") if raw.get(k)]
    symbol_keys += ["columns.symbol"] if "symbol" in columns else []
    if kind in SYMBOL_KINDS:
        has_symbol = "symbol" in columns or spec.symbol or spec.symbol_from_filename
        if not has_symbol:
            raise FeedConfigError(
                f"feed {name!r}: map a 'symbol' column, or give 'symbol' or 'symbol_from_filename'"
            )
    elif symbol_keys:
        raise FeedConfigError(f"feed {name!r}: kind {kind} has no symbol; remove {symbol_keys}")
    for key, group in (("symbol_from_filename", "symbol"), ("file_date_pattern", "date")):
        pattern = getattr(spec, key)
        if pattern:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise FeedConfigError(f"feed {name!r}: bad pattern {pattern!r}: {exc}") from exc
            # symbol_for_file / date_for_file read group 'symbol' / 'date', else group 1.
            if not compiled.groups:
                raise FeedConfigError(
                    f"feed {name!r}: {key} {pattern!r} needs a group, e.g. (?P<{group}>…)"
                )
    return spec


def load_feeds(path: str | Path) -> dict[str, FeedSpec]:
    """Read the feeds file: ``feeds: [ {name, kind, format, …}, … ]``."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FeedConfigError(f"cannot read feeds file {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("feeds") or [], list):
        raise FeedConfigError(f"feeds file {path}: expected 'feeds:' followed by a list")
    feeds: dict[str, FeedSpec] = {}
    for raw in doc.get("feeds") or []:
        spec = parse_feed(raw)
        if spec.name in feeds:
            raise FeedConfigError(f"feed {spec.name!r} is declared twice in {path}")
        feeds[spec.name] = spec
    return feeds
