"""docs/architecture.md's module map is checked against the source tree.

Every ``.py`` module under ``appliance/``, ``provisioning/`` and ``web/`` must
have a row in the tables of the "Module map" section, and every row must name
a module that exists. The rows name modules by their path from the repository
root (``appliance/core/model.py``).

``__main__.py`` files are entry points (``python -m appliance``, ``python -m
appliance.llm``) and must be listed. A package's ``__init__.py`` must be listed
only when it defines a function or class (``store/__init__.py``'s ``Store``,
``cli/__init__.py``'s ``main``): one that is empty, holds a docstring or only
re-exports has nothing of its own to describe, and the package is described by
its modules. Such an ``__init__.py`` may still be listed (``web/__init__.py``
is, as the only file of its package).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "docs" / "architecture.md"
PACKAGES = ("appliance", "provisioning", "web")
SECTION = "Module map"

_MODULE = re.compile(r"`([\w/]+\.py)`")


def _section(text: str, title: str) -> str:
    """The ``## title`` section, up to the next ``##`` heading (``###`` stay in)."""
    match = re.search(rf"^##[ \t]+{re.escape(title)}[ \t]*$", text, re.M)
    assert match, f"architecture.md has no '## {title}' section"
    rest = text[match.end() :]
    end = re.search(r"^##[ \t]", rest, re.M)
    return rest[: end.start()] if end else rest


def listed_modules(doc: str) -> list[str]:
    """Module paths named in the first column of the module map's table rows,
    in order (repeats kept, so a duplicate row can be reported)."""
    modules = []
    for line in _section(doc, SECTION).splitlines():
        cells = line.strip().strip("|").split("|")
        if not line.lstrip().startswith("|") or len(cells) < 2:
            continue
        modules += _MODULE.findall(cells[0])
    return modules


def _defines_something(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return any(isinstance(node, kinds) for node in tree.body)


def tree_modules(root: Path) -> tuple[set[str], set[str]]:
    """``(required, optional)`` module paths under ``root``'s packages: optional
    are the ``__init__.py`` files that define nothing (see the module doc)."""
    required: set[str] = set()
    optional: set[str] = set()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if path.name == "__init__.py" and not _defines_something(path):
                optional.add(rel)
            else:
                required.add(rel)
    return required, optional


def check_module_map(doc: str, required: set[str], optional: set[str]) -> list[str]:
    """What is wrong with the module map of ``doc``: modules it does not list,
    rows for modules that do not exist, and modules listed twice."""
    listed = listed_modules(doc)
    problems = [f"not listed: {m}" for m in sorted(required - set(listed))]
    stale = set(listed) - required - optional
    problems += [f"listed but not in the tree: {m}" for m in sorted(stale)]
    problems += [f"listed twice: {m}" for m in sorted({m for m in listed if listed.count(m) > 1})]
    return problems


def test_the_module_map_matches_the_tree() -> None:
    required, optional = tree_modules(REPO)
    assert "appliance/app.py" in required and "appliance/core/model.py" in required
    problems = check_module_map(ARCHITECTURE.read_text(encoding="utf-8"), required, optional)
    assert not problems, "docs/architecture.md, '## Module map':\n" + "\n".join(problems)


def test_the_checker_reports_a_missing_row() -> None:
    doc = ARCHITECTURE.read_text(encoding="utf-8")
    required, optional = tree_modules(REPO)
    row = next(line for line in doc.splitlines() if line.startswith("| `appliance/app.py` |"))
    without = doc.replace(row + "\n", "")
    assert check_module_map(without, required, optional) == ["not listed: appliance/app.py"]


def test_the_checker_reports_a_row_for_a_module_that_is_gone() -> None:
    doc = ARCHITECTURE.read_text(encoding="utf-8")
    required, optional = tree_modules(REPO)
    row = "| `appliance/commands.py` | one handler per subcommand |\n"
    stale = doc.replace("| `appliance/app.py` |", row + "| `appliance/app.py` |", 1)
    assert check_module_map(stale, required, optional) == [
        "listed but not in the tree: appliance/commands.py"
    ]


def test_the_checker_reports_a_duplicate_row() -> None:
    doc = ARCHITECTURE.read_text(encoding="utf-8")
    required, optional = tree_modules(REPO)
    row = next(line for line in doc.splitlines() if line.startswith("| `appliance/app.py` |"))
    doubled = doc.replace(row, row + "\n" + row, 1)
    assert check_module_map(doubled, required, optional) == ["listed twice: appliance/app.py"]


def test_init_files_that_define_something_are_required(tmp_path: Path) -> None:
    (tmp_path / "appliance" / "empty").mkdir(parents=True)
    (tmp_path / "appliance" / "empty" / "__init__.py").write_text('"""A marker."""\n')
    (tmp_path / "appliance" / "full").mkdir()
    (tmp_path / "appliance" / "full" / "__init__.py").write_text("class Store: ...\n")
    (tmp_path / "appliance" / "full" / "__main__.py").write_text("")
    required, optional = tree_modules(tmp_path)
    assert required == {"appliance/full/__init__.py", "appliance/full/__main__.py"}
    assert optional == {"appliance/empty/__init__.py"}
