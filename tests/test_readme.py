"""The README's configuration table names every environment variable the instance reads
(webapp/core/config.py from_environment), and no variable that nothing reads."""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
READERS = {"_int", "_float", "_bool", "os.environ.get"}


def variables_read() -> set[str]:
    tree = ast.parse((ROOT / "webapp" / "core" / "config.py").read_text())
    function = next(node for node in ast.walk(tree)
                    if isinstance(node, ast.FunctionDef) and node.name == "from_environment")
    return {call.args[0].value for call in ast.walk(function)
            if isinstance(call, ast.Call) and ast.unparse(call.func) in READERS
            and call.args and isinstance(call.args[0], ast.Constant)}


def table_variables() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration (environment)\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE)


def test_the_configuration_table_names_every_variable_of_from_environment():
    read = variables_read()
    assert {"DATABASE_URL", "MAILSENDER_HTTPS", "MAILSENDER_PROXY_HOPS", "MAILSENDER_PASSWORD_TIME_COST"} <= read
    missing = read - set(table_variables())
    assert not missing, f"README's configuration table lacks {sorted(missing)}"


def test_every_variable_in_the_table_is_read_somewhere_and_named_once():
    named = table_variables()
    assert len(named) == len(set(named)), "a variable has two rows"
    sources = "".join(path.read_text() for folder in ("webapp", "scheduler") for path in (ROOT / folder).rglob("*.py"))
    unread = [name for name in named if f'"{name}"' not in sources]
    assert not unread, f"README's configuration table names variables nothing reads: {unread}"
