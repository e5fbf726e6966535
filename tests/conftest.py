"""Shared fixtures: storage roots on a local folder and on a real S3-compatible HTTP server.

- ``s3_server`` (session): moto's S3 server as a subprocess on a free port; yields its endpoint
  URL and is stopped at the end. Started only if a test asks for S3.
- ``s3_storage``: a :class:`Storage` on a fresh bucket of that server (``s3://<bucket>/dd``).
- ``s3_client``: a plain boto3 client on that server.
- ``local_storage``: a :class:`Storage` on a temporary folder.
- ``any_storage``: each test runs on both (ids ``local`` and ``s3``).

Dummy credentials (``testing``) are set with ``monkeypatch`` by ``s3_storage`` only, so they are
undone after each S3 test and never leak into other tests. No autouse fixtures. One hook,
``pytest_collection_modifyitems``, only orders the modules: the longest first (see
``LONGEST_MODULES``), so that on ``-n 2 --dist loadfile`` a long module does not start last and
leave the other worker idle.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.servers import PG_HOST, PG_PORT, PG_USER, free_port, serve

from assets.core.storage import Storage

# Modules in the order they should start, longest first (seconds on 2 cores, fresh clone,
# 2026-12-04: `pytest --durations`); every other module follows in collection order. With
# `make test`'s `--no-loadscope-reorder`, xdist hands out modules in this order.
LONGEST_MODULES = (
    "orchestration/test_stateless_runs.py",  # 280
    "episodes/test_lakehouse.py",  # 125
    "ingestion/test_killed_run.py",  # 120
    "orchestration/test_e2e_cli.py",  # 110
    "training/test_training.py",  # 110
    "models/test_training_assets.py",  # 95
    "episodes/test_marts.py",  # 65
    "episodes/test_episodes_assets.py",  # 60
    "episodes/test_backfill_identity.py",  # 55
    "episodes/test_datasets_assets.py",  # 50
    "orchestration/test_ui.py",  # 45
)
S3_START_TIMEOUT_S = 10.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first (a stable sort: tests keep their order within a module)."""
    here = Path(__file__).parent
    if missing := [name for name in LONGEST_MODULES if not (here / name).is_file()]:
        raise pytest.UsageError(f"conftest.LONGEST_MODULES names missing modules: {missing}")
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}

    def module_rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return rank.get(module, len(rank))

    items.sort(key=module_rank)


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that could point boto3 at a real account or profile.
S3_ENV_UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL (``http://127.0.0.1:<port>``) of a moto S3 server running for the session."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV_UNSET}
    env.update(S3_ENV, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    with serve(_moto_command(port), f"{endpoint}/moto-api/", env, log_path, S3_START_TIMEOUT_S):
        yield endpoint


def _boto3_client(endpoint: str):
    """A plain boto3 S3 client on the test server, independent of :class:`Storage`."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def s3_client(s3_server: str):
    """A plain boto3 S3 client on the session's server (reads back what the code wrote,
    independent of it)."""
    return _boto3_client(s3_server)


@pytest.fixture
def s3_storage(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Storage:
    """Storage at ``s3://<fresh bucket>/dd`` on the session's moto server."""
    for name in S3_ENV_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"dd-test-{uuid.uuid4().hex[:12]}"
    _boto3_client(s3_server).create_bucket(Bucket=bucket)
    return Storage(
        f"s3://{bucket}/dd",
        s3_endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def local_storage(tmp_path: Path) -> Storage:
    """Storage on a fresh local folder."""
    return Storage(str(tmp_path / "root"))


@pytest.fixture(params=["local", "s3"])
def any_storage(request: pytest.FixtureRequest) -> Storage:
    """The same test on a local folder and on S3 (the S3 server starts only when needed)."""
    return request.getfixturevalue(f"{request.param}_storage")


# ---------------------------------------------------------------- real Postgres


@pytest.fixture
def pg_databases() -> Iterator[Callable[[], str]]:
    """A factory of fresh databases on the local test server, all dropped afterwards. Skips if
    the server is unreachable."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3
        )
    except psycopg2.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL not reachable at {PG_USER}@{PG_HOST}:{PG_PORT} (trust auth expected): "
            f"{str(exc).strip()}"
        )
    admin.autocommit = True
    names: list[str] = []

    def create() -> str:
        name = f"dd_test_{uuid.uuid4().hex[:12]}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return name

    try:
        yield create
    finally:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_database(pg_databases: Callable[[], str]) -> str:
    """A fresh database on the local test server, dropped afterwards. Skips if unreachable."""
    return pg_databases()
