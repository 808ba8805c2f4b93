"""The layering rules of docs/architecture.md, checked on the source tree:
no private helper is imported across packages, no import cycle between
packages, and each wire format is defined in one module."""

from __future__ import annotations

import ast
import pathlib
import re

import rolewire

SRC = pathlib.Path(rolewire.__file__).parent


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts)
        name = name.removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


MODULES = _modules()


def _package(module: str) -> str:
    """The top-level unit under ``rolewire``: a subpackage or a module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _is_package(module: str) -> bool:
    return (SRC.parent / module.replace(".", "/") / "__init__.py").exists()


def _imports(tree: ast.Module, *, runtime_only: bool) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every ``from rolewire... import``; with
    ``runtime_only`` the ``if TYPE_CHECKING:`` blocks are skipped."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if runtime_only and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(
                    child.test):
                continue
            if runtime_only and isinstance(child, ast.FunctionDef) and \
                    child.name == "__getattr__":
                continue  # a module's deprecated alias, loaded only when used
            if isinstance(child, ast.ImportFrom) and child.module and \
                    child.module.startswith("rolewire") and child.level == 0:
                found.append((child.module, [a.name for a in child.names]))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("rolewire"):
                        found.append((alias.name, []))
            visit(child)

    visit(tree)
    return found


def test_no_private_helper_is_imported_across_packages():
    offences = []
    for module, tree in MODULES.items():
        here = _package(module)
        for target, names in _imports(tree, runtime_only=False):
            there = _package(target)
            if there == here:
                continue
            # rolewire._native* is the native layer: only the record
            # backends use it (and the loader itself).
            if module.startswith("rolewire._native") or target.startswith("rolewire._native") and (
                    module.startswith(("rolewire.record", "rolewire._native"))):
                continue
            private_module = any(p.startswith("_") and p != "__init__"
                                 for p in target.split(".")[1:])
            private_names = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private_module or private_names:
                offences.append(f"{module} imports {target} {private_names or ''}")
    assert offences == []


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for module, tree in MODULES.items():
        here = _package(module)
        if here == "rolewire":
            continue  # the top-level facade re-exports everything
        for target, _ in _imports(tree, runtime_only=True):
            there = _package(target)
            if there not in ("rolewire", here):
                graph.setdefault(here, set()).add(there)
    cycles = []

    def walk(node: str, stack: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif len(stack) < 12:
                walk(nxt, stack + [nxt])

    for start in graph:
        walk(start, [start])
    assert cycles == []


def test_each_wire_struct_is_defined_once():
    """The header layouts (struct formats) of frames, call messages and
    records appear in exactly one module each."""
    formats = {'">BQB"': "call message header", '">BBIQ"': "record header"}
    where: dict[str, set[str]] = {f: set() for f in formats}
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for fmt in formats:
            if re.search(r"Struct\(" + re.escape(fmt), text):
                where[fmt].add(path.name)
    assert {fmt: len(files) for fmt, files in where.items()} == {f: 1 for f in formats}, where


#: The sans-IO layers: they are given the time (``now`` or a ``clock``
#: callable); only transports read a clock.
SANS_IO = ("rolewire.protocol", "rolewire.record", "rolewire.handshake", "rolewire.roles",
           "rolewire.session", "rolewire.services", "rolewire.budgets", "rolewire.rpc")
CLOCK_CALLS = {"time.monotonic", "time.time", "time.perf_counter", "time.monotonic_ns",
               "time.time_ns", "loop.time", "asyncio.get_running_loop().time"}


def test_sans_io_layers_read_no_clock():
    # A clock passed as a default argument (``clock=time.monotonic``) is
    # fine: the caller decides. Calling one is not.
    offenders = []
    for name, tree in MODULES.items():
        if not any(name == p or name.startswith(p + ".") for p in SANS_IO):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in CLOCK_CALLS:
                offenders.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders
