"""Imports go one way: models ← engine (scheduler/) ← views; and nothing imports in a cycle."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
VIEW_MODULES = ("webapp.views", "webapp.api", "webapp.errors", "webapp.page_context", "webapp.cli")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module that `path` imports, made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _sources(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_engine_never_imports_a_view_or_the_request():
    for path in _sources("scheduler"):
        for name in _imports(path):
            assert not name.startswith(VIEW_MODULES), f"{path.name} imports {name}"
            assert name not in ("flask.request", "flask.session", "flask_login.current_user"), f"{path.name} imports {name}"


def test_models_import_neither_the_engine_nor_the_views():
    lower = [ROOT / "webapp" / "core" / name for name in ("models.py", "database.py", "security.py")]
    for path in lower:
        for name in _imports(path):
            assert not name.startswith(("scheduler", *VIEW_MODULES)), f"{path.name} imports {name}"


def test_there_is_no_import_cycle_among_modules():
    modules = {_module_name(p): p for folder in ("webapp", "scheduler") for p in _sources(folder)}
    # Only imports at module level make a cycle at import time.
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top_level = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                               type_ignores=[])
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in top_level.body:
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    # A package importing its own submodules at its end is how blueprints register routes.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}

    visiting, done = set(), set()

    def visit(node, trail):
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join(trail + [node])
        visiting.add(node)
        for target in sorted(graph[node]):
            visit(target, trail + [node])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
