"""The dependency rules of docs/architecture.md, checked over the source tree's imports (an AST walk)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the top-level packages (or dotted prefixes) its modules may not import, and why.
RULES = {
    "cohort_engine": ({"flask", "celery", "app", "core", "tasks", "workers", "dialects", "cohorts_cli"},
                      "the engine is a library: no web, no Celery, no service or vendor code"),
    "cohorts_cli": ({"flask", "werkzeug", "celery", "app", "core", "tasks", "workers", "dialects"},
                    "the command-line client talks to the service over HTTP only (and runs the engine's commands)"),
    "core": ({"flask", "werkzeug", "celery", "app", "tasks", "workers"},
             "core is shared by the web app and the workers: it imports neither"),
    "app": ({"tasks", "workers", "celery"}, "the web sends jobs through the sender create_app is given"),
    "tasks": ({"app", "flask"}, "workers never import the web"),
    "workers": ({"app", "flask"}, "workers never import the web"),
}
# Dialect packages: only views.py is web code; the rest (schemas, translation, job handlers) is plain.
DIALECT_PLAIN_FORBIDDEN = {"flask", "werkzeug", "celery", "app", "tasks", "workers"}


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, function-level ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from dialects.sugo import views` names the module views.
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def is_view_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "dialects" and "views" in parts[1:]


def violations(package: str, forbidden: set[str], allow_views: bool = True) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_names(path):
            top = name.split(".")[0]
            if top in forbidden or (not allow_views and is_view_module(name)):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return sorted(set(found))


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_follow_the_layers(package):
    forbidden, why = RULES[package]
    bad = violations(package, forbidden, allow_views=package not in ("tasks", "workers", "core", "cohort_engine"))
    assert not bad, f"{package}: {why}:\n" + "\n".join(bad)


def test_dialects_are_plain_except_their_views():
    bad = []
    for path in sorted((ROOT / "dialects").rglob("*.py")):
        if path.name == "views.py":
            continue
        for line, name in imported_names(path):
            if name.split(".")[0] in DIALECT_PLAIN_FORBIDDEN or is_view_module(name):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "only a dialect's views.py is web code:\n" + "\n".join(sorted(set(bad)))


def test_the_walk_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from workers.celery_app import create_celery\n")
    assert (2, "workers.celery_app") in imported_names(module)
