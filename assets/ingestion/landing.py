"""Landing: put a vendor's file into the landing zone of a declared feed, unchanged.

``python -m assets.ingestion.landing FEED FILE [FILE ...]`` or ``python -m assets.ingestion.landing --default``.
A landed file is immutable. Landing the same name again with the same bytes does nothing;
with other bytes it is refused (exit status 1): land the new content with ``--correction``,
which lands it as ``<stem>.correction-<N><suffixes>`` next to the original; the ingestion then
reads the newest correction and records the older versions as superseded.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from assets.core.feeds import (
    FeedSpec,
    LandingNameError,
    check_landed_name,
    correction_name,
    correction_of,
    load_feeds,
)
from assets.core.settings import feeds_file_from_env, storage_settings_from_env
from assets.core.storage import Storage, file_sha256

DEFAULT_FEED = "bokeh-stocks"


class LandingConflict(RuntimeError):
    """The name is landed already with other content (landed files are immutable)."""


def default_feed_file() -> Path:
    """Real daily OHLCV 2000-2013 shipped by the bokeh-sampledata package (public domain)."""
    return Path(str(resources.files("bokeh_sampledata") / "_data" / "stocks.csv.gz"))


def _versions(storage: Storage, feed: FeedSpec, name: str) -> dict[int, str]:
    """Landed versions of ``name``: 0 for the original, N for ``.correction-N``."""
    base, _ = correction_of(name)
    versions = {}
    for info in storage.list_files(feed.landing_prefix):
        landed = info.path.removeprefix(f"{feed.landing_prefix}/")
        landed_base, version = correction_of(landed)
        if landed_base == base:
            versions[version] = info.path
    return versions


def land_file(
    storage: Storage,
    feed: FeedSpec,
    local: Path,
    name: str | None = None,
    *,
    correction: bool = False,
) -> tuple[str, bool]:
    """Land ``local`` as ``landing/<feed>/<name>`` (default: the local file's name). Returns
    (path, whether it was new).

    Same name and same bytes: nothing to do. Same name, other bytes: LandingConflict.
    ``correction=True`` lands the bytes as the next ``.correction-N`` of an already landed
    name (unless they equal its newest version). A name that is not a plain file name raises
    LandingNameError before anything is written."""
    name = check_landed_name(local.name if name is None else name)
    if correction:
        versions = _versions(storage, feed, name)
        if not versions:
            raise LandingConflict(
                f"{feed.landed_path(name)} is not landed: nothing to correct (land it without "
                "--correction)"
            )
        newest = versions[max(versions)]
        if storage.sha256(newest) == file_sha256(local):
            return newest, False
        name = correction_name(name, max(versions) + 1)
    rel = feed.landed_path(name)
    if storage.put_immutable(local, rel):
        return rel, True
    if storage.sha256(rel) == file_sha256(local):
        return rel, False
    raise LandingConflict(
        f"{storage.uri(rel)} is already landed with other content; landed files are immutable. "
        "Land the new content as a correction (python -m assets.ingestion.landing --correction "
        f"{feed.name} FILE) or under a new name"
    )


def land_default(storage: Storage, feeds: dict[str, FeedSpec]) -> tuple[str, bool]:
    if DEFAULT_FEED not in feeds:
        raise SystemExit(f"feed {DEFAULT_FEED!r} is not declared in the feeds file")
    return land_file(storage, feeds[DEFAULT_FEED], default_feed_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets.ingestion.landing", description=__doc__)
    parser.add_argument("feed", nargs="?", help="declared feed name")
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--default", action="store_true", help="land the embedded default feed")
    parser.add_argument(
        "--name", help="land a single FILE under this name instead of its own (a plain file name)"
    )
    parser.add_argument(
        "--correction",
        action="store_true",
        help="land changed content of an already landed name as its next .correction-N",
    )
    args = parser.parse_args(argv)
    storage = Storage(**storage_settings_from_env())
    feeds = load_feeds(feeds_file_from_env())
    if args.default:
        rel, new = land_default(storage, feeds)
        print(f"{'landed' if new else 'already landed'}: {storage.uri(rel)}")
        return 0
    if args.feed not in feeds:
        parser.error(f"unknown feed {args.feed!r}; declared: {', '.join(feeds)}")
    if args.name is not None and len(args.files) != 1:
        parser.error("--name takes exactly one FILE")
    failed = 0
    for path in args.files:
        try:
            rel, new = land_file(
                storage, feeds[args.feed], path, args.name, correction=args.correction
            )
        except (LandingConflict, LandingNameError) as exc:
            print(f"refused: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{'landed' if new else 'already landed (unchanged)'}: {storage.uri(rel)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
