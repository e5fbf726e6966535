"""Starting a real ``dagster-daemon`` for end-to-end tests (imported by tests; not a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def start_daemon(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen:
    """``dagster-daemon run`` on orchestration.definitions in its own session (stop it with
    ``os.killpg(proc.pid, SIGTERM)``), output to ``log``. Create the instance's storage before
    (open it once): two processes creating a SQLite instance at once can leave two alembic
    heads."""
    return subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-m", "orchestration.definitions"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
