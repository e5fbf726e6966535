"""Local HTTP servers the tests start as subprocesses (moto's S3, an MLflow tracking server):
a free port, started, waited for until they answer, stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is up
    except OSError:
        return False


@contextlib.contextmanager
def serve(
    command: list[str],
    probe: str,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    stop_timeout: float = 5,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` (its output in ``log_path``) until ``probe`` answers; stop it after."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(env))
    try:
        deadline = time.monotonic() + timeout
        while not answers(probe):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{command[0]} did not answer on {probe}: {log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


MLFLOW_START_TIMEOUT_S = 90.0  # ~50 s on 2 busy cores


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str, artifacts_destination: str, s3_endpoint: str, log_path: Path
) -> Iterator[str]:
    """A real ``mlflow server`` on a free port that proxies artifacts (``--serve-artifacts``) to
    ``artifacts_destination`` on the S3 server at ``s3_endpoint``, as the compose stack's does
    to MinIO; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
        MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE="path",
    )
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts_destination, "--serve-artifacts",
        "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1",
    ]  # fmt: skip
    with serve(command, f"{url}/health", env, log_path, MLFLOW_START_TIMEOUT_S, stop_timeout=10):
        yield url


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The machine's PostgreSQL (trust auth), as the tests use it.
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


def dagster_home(home: Path, instance_file: str = "dagster.postgres-local.yaml") -> Path:
    """A DAGSTER_HOME holding only one instance file of deploy/ (by default the one on the local
    PostgreSQL, its database named by DAGSTER_PG_DB), as a ConfigMap would mount it in a pod."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY / instance_file, home / "dagster.yaml")
    return home


def production_instance_env(pg_db: str, logs_bucket: str, logs_prefix: str) -> dict[str, str]:
    """What deploy/dagster.yaml (the production instance file) reads from the environment,
    pointed at the local PostgreSQL (trust auth) and a bucket for the runs' compute logs."""
    return {
        "DAGSTER_PG_HOST": PG_HOST,
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_USER": PG_USER,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": pg_db,
        "DAGSTER_COMPUTE_LOGS_BUCKET": logs_bucket,
        "DAGSTER_COMPUTE_LOGS_PREFIX": logs_prefix,
    }
