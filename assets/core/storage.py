"""One storage root for everything the platform writes: a local folder or ``s3://bucket/prefix``.

Plain Python (no Dagster) so that the collector, the simulator, tests and benchmarks share it.
Paths handed to :class:`Storage` are always relative to the root (``raw/trades/date=…``).

Why the shape: DuckDB and pyarrow read and write local files fastest, and an object store only
guarantees atomicity per object. So every write goes to a local temporary file first and is then
*committed* in one step: ``os.replace`` locally, a single PUT (or completed multipart upload) on
S3. A reader sees the old object or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec

HASH_CHUNK = 8 * 1024 * 1024
# Scratch folders are named after the process and host that own them, so that the leftovers of
# a killed process can be told from the folders of a live one: dd-stage-<pid>-<host key>-<random>.
SCRATCH_NAME = re.compile(r"dd-(stage|read|dbt)-(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{8})-")
_HOST_KEY = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def scratch_prefix(kind: str) -> str:
    return f"{kind}-{os.getpid()}-{_HOST_KEY}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a local file, streamed."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class FileInfo:
    """A stored file as listed: path relative to the root, size in bytes, modification stamp."""

    path: str
    size: int
    modified: str


class Storage:
    """A storage root with atomic writes, content hashes and local read paths."""

    def __init__(
        self,
        root: str,
        *,
        s3_endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
    ) -> None:
        self.is_s3 = root.startswith("s3://")
        if self.is_s3:
            client_kwargs = {"endpoint_url": s3_endpoint_url} if s3_endpoint_url else {}
            # No region_name here: against a local endpoint it makes mkdir send a
            # LocationConstraint that the server rejects (KNOWN_GOOD.md).
            # No listings cache: other processes land files, and a cached listing made
            # ``exists`` miss them (so ``put_immutable`` overwrote a landed file).
            self.fs = fsspec.filesystem(
                "s3",
                key=aws_access_key_id,
                secret=aws_secret_access_key,
                client_kwargs=client_kwargs,
                skip_instance_cache=True,
                use_listings_cache=False,
            )
            self.root = root.rstrip("/")
            self._base = self.root[len("s3://") :]
        else:
            self.fs = fsspec.filesystem("file")
            self.root = str(Path(root).resolve())
            self._base = self.root
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # -- addressing -------------------------------------------------------------------------
    def uri(self, rel: str) -> str:
        """Full URI (``s3://…`` or an absolute local path) of a relative path."""
        return f"{self.root}/{rel}" if rel else self.root

    def relative(self, uri: str) -> str:
        """The relative path of a full URI under this root (the inverse of :meth:`uri`);
        ValueError for a URI outside it."""
        if not uri.startswith(f"{self.root}/"):
            raise ValueError(f"{uri!r} is not under the storage root {self.root}")
        return uri[len(self.root) + 1 :]

    def _full(self, rel: str) -> str:
        # Defence in depth behind the landed-name check: no relative path may climb out of the
        # root or start from another one.
        parts = rel.split("/") if rel else []
        if rel.startswith("/") or any(p in ("..", ".") for p in parts) or "\x00" in rel:
            raise ValueError(f"{rel!r} is not a path inside the storage root {self.root}")
        return f"{self._base}/{rel}" if rel else self._base

    def _rel(self, full: str) -> str:
        full = full[len("s3://") :] if full.startswith("s3://") else full
        return full[len(self._base) :].lstrip("/")

    # -- reading ----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._full(rel))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self._full(rel), "rb") as f:
            return f.read()

    def list_files(self, prefix: str) -> list[FileInfo]:
        """Every file below ``prefix``, sorted by path; names starting with '.' or '_' are skipped
        (temporary files of in-flight writes and bookkeeping files)."""
        full = self._full(prefix)
        if not self.fs.exists(full):
            return []
        found = []
        for path, info in self.fs.find(full, detail=True).items():
            name = path.rsplit("/", 1)[-1]
            if name.startswith((".", "_")) or info.get("type") == "directory":
                continue
            modified = info.get("mtime") or info.get("LastModified") or info.get("created") or ""
            found.append(FileInfo(self._rel(path), int(info.get("size") or 0), str(modified)))
        return sorted(found, key=lambda f: f.path)

    def sha256(self, rel: str) -> str:
        """Content hash of a stored file, streamed in chunks."""
        with self.fs.open(self._full(rel), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    @contextlib.contextmanager
    def local_copy(self, rel: str) -> Iterator[Path]:
        """A local path with the file's bytes: the file itself when local, a temporary download
        on S3 (removed on exit). DuckDB and pyarrow then read at local speed."""
        if not self.is_s3:
            yield Path(self._full(rel))
            return
        full = self._full(rel)
        with tempfile.TemporaryDirectory(prefix=scratch_prefix("dd-read")) as tmp:
            # Keep the relative path: readers rely on names (file dates, hive date=… folders).
            local = Path(tmp) / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(full, str(local))
            yield local

    # -- writing ----------------------------------------------------------------------------
    def commit_file(self, local_path: Path | str, rel: str) -> None:
        """Publish a finished local file at ``rel`` in one atomic step, consuming the local file."""
        local_path = Path(local_path)
        if self.is_s3:
            self.fs.put_file(str(local_path), self._full(rel))
            local_path.unlink(missing_ok=True)
            return
        dest = Path(self._full(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".tmp-{uuid.uuid4().hex}-{dest.name}"
        # A copy first when the file lives on another filesystem: os.replace is atomic only
        # within one filesystem.
        shutil.move(str(local_path), staging)
        os.replace(staging, dest)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomically write bytes at ``rel``."""
        with self.staging_dir() as tmp:
            local = tmp / "payload"
            local.write_bytes(data)
            self.commit_file(local, rel)

    def put_immutable(self, local_path: Path | str, rel: str) -> bool:
        """Copy a local file to ``rel`` unless a file is already there. Returns True if copied.

        Used for landing: a landed file is never overwritten by the platform."""
        if self.exists(rel):
            return False
        with self.staging_dir() as tmp:
            staged = tmp / "landing"
            shutil.copyfile(local_path, staged)
            self.commit_file(staged, rel)
        return True

    def delete(self, rel: str) -> None:
        full = self._full(rel)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A local scratch folder for files about to be committed. Locally it sits inside the
        root so that the final rename stays on one filesystem."""
        base = self._staging_base()
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=scratch_prefix("dd-stage"), dir=base) as tmp:
            yield Path(tmp)

    def _staging_base(self) -> Path:
        return Path(tempfile.gettempdir()) if self.is_s3 else Path(self.root) / ".staging"

    def clean_stale_staging(self) -> list[str]:
        """Remove the scratch folders of processes of this host that are gone (a run killed with
        SIGKILL leaves its staging folder: 1,208 files after one killed history backfill).
        Folders of live processes and of other hosts are kept. Returns the removed paths."""
        removed = []
        for base in {self._staging_base(), Path(tempfile.gettempdir())}:
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                match = SCRATCH_NAME.match(entry.name)
                if not match or match["host"] != _HOST_KEY or _process_alive(int(match["pid"])):
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
        return sorted(removed)
