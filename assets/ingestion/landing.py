"""Landing: put a vendor's file into the landing zone of a declared feed, unchanged.

``python -m assets.ingestion.landing FEED FILE [FILE ...]`` or ``python -m assets.ingestion.landing --default``.
A landed file is immutable: landing the same name again is refused, never an overwrite.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from assets.core.feeds import FeedSpec, load_feeds
from assets.core.settings import feeds_file_from_env, storage_settings_from_env
from assets.core.storage import Storage

DEFAULT_FEED = "bokeh-stocks"


def default_feed_file() -> Path:
    """Real daily OHLCV 2000-2013 shipped by the bokeh-sampledata package (public domain)."""
    return Path(str(resources.files("bokeh_sampledata") / "_data" / "stocks.csv.gz"))


def land_file(
    storage: Storage, feed: FeedSpec, local: Path, name: str | None = None
) -> tuple[str, bool]:
    """Land ``local`` as ``landing/<feed>/<name>``. Returns (path, whether it was new)."""
    rel = f"{feed.landing_prefix}/{name or local.name}"
    return rel, storage.put_immutable(local, rel)


def land_default(storage: Storage, feeds: dict[str, FeedSpec]) -> tuple[str, bool]:
    if DEFAULT_FEED not in feeds:
        raise SystemExit(f"feed {DEFAULT_FEED!r} is not declared in the feeds file")
    return land_file(storage, feeds[DEFAULT_FEED], default_feed_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets.ingestion.landing", description=__doc__)
    parser.add_argument("feed", nargs="?", help="declared feed name")
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--default", action="store_true", help="land the embedded default feed")
    args = parser.parse_args(argv)
    storage = Storage(**storage_settings_from_env())
    feeds = load_feeds(feeds_file_from_env())
    if args.default:
        rel, new = land_default(storage, feeds)
        print(f"{'landed' if new else 'already landed'}: {storage.uri(rel)}")
        return 0
    if args.feed not in feeds:
        parser.error(f"unknown feed {args.feed!r}; declared: {', '.join(feeds)}")
    for path in args.files:
        rel, new = land_file(storage, feeds[args.feed], path)
        print(f"{'landed' if new else 'already landed (unchanged)'}: {storage.uri(rel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
