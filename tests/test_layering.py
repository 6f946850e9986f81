"""The layers of ARCHITECTURE.md, checked on the source: every import under src/steadylm is read
with `ast` (module-level and inside functions alike, since a lazy import is still a dependency),
and a rule that breaks names the importing file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "steadylm"
BACKENDS = "steadylm.evaluate.backends"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _read_imports() -> dict[str, list[tuple[str, list[str], int, Path]]]:
    """``{module: [(imported module, names taken from it, line, file), ...]}`` for steadylm's own
    imports. ``from pkg import sub`` where ``sub`` is a submodule counts as importing ``pkg.sub``."""
    out: dict[str, list[tuple[str, list[str], int, Path]]] = {}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = out.setdefault(mod, [])
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno, path) for a in node.names if a.name.split(".")[0] == "steadylm"]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, path.name == "__init__.py", node)
                if target.split(".")[0] != "steadylm":
                    continue
                names = [a.name for a in node.names]
                subs = [n for n in names if f"{target}.{n}" in MODULES]
                edges.append((target, [n for n in names if n not in subs], node.lineno, path))
                edges += [(f"{target}.{n}", [], node.lineno, path) for n in subs]
    return out


IMPORTS = _read_imports()


def _within(mod: str, *prefixes: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _runs_models() -> set[str]:
    """The backends, `steadylm.models`, and every module that reaches either through its imports
    (so may load or call a model)."""
    runs = {m for m in IMPORTS if _within(m, BACKENDS, "steadylm.models")}
    grew = True
    while grew:
        grew = False
        for m, edges in IMPORTS.items():
            if m not in runs and any(_within(t, *runs) for t, *_ in edges):
                runs.add(m)
                grew = True
    return runs


def _is_metric(target: str) -> bool:
    """An evaluation module: anything under steadylm.evaluate except the backends."""
    return _within(target, "steadylm.evaluate") and target != "steadylm.evaluate" and not _within(target, BACKENDS)


def _violations(rule) -> list[str]:
    return [f"{path.relative_to(SRC.parent)}:{line}: {mod} imports {target}"
            for mod, edges in IMPORTS.items() for target, _, line, path in edges if rule(mod, target)]


RUNS_MODELS = _runs_models()

#: (name, rule(importer, imported) -> True when forbidden)
RULES = [
    ("ensemble imports evaluation metrics", lambda m, t: _within(m, "steadylm.ensemble") and _is_metric(t)),
    ("backends import something above them",
     lambda m, t: _within(m, BACKENDS) and not _within(t, BACKENDS) and _within(
         t, "steadylm.evaluate", "steadylm.ensemble", "steadylm.train", "steadylm.study", "steadylm.report", "steadylm.cli")),
    ("report imports backends, models or an evaluation that runs them",
     lambda m, t: _within(m, "steadylm.report")
     and (_within(t, BACKENDS, "steadylm.models") or (_is_metric(t) and t in RUNS_MODELS))),
    ("config imports train", lambda m, t: m == "steadylm.config" and _within(t, "steadylm.train")),
    ("data or models import train, evaluate or report",
     lambda m, t: _within(m, "steadylm.data", "steadylm.models")
     and _within(t, "steadylm.train", "steadylm.evaluate", "steadylm.report")),
    ("stats imports a layer above it", lambda m, t: m == "steadylm.stats" and not _within(t, "steadylm.errors")),
]


@pytest.mark.parametrize("name, rule", RULES, ids=[n for n, _ in RULES])
def test_layer_rule(name, rule):
    bad = _violations(rule)
    assert not bad, f"{name}:\n" + "\n".join(bad)


def _package(mod: str) -> str:
    """The layer-sized unit a module belongs to: ``backends``, else its top-level name under steadylm."""
    return "backends" if _within(mod, BACKENDS) else ".".join(mod.split(".")[:2])


def test_no_cycle_between_packages():
    """Packages import each other one way only (a cycle means no layer order exists)."""
    graph: dict[str, set[str]] = {}
    for mod, edges in IMPORTS.items():
        for target, *_ in edges:
            a, b = _package(mod), _package(target)
            if a != b and b != "steadylm":  # `from steadylm import __version__` is the package's own name
                graph.setdefault(a, set()).add(b)
    cycles = []
    for a, outs in graph.items():
        for b in outs:
            seen, todo = set(), [b]
            while todo:
                x = todo.pop()
                if x == a:
                    cycles.append(f"{a} -> {b} -> ... -> {a}")
                    break
                if x not in seen:
                    seen.add(x)
                    todo += graph.get(x, ())
    assert not cycles, "\n".join(sorted(cycles))


def _private_uses() -> list[str]:
    """``from steadylm.x import _y`` and ``x._y`` on an imported steadylm module, across modules."""
    bad = []
    for mod, edges in IMPORTS.items():
        bound: dict[str, str] = {}  # local name -> steadylm module it names
        for target, names, line, path in edges:
            if target == mod:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(SRC.parent)}:{line}: {mod} imports {target}.{n}")
            if not names and target in MODULES:
                bound[target.rsplit(".", 1)[-1]] = target
        path = MODULES[mod]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {mod} uses {bound[node.value.id]}.{node.attr}")
    return bad


def test_no_private_names_across_modules():
    bad = _private_uses()
    assert not bad, "make the name public where it is shared, or move it:\n" + "\n".join(bad)


def test_the_reader_sees_imports():
    """The rules above pass vacuously if the reader finds nothing: pin a few edges it must see."""
    assert any(t == "steadylm.errors" for t, *_ in IMPORTS["steadylm.io"])
    assert any(t == "steadylm.evaluate.perplexity" for t, *_ in IMPORTS["steadylm.train.loop"])  # a lazy import
    assert "steadylm.evaluate.generation" in RUNS_MODELS and "steadylm.io" not in RUNS_MODELS
