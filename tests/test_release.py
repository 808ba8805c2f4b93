"""Release hygiene: the license file, the warnings-as-errors switch."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_license_file_matches_the_declared_license():
    pyproject = ROOT / "pyproject.toml"
    license_file = ROOT / "LICENSE"
    if not license_file.exists():
        pytest.skip("tests run outside the source tree (wheel test): no LICENSE to check")
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["license"]
    assert declared == "Apache-2.0"
    text = license_file.read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize("value, strict", [(None, False), ("0", False), ("1", True)])
def test_warnings_are_errors_only_with_the_switch(monkeypatch, value, strict):
    try:
        build = importlib.import_module("rolewire._build_native")
    except ImportError:
        pytest.skip("the build script is not installed here")
    if value is None:
        monkeypatch.delenv("ROLEWIRE_WERROR", raising=False)
    else:
        monkeypatch.setenv("ROLEWIRE_WERROR", value)
    args = build._compile_args()
    flag = "/WX" if sys.platform == "win32" else "-Werror"
    assert (flag in args) is strict
    assert ("/W4" if sys.platform == "win32" else "-Wall") in args
