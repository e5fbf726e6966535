"""Imports run in one direction: nothing low imports something high.

Every module of the repository is parsed with ``ast`` (nothing is imported) and its imports,
lazy ones inside functions included, are checked against these rules:

- ``training/`` imports neither Dagster, ``assets`` nor ``orchestration`` (plain Python: it
  runs in a Pipes child, a notebook or ``python -m training``);
- ``assets/`` never imports ``orchestration`` (what data exists, not when or where);
- inside ``assets/`` a package imports only itself and packages of a lower rank (``RANKS``);
  packages of the same rank do not import each other;
- only the modules that define Dagster objects (``DAGSTER_MODULES``) import Dagster, directly or
  through another module of the repository: the rest (settings, storage, the ingestion core,
  the live collector and its wire format, the oracles, the drift statistics, the training
  launcher, which speaks the Pipes protocol through ``dagster_pipes`` only) load without it;
- no package module imports ``tests`` or ``benchmarks``, and no test module imports another
  test module (shared helpers live in ``tests/helpers/`` or a conftest).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("assets", "orchestration", "training", "tests", "benchmarks")

# The rooms of assets/, lowest first. A package may import its own modules and those of a
# strictly lower rank.
RANKS = {
    "core": 0,  # settings, storage, feeds, resources, partitions, automation, dbt, training run
    "ingestion": 1,  # landed files -> raw tables
    "live": 1,  # collector, replay server, simulator, their wire format
    "episodes": 2,  # raw tables -> episodes and datasets (dbt), their oracles
    "models": 3,  # datasets -> trained, evaluated, promoted models
    "monitoring": 4,  # drift of the market against what the champion learned
}

# The modules of assets/ that define Dagster objects; every other one loads without Dagster.
DAGSTER_MODULES = {
    "assets.core.automation",
    "assets.core.dbt",
    "assets.core.materializations",
    "assets.core.partitions",
    "assets.core.resources",
    "assets.ingestion.raw_assets",
    "assets.episodes.dbt_assets",
    "assets.episodes.datasets",
    "assets.models.training",
    "assets.models.evaluation",
    "assets.monitoring.feature_drift",
}


def is_dagster(name: str) -> bool:
    """Dagster or one of its integrations. ``dagster_pipes`` is not: it is the dependency-free
    protocol package a Pipes child speaks."""
    top = name.split(".")[0]
    return top == "dagster" or (top.startswith("dagster_") and top != "dagster_pipes")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The modules ``path`` imports: dotted names, ``from a import b`` read as ``a.b`` when that
    is a module of the repository (``known``), relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    paths = [p for top in TOP_LEVEL for p in sorted((root / top).rglob("*.py"))]
    known = {module_name(p, root) for p in paths}
    return {module_name(p, root): imports_of(p, known, root) for p in paths}


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def _room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "assets" and len(parts) > 1 else None


def _reaches_dagster(graph: Mapping[str, set[str]], start: str) -> list[str] | None:
    """The chain of repository modules from ``start`` to a Dagster import, if any."""
    seen: set[str] = set()
    stack: list[list[str]] = [[start]]
    while stack:
        chain = stack.pop()
        for imported in sorted(graph.get(chain[-1], ())):
            if is_dagster(imported):
                return [*chain, imported]
            if imported in graph and imported not in seen:
                seen.add(imported)
                stack.append([*chain, imported])
    return None


def violations(
    graph: Mapping[str, set[str]],
    ranks: Mapping[str, int] = RANKS,
    dagster_modules: Iterable[str] = DAGSTER_MODULES,
) -> list[str]:
    dagster_modules = set(dagster_modules)
    found: list[str] = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            top = target.split(".")[0]
            if _inside(module, "training") and (
                is_dagster(target) or top in ("assets", "orchestration")
            ):
                found.append(f"{module} imports {target}: training/ is plain Python")
            if top in ("tests", "benchmarks") and not _inside(module, top):
                found.append(f"{module} imports {target}: packages never import {top}/")
            if _inside(module, "tests") and target.split(".")[-1].startswith("test_"):
                found.append(f"{module} imports {target}: a test module imports another")
            if _inside(module, "assets") and top == "orchestration":
                found.append(f"{module} imports {target}: assets/ never imports orchestration/")
            room, target_room = _room(module), _room(target)
            if room is None or target_room is None or room == target_room:
                continue
            if room not in ranks or target_room not in ranks:
                found.append(f"{module} imports {target}: assets/{room or target_room} has no rank")
            elif ranks[target_room] >= ranks[room]:
                found.append(
                    f"{module} imports {target}: assets/{room} (rank {ranks[room]}) may not "
                    f"import assets/{target_room} (rank {ranks[target_room]})"
                )
        plain = _inside(module, "training") or (
            _inside(module, "assets") and module not in dagster_modules
        )
        if plain and (chain := _reaches_dagster(graph, module)):
            found.append(f"{module} loads Dagster: {' -> '.join(chain)}")
    return found


def test_imports_run_in_one_direction() -> None:
    graph = import_graph()
    assert "assets.live.collector" in graph and "training.sft" in graph
    assert violations(graph) == []


def test_every_room_of_assets_has_a_rank_and_the_dagster_modules_exist() -> None:
    rooms = {p.name for p in (ROOT / "assets").iterdir() if (p / "__init__.py").exists()}
    assert rooms == set(RANKS)
    graph = import_graph()
    assert set(graph) >= DAGSTER_MODULES


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"assets.core.storage": {"assets.models.training"}}, "rank 0) may not import"),
        ({"assets.ingestion.ingest": {"assets.live.wire"}}, "rank 1) may not import"),
        ({"assets.core.storage": {"orchestration.sensors"}}, "never imports orchestration"),
        ({"training.sft": {"dagster"}}, "training/ is plain Python"),
        ({"training.sft": {"assets.core.feeds"}}, "training/ is plain Python"),
        ({"assets.future.x": {"assets.core.feeds"}}, "has no rank"),
        ({"tests.test_a": {"tests.test_b"}}, "a test module imports another"),
        ({"orchestration.demo": {"tests.helpers"}}, "never import tests/"),
        (
            {"assets.live.collector": {"assets.core.feeds"}, "assets.core.feeds": {"dagster_dbt"}},
            "assets.live.collector loads Dagster: assets.live.collector -> assets.core.feeds",
        ),
    ],
)
def test_a_violation_is_reported(graph: dict[str, set[str]], expected: str) -> None:
    found = violations(graph)
    assert any(expected in line for line in found), found


def test_allowed_imports_are_not_reported() -> None:
    graph = {
        "assets.models.training": {"assets.episodes.datasets", "assets.core.feeds", "dagster"},
        "assets.core.training_run": {"dagster_pipes", "training.sft"},
        "assets.episodes.datasets": {"assets.ingestion.ingest", "dagster"},
        "orchestration.sensors": {"assets.monitoring.feature_drift", "dagster"},
        "tests.test_a": {"tests.helpers.dbt", "assets.core.feeds"},
    }
    assert violations(graph, dagster_modules={"assets.episodes.datasets"}) == [
        "assets.models.training loads Dagster: assets.models.training -> dagster"
    ]


def test_imports_are_read_from_source(tmp_path: Path) -> None:
    package = tmp_path / "assets" / "live"
    package.mkdir(parents=True)
    (tmp_path / "assets" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "wire.py").write_text("")
    module = package / "collector.py"
    module.write_text(
        "from . import wire\n"
        "from assets.live import wire as w\n"
        "def main():\n"
        "    import dagster as dg\n"
        "    from orchestration.sensors import landing_sensor\n"
    )
    known = {"assets", "assets.live", "assets.live.wire", "assets.live.collector"}
    assert imports_of(module, known, tmp_path) >= {
        "assets.live",
        "assets.live.wire",
        "dagster",
        "orchestration.sensors",
    }
