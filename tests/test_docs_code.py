"""Every code block of README.md and docs/ runs (or, for shell lines that
install packages or run long benchmarks, is at least a valid command line).

Blocks are fenced with a language: ``python`` blocks are executed, each in
a fresh interpreter in an empty directory (top-level ``await`` allowed, as
in ``python -m asyncio``), after an optional hidden setup comment (see
``SETUP``); ``toml`` blocks must load as a config (their secrets are not
read); ``sh`` blocks (installs, benchmarks of minutes, long-running
servers): every ``rolewire`` command must parse with the CLI's own parser,
and ``pip install`` lines may name only extras that pyproject.toml defines
(the commands themselves run in tests/test_serve.py, test_examples.py and
CI); ``json`` blocks must parse. Fences without a language (wire diagrams
in PROTOCOL.md), ``text`` (signature listings) and ``nginx`` (server
configuration fragments; the nginx integration tests run real ones) are not
executed here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
# A block may be preceded by a hidden setup (names it uses but does not
# define, e.g. a Service), run first in the same interpreter:
#   <!-- setup (...):\n code \n-->
# (the nearest such comment: another block's setup may lie in the window)
SETUP = re.compile(r"<!-- setup[^\n]*\n((?:(?!<!-- setup).)*?)-->\n\Z", re.DOTALL)
CODE_LANGS = {"python", "sh", "toml", "json"}
NOT_EXECUTED = {"", "text", "nginx"}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def blocks(lang: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        if not doc.exists():
            continue
        text = doc.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == lang:
                line = text[:match.start()].count("\n") + 1
                setup = SETUP.search(text[max(0, match.start() - 2000):match.start()])
                code = (setup.group(1) if setup else "") + match.group(2)
                found.append((f"{doc.relative_to(ROOT)}:{line}", code))
    return found


pytestmark = pytest.mark.skipif(not (ROOT / "README.md").exists(),
                                reason="tests run outside the source tree (wheel test)")

RUNNER = textwrap.dedent('''
    import ast, asyncio, sys
    source = sys.stdin.read()
    code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace = {"__name__": "__main__"}
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        asyncio.run(result)
''')


def test_every_fenced_block_has_a_known_language():
    for doc in DOCS:
        if not doc.exists():
            continue
        text = doc.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            lang = match.group(1)
            assert lang in CODE_LANGS | NOT_EXECUTED, (
                f"{doc}: block language {lang!r} is neither run nor checked by "
                "tests/test_docs_code.py: use python, sh, toml, json, text or nginx")


# Fragments in documents other developers are rewriting today; each must
# become runnable (then this list shrinks: the xfail is strict).
KNOWN_FRAGMENTS = {
    "docs/enduser.md:9": "uses shipping, channel, alice_token and an IdP JWKS file",
    "docs/nonrep.md:13": "uses ca, host, port, config from elsewhere",
}
# (When one of these runs, the strict xfail fails: delete its entry.)


def _python_blocks() -> list[object]:
    params: list[object] = []
    for where, source in blocks("python"):
        marks = ([pytest.mark.xfail(reason=KNOWN_FRAGMENTS[where], strict=True)]
                 if where in KNOWN_FRAGMENTS else [])
        params.append(pytest.param(where, source, id=where, marks=marks))
    return params


@pytest.mark.parametrize("where, source", _python_blocks())
def test_python_block_runs(tmp_path, where, source):
    done = subprocess.run([sys.executable, "-c", RUNNER, where], input=source, text=True,
                          capture_output=True, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 0, f"{where}:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("where, source", [pytest.param(*b, id=b[0]) for b in blocks("toml")])
def test_toml_block_is_a_valid_config(tmp_path, where, source):
    from rolewire.config import load_config

    path = tmp_path / "block.toml"
    path.write_text(source)
    config = load_config(path)
    assert config.name


@pytest.mark.parametrize("where, source", [pytest.param(*b, id=b[0]) for b in blocks("json")])
def test_json_block_parses(where, source):
    import json

    json.loads(source)


def _commands(source: str) -> list[list[str]]:
    """Shell lines split into commands (``&&``, ``|``, ``;``), comments
    dropped; ``[OPTIONAL ...]`` placeholders removed."""
    commands = []
    for line in source.replace("\\\n", " ").splitlines():
        line = re.sub(r"\[[^\]'\"]*\]", "", line)
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", "|", ";", "&"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


@pytest.mark.parametrize("where, source", [pytest.param(*b, id=b[0]) for b in blocks("sh")])
def test_shell_block_commands_are_valid(where, source):
    from rolewire.cli import build_parser

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
                 ["project"]["optional-dependencies"])
    checked = 0
    for words in _commands(source):
        if words[0] == "rolewire":
            try:
                build_parser().parse_args(words[1:])
            except SystemExit as exc:
                raise AssertionError(f"{where}: {' '.join(words)!r} does not parse") from exc
            checked += 1
        elif words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
            for word in words:
                wanted = re.search(r"\[([\w,-]+)\]", word)
                if wanted:
                    missing = set(wanted.group(1).split(",")) - extras
                    assert not missing, f"{where}: extras {missing} not in pyproject.toml"
            checked += 1
    assert checked or "kill" in source or "export" in source, where
