"""SECURITY.md's threat model names the test that shows each claim: every
such reference must exist (a renamed or deleted test must update it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "SECURITY.md").exists(),
                    reason="tests run outside the source tree (wheel test)")
def test_every_test_named_in_the_threat_model_exists():
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    model = text[text.index("## Threat model"):]
    current_file = None
    checked = 0
    # `path.py::test_name` names a file (kept for the following `::test`
    # references); `path.py` alone names a file.
    for match in re.finditer(r"`([\w/]+\.py)?((?:::\w+)?)`", model):
        path, name = match.group(1), match.group(2)[2:]
        if path:
            current_file = ROOT / "tests" / path
            assert current_file.exists(), f"SECURITY.md names a missing file: tests/{path}"
        if name:
            assert current_file is not None, name
            tree = ast.parse(current_file.read_text(encoding="utf-8"))
            names = {n.name for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
            assert name in names, f"SECURITY.md names a missing test: {current_file.name}::{name}"
            checked += 1
    assert checked >= 20
