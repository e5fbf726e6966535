"""Local HTTP servers the tests start as subprocesses (moto's S3, an MLflow tracking server):
a free port, started, waited for until they answer, stopped."""

from __future__ import annotations

import contextlib
import socket
import subprocess
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
