"""The commands the README and the docs show, run or checked (issue 11: documented commands
that failed as written).

Fenced blocks say what they are by their info string:

* ```` ```bash docs-test ````: run by ``test_documented_commands_run`` in document order against a
  small instance (a temporary DAGSTER_HOME with deploy/dagster.local.yaml, a temporary storage
  root and warehouse, the working directory a temporary folder);
* ```` ```bash docs-test-slow ````: run after those by the slow test (dbt builds of episodes);
* ```` ```bash docs-example ````: not run (GPUs, a cluster, minutes of benchmarks, your own file).

A fenced block with a ``dagster …`` or ``python -m …`` command and none of these marks fails
``test_every_documented_command_is_marked``. Every ``dagster asset materialize`` command,
inline ones included, has its selection resolved against the real definitions: a partition
range selects only assets that backfill a range in one run, and nothing selects training or
monitoring (training runs through ``dagster job launch -j train_models``). Every ``python -m``
module named anywhere must exist.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCS = [REPO / "README.md", REPO / "deploy" / "README.md", REPO / "benchmarks" / "README.md"]
MARKS = ("docs-test", "docs-test-slow", "docs-example")
FENCE = re.compile(r"^\s*```(\S*)\s*(.*)$")
COMMAND = re.compile(r"^(dagster |python -m )")
INLINE = re.compile(r"`((?:dagster |python -m )[^`]+)`")
NOT_TRAINING_GROUPS = {"training", "monitoring"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    mark: str | None  # the fenced block's mark; None for an inline command

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def fenced_commands() -> list[Command]:
    """Commands in fenced blocks (continuation lines joined, comments dropped), with the
    block's mark."""
    found: list[Command] = []
    for doc in DOCS:
        rel = str(doc.relative_to(REPO))
        in_block, mark, pending, start = False, None, "", 0
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            fence = FENCE.match(line)
            if fence:
                in_block = not in_block
                words = fence.group(2).split()
                mark = next((w for w in words if w in MARKS), None) if in_block else None
                continue
            if not in_block:
                continue
            text = line.strip()
            if pending:
                pending, text = "", pending + " " + text
            elif COMMAND.match(text):
                start = number
            else:
                continue
            if text.endswith("\\"):
                pending = text[:-1].strip()
                continue
            text = re.sub(r"\s+#.*$", "", text)
            found.append(Command(rel, start, " ".join(text.split()), mark))
        assert not in_block, f"{rel}: unclosed code fence"
    return found


def inline_commands() -> list[Command]:
    """Commands in inline code spans of the prose (spans wrapped over a line break joined)."""
    found = []
    for doc in DOCS:
        rel = str(doc.relative_to(REPO))
        # Blank out fenced blocks, keeping line numbers.
        text = re.sub(
            r"^\s*```.*?^\s*```",
            lambda m: "\n" * m.group(0).count("\n"),
            doc.read_text(),
            flags=re.S | re.M,
        )
        for match in INLINE.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append(Command(rel, line, " ".join(match.group(1).split()), None))
    return found


def test_every_documented_command_is_marked():
    fenced = fenced_commands()
    unmarked = [str(c) for c in fenced if c.mark is None]
    assert not unmarked, "fenced commands without docs-test / docs-test-slow / docs-example"
    assert {c.mark for c in fenced} == set(MARKS)
    assert len(inline_commands()) >= 10


def test_documented_python_modules_exist():
    modules = set()
    for command in fenced_commands() + inline_commands():
        words = command.text.split()
        if words[:2] == ["python", "-m"]:
            modules.add((words[2], str(command)))
    assert len(modules) >= 10
    missing = [where for module, where in modules if importlib.util.find_spec(module) is None]
    assert not missing


def _materialize_args(text: str) -> dict[str, str]:
    words = shlex.split(text)
    if words[:3] != ["dagster", "asset", "materialize"]:
        return {}
    args = {}
    for flag, value in itertools.pairwise(words):
        if flag.startswith("--"):
            args[flag] = value
    return args


def test_documented_selections_mean_what_the_text_says():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    checked = 0
    for command in fenced_commands() + inline_commands():
        args = _materialize_args(command.text)
        if "--select" not in args:
            continue
        checked += 1
        keys = dg.AssetSelection.from_string(args["--select"]).resolve(graph)
        assert keys, f"selects nothing: {command}"
        nodes = [graph.get(k) for k in keys]
        off_limits = sorted(
            k.to_user_string()
            for k, n in zip(keys, nodes, strict=True)
            if n.group_name in NOT_TRAINING_GROUPS
        )
        assert not off_limits, f"selects training or monitoring assets {off_limits}: {command}"
        if "--partition-range" in args:
            # What the CLI requires of a partition range (else: "Partition ranges with the CLI
            # require all selected assets to have a BackfillPolicy.single_run() policy").
            not_single = sorted(
                k.to_user_string()
                for k, n in zip(keys, nodes, strict=True)
                if n.partitions_def is None or n.backfill_policy != dg.BackfillPolicy.single_run()
            )
            assert not not_single, f"not single-run partitioned: {not_single}: {command}"
    assert checked >= 5


def _instance(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.local.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "DAGSTER_", "MLFLOW_"))}
    return env | {
        "DAGSTER_HOME": str(home),
        "DD_STORAGE_ROOT": str(tmp_path / "var"),
        "DD_LAKEHOUSE_CATALOG": str(tmp_path / "var" / "warehouse" / "lakehouse.sqlite"),
        "DD_FEEDS_FILE": str(REPO / "feeds.yaml"),
        "PYTHONPATH": str(REPO),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _run(commands: list[Command], env: dict[str, str], cwd: Path) -> None:
    assert commands
    for command in commands:
        proc = subprocess.run(
            ["bash", "-c", command.text],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.e2e
def test_documented_commands_run(tmp_path):
    env = _instance(tmp_path)
    _run([c for c in fenced_commands() if c.mark == "docs-test"], env, tmp_path)
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        runs = instance.get_runs()
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert len(instance.get_materialized_partitions(dg.AssetKey("raw_bars"))) == 366
    finally:
        instance.dispose()
    assert len(list((tmp_path / "var" / "landing" / "sim-trades").glob("*.csv"))) == 15


@pytest.mark.slow
def test_documented_commands_run_with_episodes(tmp_path):
    env = _instance(tmp_path)
    _run(
        [c for c in fenced_commands() if c.mark in ("docs-test", "docs-test-slow")],
        env,
        tmp_path,
    )
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in instance.get_runs())
        assert len(instance.get_materialized_partitions(dg.AssetKey("int_features"))) == 12
        assert instance.get_latest_materialization_event(dg.AssetKey("fct_decision_episodes"))
    finally:
        instance.dispose()
