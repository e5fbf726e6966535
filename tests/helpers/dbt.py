"""The one dbt harness of the tests: a plan of dbt invocations run in one subprocess.

A plan is a list of steps; :func:`step` builds one. Each step invokes dbt (``dbtRunner``, so the
plan pays dbt's start-up once) on its own lakehouse with its own vars, may first copy raw files
into place and may afterwards export tables to Parquet. A test's "warehouse" is a lakehouse
given by the path of its SQLite catalog (its Parquet data beside it, ``<catalog>.files/``; see
:func:`assets.core.lakehouse.as_lakehouse`). Plans run in parallel when started with
:func:`start_plan` and awaited with :func:`wait`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from assets.core.lakehouse import lakehouse_connection

DBT_PROJECT = Path(__file__).resolve().parents[2] / "dbt_project"

_RUNNER = """
import json, os, shutil, sys, time
from dbt.cli.main import dbtRunner
from assets.core.lakehouse import lakehouse_connection

plan = json.loads(open(sys.argv[1]).read())
for step in plan["steps"]:
    for source, target in step["copy"]:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
    os.environ["DD_LAKEHOUSE_CATALOG"] = step["warehouse"]
    os.environ["DD_LAKEHOUSE_DATA_PATH"] = step["warehouse"] + ".files"
    started = time.perf_counter()
    result = dbtRunner().invoke([
        *step["args"], "--quiet", "--no-use-colors",
        "--project-dir", plan["project_dir"], "--profiles-dir", plan["project_dir"],
        "--target-path", plan["target_path"], "--log-path", plan["log_path"],
        "--vars", json.dumps(step["vars"]),
    ])
    if not result.success:
        sys.exit(f"dbt {step['args']} {step['vars']} failed: {result.exception} {result.result}")
    for table, path in step["export"].items():
        with lakehouse_connection(step["warehouse"]) as con:
            con.execute(f"copy (select * from {table}) to '{path}' (format parquet)")
    print(*step["args"], step["vars"], f"{time.perf_counter() - started:.1f}s", flush=True)
"""


def step(
    warehouse: Path | str,
    *args: str,
    vars: Mapping[str, Any],
    export: Mapping[str, Path | str] | None = None,
    copy: list[tuple[Path, Path]] | None = None,
) -> dict[str, Any]:
    """One dbt invocation (``args``: command and selection) on ``warehouse`` with ``vars``;
    ``copy``: raw files put in place first; ``export``: tables written to Parquet after."""
    return {
        "warehouse": str(warehouse),
        "args": list(args),
        "vars": dict(vars),
        "export": {table: str(path) for table, path in (export or {}).items()},
        "copy": [[str(source), str(target)] for source, target in copy or []],
    }


def window_steps(
    warehouse: Path | str,
    root: Path | str,
    select: str,
    windows: list[tuple[Any, Any]],
    *extra: str,
    **variables: Any,
) -> list[dict[str, Any]]:
    """``dbt build --select <select> <extra>`` of each (min_date, max_date) window in turn over
    the raw files under ``root``, as Dagster runs partitions."""
    return [
        step(
            warehouse,
            "build",
            "--select",
            select,
            *extra,
            vars={"storage_root": str(root), "min_date": str(lo), "max_date": str(hi), **variables},
        )
        for lo, hi in windows
    ]


# Only the tests whose every parent is built: downstream models' tests are not the caller's.
CAUTIOUS = {"DBT_INDIRECT_SELECTION": "cautious"}


def start_plan(
    work: Path, name: str, steps: list[dict[str, Any]], env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start the plan (target and logs under ``work``, suffixed ``name``); ``env``: extra
    environment (``DBT_INDIRECT_SELECTION`` …)."""
    plan = {
        "project_dir": str(DBT_PROJECT),
        "target_path": str(target_path(work, name)),
        "log_path": str(work / f"logs_{name}"),
        "steps": steps,
    }
    plan_file = work / f"plan_{name}.json"
    plan_file.write_text(json.dumps(plan))
    return subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(plan_file)],
        env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait(proc: subprocess.Popen, timeout: float = 900) -> str:
    """The plan's output once it succeeded; a failed plan fails the test with dbt's output."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"dbt plan failed:\n{out[-6000:]}\n{err[-6000:]}"
    return out + err


def run_plan(
    work: Path,
    name: str,
    steps: list[dict[str, Any]],
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
) -> str:
    return wait(start_plan(work, name, steps, env), timeout)


def build_windows(
    work: Path,
    name: str,
    warehouse: Path | str,
    root: Path | str,
    select: str,
    windows: list[tuple[Any, Any]],
    *extra: str,
    **variables: Any,
) -> str:
    """:func:`window_steps` run as the plan ``name``, with only the data tests whose every
    parent is built (:data:`CAUTIOUS`)."""
    steps = window_steps(warehouse, root, select, windows, *extra, **variables)
    return run_plan(work, name, steps, CAUTIOUS)


def target_path(work: Path, name: str = "dbt") -> Path:
    """Where the plan ``name`` (:func:`run`'s by default) left dbt's manifest and compiled SQL."""
    return work / f"target_{name}"


def run(work: Path, warehouse: Path, root: Path, *args: str, **variables: Any) -> None:
    """One dbt invocation on ``warehouse`` over the raw files under ``root``."""
    run_plan(work, "dbt", [step(warehouse, *args, vars={"storage_root": str(root), **variables})])


def read(warehouse: Path | str, sql: str) -> pd.DataFrame:
    """A query on a test's lakehouse (its catalog's path), read-only, in UTC."""
    with lakehouse_connection(warehouse) as con:
        return con.execute(sql).df()
