"""The docs point at code and tests by ``path.py::name``; every such pointer must still exist.

``docs/guarantees.md`` is what an auditor reads to learn which test proves which promise.
A renamed test or function would leave it citing nothing, and nobody would notice: this
test reads every ``path.py::name`` (and the ``::name`` shorthand that follows a ``path.py`` in
the same table cell or line, meaning that file) in the README and ``docs/``, and checks
that the file defines that name (a module-level function or class, or ``Class.method``).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `path.py::name`, the shorthand `::name`, or a bare `path.py` (which a later shorthand refers to)
REFERENCE = re.compile(r"`(?P<path>[\w./-]+\.py)?(?:::(?P<name>[A-Za-z_][\w.]*))?`")
CELL_OR_LINE = re.compile(r"[^|\n]+")
PATH = re.compile(r"`(?P<path>[\w.-]+(?:/[\w.-]+)*\.(?:py|md|toml|ini|cfg|tf|yml|yaml|sh))(?:::[\w.]+)?`")


def references(text: str) -> list[tuple[str, str]]:
    """``(path, name)`` of every pointer; a shorthand takes the last path named before it in
    the same table cell or line. A shorthand with no path before it is returned with path ""."""
    found: list[tuple[str, str]] = []
    for cell in CELL_OR_LINE.findall(text):
        path = ""
        for match in REFERENCE.finditer(cell):
            path = match["path"] or path
            if match["name"]:
                found.append((path, match["name"]))
    return found


@cache
def defined_names(path: Path) -> frozenset[str]:
    """Module-level functions, classes and constants, and ``Class.method`` for methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return frozenset(names)


def all_references() -> list[tuple[str, str, str]]:
    return [(doc.relative_to(ROOT).as_posix(), path, name)
            for doc in DOCS for path, name in references(doc.read_text())]


def test_the_docs_cite_code_and_tests_by_name() -> None:
    cited = all_references()
    assert len(cited) > 80  # guarantees.md alone cites about a hundred: the pattern still matches them
    assert any(path.startswith("tests/") for _, path, _ in cited)


@pytest.mark.parametrize(("doc", "path", "name"), all_references())
def test_every_reference_in_the_docs_names_something_that_exists(doc: str, path: str, name: str) -> None:
    assert path, f"{doc}: `::{name}` has no file named before it in its cell or line"
    source = ROOT / path
    assert source.is_file(), f"{doc} cites {path}, which does not exist"
    assert name in defined_names(source), f"{doc} cites {path}::{name}, which {path} does not define"


def cited_paths() -> list[tuple[str, str]]:
    return sorted({(doc.relative_to(ROOT).as_posix(), m["path"]) for doc in DOCS for m in PATH.finditer(doc.read_text())})


@pytest.mark.parametrize(("doc", "path"), cited_paths())
def test_every_file_the_docs_name_exists(doc: str, path: str) -> None:
    assert (ROOT / path).is_file() or (ROOT / "docs" / path).is_file(), f"{doc} names {path}, which does not exist"


def test_a_shorthand_reference_means_the_file_named_last_in_its_cell() -> None:
    text = ("| a | `tests/test_a.py::test_one`, `::test_two`, `models/b.py::f`, `::g` | `::orphan` |\n"
            "`tests/test_c.py::test_three`, `tests/test_d.py` (`::test_four`)")
    assert references(text) == [("tests/test_a.py", "test_one"), ("tests/test_a.py", "test_two"),
                                ("models/b.py", "f"), ("models/b.py", "g"), ("", "orphan"),
                                ("tests/test_c.py", "test_three"), ("tests/test_d.py", "test_four")]
