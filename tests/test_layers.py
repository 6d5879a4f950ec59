"""Imports go one way: webapp.core ← scheduler (the engine) ← the web; and nothing imports in a cycle.

Every module belongs to a layer by its package:
- core: webapp.core and below, the rules and the schema;
- engine: scheduler and below;
- web: the webapp package itself (create_app) and everything else below it;
- tools: tools and below (benchmarks), which may use any layer and which nothing uses.
A package in none of them is named too. Imports count wherever they are written: inside
functions, under a top-level `if` or `try`, or as importlib.import_module("...") and
__import__("..."). Neither the core nor the engine may use what only a request has.
"""
from __future__ import annotations

import ast
import pathlib
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE, ENGINE, WEB, TOOLS = "core", "engine", "web", "tools"
# What each layer may import of the project's own modules.
ALLOWED = {CORE: {CORE}, ENGINE: {CORE, ENGINE}, WEB: {CORE, ENGINE, WEB}, TOOLS: {CORE, ENGINE, WEB, TOOLS}}
WHY = {
    CORE: "webapp.core holds the rules and the schema: it imports neither the engine nor the web",
    ENGINE: "the engine (scheduler) imports webapp.core only, never the web",
    WEB: "the web imports core and the engine, never the tools",
}
# What only a request being served has, or only the web does with it: neither the core nor the
# engine serves a request.
WEB_ONLY = ("flask.request", "flask.session", "flask.g", "flask.render_template", "flask.url_for", "flask.redirect",
            "flask.abort", "flask.flash", "flask_login.current_user", "flask_login.login_user",
            "flask_login.logout_user", "flask_wtf")
# Packages that are no layer of the product.
NOT_PRODUCT = ("tests",)


def layer_of(module: str) -> str | None:
    """The layer of one of the project's modules, or None for anything else (stdlib, libraries)."""
    if module == "webapp.core" or module.startswith("webapp.core."):
        return CORE
    if module == "scheduler" or module.startswith("scheduler."):
        return ENGINE
    if module == "webapp" or module.startswith("webapp."):
        return WEB
    if module == "tools" or module.startswith("tools."):
        return TOOLS
    return None


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _run_on_import(body: list) -> list:
    """The statements that run when the module is imported: its top level, and what top-level
    `if`, `try` and `with` hold, but for `if TYPE_CHECKING:` (which never runs)."""
    found = []
    for node in body:
        found.append(node)
        if isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                found += _run_on_import(node.body) + _run_on_import(node.orelse)
        elif isinstance(node, ast.Try):
            found += _run_on_import(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                found += _run_on_import(handler.body)
        elif isinstance(node, ast.With):
            found += _run_on_import(node.body)
    return found


def _dynamic_import(node) -> str | None:
    """The module that importlib.import_module("...") or __import__("...") names, if a constant."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    called = node.func
    name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", None)
    if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def imports_of(path: pathlib.Path, root: pathlib.Path, *, top_level_only: bool = False):
    """(line, imported module) for every import of the file, made absolute; with `top_level_only`,
    only those that run when the module is imported (not inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = _run_on_import(tree.body) if top_level_only else list(ast.walk(tree))
    if top_level_only:  # the calls in what runs on import, at any depth of those statements
        nodes += [inner for node in list(nodes) if not isinstance(node, (ast.If, ast.Try, ast.With))
                  for inner in ast.walk(node) if isinstance(inner, ast.Call)]
    for node in nodes:
        dynamic = _dynamic_import(node)
        if dynamic:
            yield node.lineno, dynamic
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def project_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module of every top-level package of the project but the tests."""
    packages = sorted(init.parent for init in root.glob("*/__init__.py") if init.parent.name not in NOT_PRODUCT)
    return {module_name(path, root): path for package in packages for path in sorted(package.rglob("*.py"))}


def known_module(name: str, modules: dict) -> str | None:
    """The project module that `name` is or lies in (`webapp.core.models.User` → webapp.core.models)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def layer_violations(root: pathlib.Path = ROOT) -> list[str]:
    """Every import that crosses the layers the wrong way, each said in a line that names it."""
    modules = project_modules(root)
    found = []
    for name, path in modules.items():
        layer = layer_of(name)
        where = path.relative_to(root)
        if layer is None:
            found.append(f"{where} is in no layer: add its package to layer_of()")
            continue
        for line, target in _imported_modules(path, root, modules):
            if target not in modules:
                if layer in (CORE, ENGINE) and target.startswith(WEB_ONLY):
                    found.append(f"{where}:{line} imports {target}: only the web serves requests")
                continue
            target_layer = layer_of(target)
            if target_layer not in ALLOWED[layer]:
                found.append(f"{where}:{line} imports {target} ({target_layer}): {WHY[layer]}")
        if name == "webapp":
            # Importing webapp.core runs webapp/__init__.py first: at import time it may load
            # nothing of the project, or every core module would drag the web in with it.
            for line, imported in imports_of(path, root, top_level_only=True):
                target = known_module(imported, modules)
                if target and target != "webapp":
                    found.append(f"{where}:{line} imports {target} when the package is imported: "
                                 "webapp/__init__.py imports the web inside create_app() only")
    return _most_specific(found)


def _imported_modules(path: pathlib.Path, root: pathlib.Path, modules: dict):
    """(line, module) for each import: a project module it names, or else what it names. Of a
    package and its submodule named in one statement (`from webapp import core`), the submodule."""
    by_line: dict[int, set[str]] = {}
    for line, imported in imports_of(path, root):
        by_line.setdefault(line, set()).add(known_module(imported, modules) or imported)
    for line, targets in sorted(by_line.items()):
        for target in sorted(targets):
            if not any(other.startswith(target + ".") for other in targets if other in modules):
                yield line, target


def _most_specific(lines: list[str]) -> list[str]:
    """One line per import: `from webapp.views import page` names webapp.views.page, not also webapp.views."""
    kept = []
    for line in dict.fromkeys(lines):
        place, _, rest = line.partition(" imports ")
        target = rest.split(" ", 1)[0]
        if not any(other.startswith(f"{place} imports {target}.") for other in lines):
            kept.append(line)
    return kept


def import_cycles(root: pathlib.Path = ROOT) -> list[str]:
    """Cycles among the imports that run when a module is imported (not inside functions)."""
    modules = project_modules(root)
    graph = {}
    for name, path in modules.items():
        targets = {known_module(imported, modules) for _, imported in imports_of(path, root, top_level_only=True)}
        # A package importing its own submodules at its end is how blueprints register routes.
        graph[name] = {t for t in targets if t and t != name and not t.startswith(name + ".")}
    cycles, done = [], set()

    def visit(node, trail):
        if node in trail:
            cycles.append(" -> ".join(trail[trail.index(node):] + [node]))
            return
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, trail + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    return cycles


def test_imports_go_one_way_core_engine_web():
    assert layer_violations() == []


def test_there_is_no_import_cycle_among_modules():
    assert import_cycles() == []


def test_every_module_is_in_a_layer():
    assert [name for name in project_modules(ROOT) if layer_of(name) is None] == []


# --- the checks themselves fail when the rule is broken ---------------------------------


def _tree(tmp_path, files: dict[str, str]) -> pathlib.Path:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in ("webapp", "webapp/core", "webapp/views", "scheduler", "tools"):
        init = tmp_path / folder / "__init__.py"
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text("")
    return tmp_path


def test_a_core_module_importing_the_engine_is_named(tmp_path):
    root = _tree(tmp_path, {"webapp/core/outbox.py": "from scheduler.claims import claim_batch\n",
                            "scheduler/claims.py": "def claim_batch(): pass\n"})
    assert layer_violations(root) == [
        "webapp/core/outbox.py:1 imports scheduler.claims (engine): webapp.core holds the rules and the "
        "schema: it imports neither the engine nor the web"]


def test_a_core_module_importing_the_web_is_named_even_inside_a_function(tmp_path):
    root = _tree(tmp_path, {"webapp/core/rules.py": "def f():\n    from ..views import page\n",
                            "webapp/views/page.py": ""})
    assert layer_violations(root) == [
        "webapp/core/rules.py:2 imports webapp.views.page (web): webapp.core holds the rules and the schema: "
        "it imports neither the engine nor the web"]


def test_the_core_importing_the_request_is_named(tmp_path):
    root = _tree(tmp_path, {"webapp/core/rules.py": "from flask import current_app, request\n"})
    assert layer_violations(root) == ["webapp/core/rules.py:1 imports flask.request: only the web serves requests"]


def test_an_import_written_as_a_string_is_named(tmp_path):
    root = _tree(tmp_path, {"webapp/core/rules.py": "import importlib\n\ndef f():\n"
                                                    "    return importlib.import_module('scheduler.claims')\n",
                            "scheduler/claims.py": ""})
    assert layer_violations(root) == [
        "webapp/core/rules.py:4 imports scheduler.claims (engine): webapp.core holds the rules and the schema: "
        "it imports neither the engine nor the web"]


def test_a_package_in_no_layer_is_named(tmp_path):
    root = _tree(tmp_path, {"plugins/__init__.py": "", "plugins/extra.py": ""})
    assert "plugins/extra.py is in no layer: add its package to layer_of()" in layer_violations(root)


def test_a_core_module_importing_core_through_its_package_is_no_violation(tmp_path):
    root = _tree(tmp_path, {"webapp/core/rules.py": "from webapp import core\nfrom webapp.core import models\n",
                            "webapp/core/models.py": ""})
    assert layer_violations(root) == []


def test_the_engine_importing_a_view_or_the_request_is_named(tmp_path):
    root = _tree(tmp_path, {"scheduler/sender.py": "from webapp.views import page\nfrom flask import request\n",
                            "webapp/views/page.py": ""})
    assert layer_violations(root) == [
        "scheduler/sender.py:1 imports webapp.views.page (web): the engine (scheduler) imports webapp.core "
        "only, never the web",
        "scheduler/sender.py:2 imports flask.request: only the web serves requests"]


def test_the_package_importing_the_web_when_imported_is_named(tmp_path):
    root = _tree(tmp_path, {"webapp/__init__.py": "from .views import page\ntry:\n    from .views import other\n"
                                                  "except ImportError:\n    pass\n\ndef create_app():\n"
                                                  "    from . import views\n",
                            "webapp/views/page.py": "", "webapp/views/other.py": ""})
    assert layer_violations(root) == [
        "webapp/__init__.py:1 imports webapp.views.page when the package is imported: webapp/__init__.py "
        "imports the web inside create_app() only",
        "webapp/__init__.py:3 imports webapp.views.other when the package is imported: webapp/__init__.py "
        "imports the web inside create_app() only"]


def test_a_product_module_importing_the_tools_is_named(tmp_path):
    root = _tree(tmp_path, {"webapp/views/page.py": "import tools.bench\n", "tools/bench.py": ""})
    assert layer_violations(root) == [
        "webapp/views/page.py:1 imports tools.bench (tools): the web imports core and the engine, never the tools"]


def test_an_import_cycle_is_named_also_through_an_if(tmp_path):
    root = _tree(tmp_path, {"scheduler/a.py": "from . import b\n",
                            "scheduler/b.py": "import sys\nif sys.version_info >= (3,):\n    from .a import x\n"})
    assert import_cycles(root) == ["scheduler.a -> scheduler.b -> scheduler.a"]
