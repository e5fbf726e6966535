"""Model URI → local checkpoint folder: the one way every stage and evaluation loads a model.

A training stage logs its checkpoint folder as the ``checkpoint`` artifact of its MLflow run
(on the experiment's artifact store: a local folder by default, ``s3://…`` or the tracking
server's proxied ``mlflow-artifacts:/`` in production) and registers it as a version whose
``source`` is that artifact URI (assets/core/training_run.py). Whoever needs the weights later,
in any process on any machine, asks :func:`resolve_model` with one of

    models:/<name>/<version>   models:/<name>@<alias>      a registered version (by number or alias)
    runs:/<run id>/<path>       s3://…  mlflow-artifacts:/…  an artifact URI
    /some/folder  file:///…                                  a local checkpoint folder

and gets a local folder holding ``config.json``:

- a registered version is looked up in the registry (an alias resolves to its version first);
  its ``source`` is then treated like any artifact URI;
- a local folder (or a ``file:`` URI) is used where it is, nothing is copied;
- anything else is downloaded once with ``mlflow.artifacts.download_artifacts`` into the cache
  folder (``DD_MODEL_CACHE``, default ``var/model-cache``) under a key made of the tracking URI,
  the URI and the registered version, so loading the same version again reads the cached copy.
  The download goes into a scratch folder next to the cache entry and is renamed into place
  when complete: a reader never sees half a checkpoint, and two processes fetching the same
  version at once both end up with one complete entry.

Object-store access is MLflow's own (boto3 for ``s3://``: credentials from ``AWS_*`` variables,
the endpoint from ``MLFLOW_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``; see
``MlflowResource.process_env``). No Dagster here: the Pipes child and plain scripts use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from assets.core.settings import DEFAULT_MODEL_CACHE

REGISTRY_PREFIX = "models:/"
CONFIG_FILE = "config.json"  # every checkpoint folder (save_pretrained) has one
_INFO_SUFFIX = ".json"  # <cache>/<key>.json beside <cache>/<key>/: where the entry came from


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI and the local folder it resolved to.

    uri: what was asked for. path: the local folder with ``config.json``. source: the artifact
    URI (or folder) the files came from (a registered version's ``source``). name, version,
    run_id: the registered version, when ``uri`` named one (None otherwise). cached: the folder
    is a cache entry (False: a local folder used in place). downloaded: this call fetched it.
    """

    uri: str
    path: Path
    source: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    cached: bool = False
    downloaded: bool = False

    @property
    def model_uri(self) -> str:
        """``models:/<name>/<version>`` for a registered version (pinned, never an alias),
        else the URI as given."""
        if self.name and self.version:
            return f"{REGISTRY_PREFIX}{self.name}/{self.version}"
        return self.uri

    def record(self) -> dict[str, Any]:
        """JSON-ready description (lineage, metadata)."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["model_uri"] = self.model_uri
        return out

    def start_from(self) -> dict[str, Any]:
        """What lineage.json records of a stage's starting model: its registry URI and
        source, not the local cache folder."""
        record = self.record()
        return {k: record[k] for k in ("model_uri", "source", "name", "version", "run_id")}


def s3_env(endpoint_url: str | None) -> dict[str, str]:
    """The variables that point MLflow's S3 artifact client at an S3-compatible endpoint:
    ``MLFLOW_S3_ENDPOINT_URL`` and path-style addressing (a MinIO / moto host name cannot take
    the bucket as a subdomain); empty without an endpoint (AWS itself)."""
    if not endpoint_url:
        return {}
    return {
        "MLFLOW_S3_ENDPOINT_URL": endpoint_url,
        "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE": "path",
    }


def is_model_uri(value: str | None) -> bool:
    """True for a registry or artifact URI (``models:/``, ``runs:/``, ``s3://``, …), False
    for a local path or a plain model name such as ``tiny`` or ``smollm2-135m-instruct``."""
    if not value:
        return False
    return value.startswith((REGISTRY_PREFIX, "runs:/", "mlflow-artifacts:")) or (
        "://" in value and not value.startswith("file://")
    )


def local_path(uri: str) -> Path | None:
    """The local folder a URI names (a plain path or ``file:`` URI), None for a remote one."""
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    if is_model_uri(uri) or uri.startswith(("models:", "runs:")):
        return None
    return Path(uri)


def checkpoint_folder(folder: Path, uri: str) -> Path:
    """The folder holding ``config.json``: ``folder`` itself or its one checkpoint below."""
    if (folder / CONFIG_FILE).is_file():
        return folder
    found = sorted(p.parent for p in folder.rglob(CONFIG_FILE))
    if not found:
        raise FileNotFoundError(f"no checkpoint ({CONFIG_FILE}) under {uri}")
    return found[0]


def registered_version(client: Any, uri: str) -> Any:
    """The model version a ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` names."""
    spec = uri[len(REGISTRY_PREFIX) :].strip("/")
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, number = spec.partition("/")
    if not number.isdigit():
        raise ValueError(f"{uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    return client.get_model_version(name, number)


def cache_key(tracking_uri: str | None, source: str, name: str | None, version: str | None) -> str:
    """A folder name per (tracking store, artifact URI, registered version): readable prefix,
    digest of the whole."""
    digest = hashlib.sha256(f"{tracking_uri or ''}\n{source}\n{name}\n{version}".encode())
    label = f"{name}-v{version}" if name and version else Path(source.rstrip("/")).name or "model"
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', label)}-{digest.hexdigest()[:16]}"


def _download(source: str, tracking_uri: str | None, registry_uri: str | None, dst: Path) -> None:
    """Fetch ``source`` into ``dst`` (complete or not at all)."""
    from mlflow.artifacts import download_artifacts

    dst.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        fetched = download_artifacts(
            artifact_uri=source,
            dst_path=str(scratch),
            tracking_uri=tracking_uri,
            registry_uri=registry_uri,
        )
        folder = checkpoint_folder(Path(fetched), source)
        try:
            os.rename(folder, dst)
        except OSError:
            if not (dst / CONFIG_FILE).is_file():  # not another process's complete copy
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve_model(
    uri: str,
    *,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    cache_dir: str | Path = DEFAULT_MODEL_CACHE,
    client: Any = None,
) -> ResolvedModel:
    """The local checkpoint folder of ``uri`` (see the module docstring)."""
    name = version = run_id = None
    source = uri
    if uri.startswith(REGISTRY_PREFIX):
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        found = registered_version(client, uri)
        name, version, run_id = found.name, str(found.version), found.run_id
        source = str(found.source)
    folder = local_path(source)
    if folder is not None:
        if not folder.is_dir():
            raise FileNotFoundError(f"{uri}: checkpoint folder {folder} does not exist here")
        path = checkpoint_folder(folder, uri)
        return ResolvedModel(uri, path, source, name, version, run_id)
    entry = Path(cache_dir) / cache_key(tracking_uri, source, name, version)
    downloaded = False
    if not (entry / CONFIG_FILE).is_file():
        _download(source, tracking_uri, registry_uri, entry)
        downloaded = True
        info = {"uri": uri, "source": source, "name": name, "version": version, "run_id": run_id}
        (entry.parent / f"{entry.name}{_INFO_SUFFIX}").write_text(json.dumps(info, indent=2))
    return ResolvedModel(
        uri, entry, source, name, version, run_id, cached=True, downloaded=downloaded
    )
