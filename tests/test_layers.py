"""The layers hold: nothing below whatsched.api imports it, and the routes hold no SQL (they call
query modules: whatsched.messages.queries, whatsched.directory.*, whatsched.notifications.queries,
...). Read with `ast`, without importing anything."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "backend" / "whatsched"
API = PACKAGE / "api"
ROUTES = API / "routes"

# A statement: a verb and, somewhere after it, what it acts on; or text that opens like one, or
# carries a positional parameter ($1).
SQL_TEXT = [
    re.compile(r"\b(select|insert|update|delete)\b.*\b(from|into|set)\b", re.IGNORECASE | re.DOTALL),
    re.compile(r"^\s*(select|insert\s+into|update\s+\w+(\.\w+)?\s+set|delete\s+from|with\s+\w+\s+as)\b", re.IGNORECASE),
    re.compile(r"\$\d+\b"),
]
# What runs SQL on an asyncpg connection (or a prepared statement, or a cursor).
SQL_CALLS = re.compile(r"^(execute|executemany|fetch|fetchval|fetchrow|fetchmany|prepare|cursor|copy_\w+)$")


def modules(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def imported(name: str, path: Path, tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every module name the file imports (relative imports resolved), with its line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from whatsched import api` imports whatsched.api too: name it once, the first that is api.
            names = [source, *(f"{source}.{alias.name}" for alias in node.names)]
            yield node.lineno, next((n for n in names if is_api(n)), source)


def is_api(module: str) -> bool:
    return module == "whatsched.api" or module.startswith("whatsched.api.")


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (prose, not SQL)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def sql_in(tree: ast.AST) -> Iterator[tuple[int, str]]:
    prose = docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            if any(pattern.search(node.value) for pattern in SQL_TEXT):
                yield node.lineno, f"SQL text {node.value.strip()[:60]!r}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and SQL_CALLS.match(node.func.attr):
            yield node.lineno, f"a .{node.func.attr}() call"


def test_the_package_is_where_the_test_looks() -> None:
    assert (API / "app.py").is_file() and (ROUTES / "messages.py").is_file()


def test_no_module_below_the_api_imports_it() -> None:
    offenders = [
        f"{name} ({path.relative_to(PACKAGE.parent)}:{line}) imports {module}"
        for name, path in modules(PACKAGE)
        if not is_api(name)
        for line, module in imported(name, path, ast.parse(path.read_text(), str(path)))
        if is_api(module)
    ]
    assert not offenders, "modules outside whatsched.api import it:\n" + "\n".join(offenders)


def test_routes_hold_no_sql() -> None:
    offenders = [
        f"{name} ({path.relative_to(PACKAGE.parent)}:{line}): {what}"
        for name, path in modules(ROUTES)
        for line, what in sql_in(ast.parse(path.read_text(), str(path)))
    ]
    assert not offenders, "SQL in whatsched.api.routes (move it to a query module):\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    [
        'await conn.execute("update public.notifications set is_read = true")',
        'x = await conn.fetchval("select private.is_admin()")',
        'await conn.fetchval(f"select public.{verb}_message($1::uuid)", mid)',
        'Q = """\nselect m.id\nfrom public.messages m"""',
        "statement = await conn.prepare(query)",
        "await conn.copy_records_to_table('contacts', records=rows)",
        "rows = await cursor.fetch(100)",
    ],
)
def test_the_sql_check_sees_sql(source: str) -> None:
    assert list(sql_in(ast.parse(source)))


@pytest.mark.parametrize(
    "source",
    [
        '"""Partial update: only the fields present change."""',
        'raise ApiError(403, "forbidden", "Only an admin can list every user\'s messages.")',
        'Query(None, description="Text in the name or email, or digits of the phone")',
        'Field(description="messages created in the range with the most recipients")',
        "await queries.notify(conn, texts.SCHEDULED_WHILE_DISCONNECTED, 'message', mid)",
    ],
)
def test_the_sql_check_lets_prose_and_query_calls_be(source: str) -> None:
    assert not list(sql_in(ast.parse(source)))


def test_the_import_check_sees_every_spelling() -> None:
    for source in (
        "from whatsched.api.common import UtcDateTime",
        "import whatsched.api.deps",
        "from whatsched import api",
        "from ..api import deps",
    ):
        modules_seen = [
            m for _, m in imported("whatsched.messages.models", PACKAGE / "messages" / "models.py", ast.parse(source))
        ]
        assert any(is_api(m) for m in modules_seen), source
