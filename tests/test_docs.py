"""The documentation: the API reference lists every public name, every public
function and class has a Google-style docstring, the README is a landing page.

Fast and torch-free: the public modules are imported (jax-md included), nothing is
compiled, and mkdocs itself is not needed (CI runs ``mkdocs build --strict``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PUBLIC_MODULES = (
    "jmattersim",
    "jmattersim.batch",
    "jmattersim.checks",
    "jmattersim.derivatives",
    "jmattersim.jax_md",
    "jmattersim.testing",
    "jmattersim.train",
)
SITE = "https://jmattersim.github.io/jmattersim"
README_MAX_LINES = 150


# ------------------------------------------------------------------------ the API reference


def api_pages() -> list[Path]:
    pages = sorted((DOCS / "api").glob("*.md"))
    if (DOCS / "api.md").is_file():
        pages.append(DOCS / "api.md")
    return pages


def parse_entries(text: str) -> list[tuple[str, list[str] | None]]:
    """mkdocstrings entries of a page: (identifier, the ``members`` option's list or
    None). Options follow the ``::: identifier`` line, indented."""
    entries = []
    lines = text.splitlines()
    for k, line in enumerate(lines):
        match = re.match(r"^:::\s+([\w.]+)\s*$", line)
        if not match:
            continue
        block = []
        for follow in lines[k + 1 :]:
            if follow.strip() and not follow.startswith((" ", "\t")):
                break
            block.append(follow)
        entries.append((match.group(1), _members(textwrap.dedent("\n".join(block)))))
    return entries


def _members(options: str) -> list[str] | None:
    """The ``members:`` list of an options block (inline ``[a, b]`` or ``- a`` lines)."""
    lines = options.splitlines()
    for k, line in enumerate(lines):
        match = re.match(r"^(\s*)members:\s*(.*)$", line)
        if not match:
            continue
        inline = match.group(2).strip()
        if inline.startswith("["):
            return [m.strip().strip("'\"") for m in inline.strip("[]").split(",") if m.strip()]
        if inline in ("", "|"):
            indent = len(match.group(1))
            names = []
            for item in lines[k + 1 :]:
                found = re.match(r"^(\s*)-\s*([\w.]+)", item)
                if not found or len(found.group(1)) < indent:
                    break
                names.append(found.group(2).strip("'\""))
            return names
        return None  # members: true / false
    return None


def resolve(identifier: str):
    """The object an mkdocstrings identifier names."""
    parts = identifier.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(identifier)


def documented() -> tuple[set[str], list[object]]:
    """Qualified names the reference documents (entries, and the explicit members of
    module entries), and the objects they are."""
    names: set[str] = set()
    for page in api_pages():
        for identifier, members in parse_entries(page.read_text()):
            names.add(identifier)
            if members and inspect.ismodule(resolve(identifier)):
                names.update(f"{identifier}.{m}" for m in members)
    return names, [resolve(n) for n in sorted(names)]


def public_names() -> list[tuple[str, str]]:
    return [
        (module, name)
        for module in PUBLIC_MODULES
        for name in importlib.import_module(module).__all__
    ]


def test_parse_entries_reads_both_member_styles():
    page = textwrap.dedent("""\
        # Page

        ::: pkg.mod
            options:
              members: [a, b]

        ::: pkg.other
            options:
              show_root_heading: true
              members:
                - c
                - d

        ::: pkg.func

        text
        """)
    assert parse_entries(page) == [
        ("pkg.mod", ["a", "b"]),
        ("pkg.other", ["c", "d"]),
        ("pkg.func", None),
    ]


def test_reference_pages_exist():
    assert api_pages(), "no API reference pages (docs/api.md or docs/api/*.md)"


def test_every_public_name_is_in_the_reference():
    names, objects = documented()
    missing = []
    for module, name in public_names():
        if f"{module}.{name}" in names:
            continue
        value = getattr(importlib.import_module(module), name)
        # an alias of a documented object
        if any(value is obj for obj in objects) and not isinstance(value, (int, str)):
            continue
        missing.append(f"{module}.{name}")
    assert not missing, f"public names missing from the API reference: {missing}"


def test_reference_entries_are_public():
    """No entry documents a private path (``jmattersim._src``): readers import what
    the reference names."""
    names, _ = documented()
    private = sorted(n for n in names if any(p.startswith("_") for p in n.split(".")))
    assert not private, f"API reference entries with private paths: {private}"


# ------------------------------------------------------------------------------ docstrings


def _own_doc(obj) -> str:
    """The docstring written for ``obj`` itself (not inherited, not the one that
    dataclasses and NamedTuples generate)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    doc = inspect.cleandoc(doc or "")
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # generated
    return doc


def _function_node(fn) -> ast.FunctionDef | ast.AsyncFunctionDef:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = tree.body[0]
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    return node


def _own_statements(node: ast.AST):
    """Statements of a function, without those of functions and classes inside it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        yield child
        yield from _own_statements(child)


def docstring_problems(fn, name: str) -> list[str]:
    """What a function's docstring lacks: text; ``Args:`` when it takes arguments;
    ``Returns:`` when it returns a value (``Yields:`` for a generator)."""
    fn = inspect.unwrap(fn)
    doc = _own_doc(fn)
    if not doc:
        return [f"{name}: no docstring"]
    problems = []
    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
    if params and "Args:" not in doc:
        problems.append(f"{name}: no Args: section (takes {', '.join(params)})")
    node = _function_node(fn)
    statements = list(_own_statements(node))
    if any(isinstance(s, (ast.Yield, ast.YieldFrom)) for s in statements):
        if "Yields:" not in doc:
            problems.append(f"{name}: a generator without a Yields: section")
    elif any(
        isinstance(s, ast.Return)
        and s.value is not None
        and not (isinstance(s.value, ast.Constant) and s.value.value is None)
        for s in statements
    ):
        if "Returns:" not in doc:
            problems.append(f"{name}: returns a value but has no Returns: section")
    return problems


def _is_structured(cls) -> bool:
    """A dataclass or NamedTuple: its fields are documented as Attributes."""
    return "__dataclass_fields__" in cls.__dict__ or hasattr(cls, "_fields")


def class_problems(cls, name: str) -> list[str]:
    doc = _own_doc(cls)
    if not doc:
        return [f"{name}: no docstring"]
    problems = []
    if _is_structured(cls) and "Attributes:" not in doc:
        problems.append(f"{name}: no Attributes: section for its fields")
    init = cls.__dict__.get("__init__")
    if (
        inspect.isfunction(init)
        and init.__code__.co_filename != "<string>"
        and len(inspect.signature(init).parameters) > 1
        and "Args:" not in doc
    ):
        problems.append(f"{name}: its __init__ takes arguments; no Args: section")
    for attr, value in cls.__dict__.items():
        function = getattr(value, "fget", None) or getattr(value, "__func__", value)
        if attr.startswith("_") or not getattr(function, "__module__", "").startswith("jmattersim"):
            continue  # private, or generated (jax-md's dataclasses add .set)
        where = f"{name}.{attr}"
        if isinstance(value, property):
            if not _own_doc(value.fget):
                problems.append(f"{where}: no docstring")
        elif isinstance(value, (classmethod, staticmethod)):
            problems += docstring_problems(value.__func__, where)
        elif inspect.isfunction(value):
            problems += docstring_problems(value, where)
    return problems


def public_objects():
    for module, name in public_names():
        yield f"{module}.{name}", getattr(importlib.import_module(module), name)


def test_every_public_function_and_class_has_a_docstring():
    problems = []
    for name, obj in public_objects():
        if inspect.ismodule(obj):
            if not inspect.cleandoc(obj.__doc__ or ""):
                problems.append(f"{name}: no module docstring")
        elif inspect.isclass(obj):
            problems += class_problems(obj, name)
        elif callable(obj):
            problems += docstring_problems(obj, name)
    assert not problems, "\n".join(problems)


def _definition(module_name: str, name: str, seen: int = 0) -> tuple[Path, int, ast.Module]:
    """The file and statement index where ``module_name.name`` is assigned, following
    ``from .x import name`` re-exports."""
    module = importlib.import_module(module_name)
    path = Path(module.__file__)
    tree = ast.parse(path.read_text())
    for k, node in enumerate(tree.body):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return path, k, tree
        if isinstance(node, ast.ImportFrom) and any(
            (a.asname or a.name) == name for a in node.names
        ):
            assert seen < 5, f"re-export cycle at {module_name}.{name}"
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            source = importlib.util.resolve_name(
                "." * node.level + (node.module or ""), module.__spec__.parent
            )
            return _definition(source, original, seen + 1)
    raise LookupError(f"{module_name}.{name} is not assigned at module level")


def test_every_public_constant_has_a_docstring():
    """Constants carry an attribute docstring (a string right after the
    assignment), which mkdocstrings shows."""
    problems = []
    for module, name in public_names():
        value = getattr(importlib.import_module(module), name)
        if inspect.ismodule(value) or inspect.isclass(value) or callable(value):
            continue
        path, k, tree = _definition(module, name)
        after = tree.body[k + 1] if k + 1 < len(tree.body) else None
        if not (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
            and after.value.value.strip()
        ):
            problems.append(f"{module}.{name} ({path.name}): no docstring after the assignment")
    assert not problems, "\n".join(problems)


def test_docstring_checks_catch_omissions():
    def documented(a: int) -> int:
        """Adds one.

        Args:
            a: a number.

        Returns:
            a + 1.
        """
        return a + 1

    def no_returns(a: int) -> int:
        """Adds one.

        Args:
            a: a number.
        """
        return a + 1

    def no_args(a: int) -> None:
        """Prints a."""
        print(a)

    def generator(n: int):
        """Counts.

        Args:
            n: how far.

        Returns:
            Nothing useful.
        """
        yield from range(n)

    assert docstring_problems(documented, "documented") == []
    assert docstring_problems(no_returns, "f") == ["f: returns a value but has no Returns: section"]
    assert docstring_problems(no_args, "g") == ["g: no Args: section (takes a)"]
    assert docstring_problems(generator, "h") == ["h: a generator without a Yields: section"]


# -------------------------------------------------------------------- README and wording


def test_readme_is_a_landing_page():
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines"
    assert SITE in readme, f"README.md does not link to the site {SITE}"
    links = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert links, "README.md links to no docs/ page"
    broken = [link for link in links if not (REPO / link).is_file()]
    assert not broken, f"README.md links to missing pages: {broken}"


def test_site_url_is_the_documented_one():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'Documentation = "{SITE}"' in pyproject
    assert re.search(
        rf"^site_url:\s*{re.escape(SITE)}/?\s*$", (REPO / "mkdocs.yml").read_text(), re.M
    )


def test_benchmark_table_is_the_latest_results():
    """docs/benchmarks.md holds benchmarks/results.md between its markers
    (``python benchmarks/run.py --update-docs`` copies it)."""
    text = (DOCS / "benchmarks.md").read_text()
    start, end = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
    table = text[text.index(start) + len(start) : text.index(end)].strip()
    assert table == (REPO / "benchmarks" / "results.md").read_text().strip()
