"""Replays saved fuzz inputs (``inputs/<target>/*``) through the fuzz oracles,
and runs each oracle on a few hundred seeded random inputs.

A crash found by ``fuzz/`` is saved here (``cp crash-... tests/regressions/
inputs/<target>/<short-name>.bin``) and from then on fails this test until
fixed. Inputs for bugs that are reported but not fixed yet are listed in
KNOWN with the reason: they run as strict xfails with the oracle's
tolerance of known bugs turned off, so the fix turns them into a failure
that asks for the entry (and the tolerance in oracles.py) to be removed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.regressions import oracles

INPUTS = Path(__file__).parent / "inputs"

#: "<target>/<file name>" -> why it still fails.
KNOWN: dict[str, str] = {}


def _saved_inputs() -> list[object]:
    params: list[object] = []
    for path in sorted(INPUTS.glob("*/*")):
        if not path.is_file():
            continue
        key = f"{path.parent.name}/{path.name}"
        marks = []
        if key in KNOWN:
            marks.append(pytest.mark.xfail(reason=KNOWN[key], strict=True,
                                           raises=AssertionError))
        params.append(pytest.param(path.parent.name, path, id=key, marks=marks))
    return params


@pytest.mark.parametrize(("target", "path"), _saved_inputs())
def test_saved_input(target: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert target in oracles.TARGETS, f"no fuzz target {target!r} for {path}"
    monkeypatch.setattr(oracles, "TOLERATE_KNOWN", False)
    oracles.TARGETS[target](path.read_bytes())


def test_every_target_has_saved_inputs() -> None:
    present = {p.parent.name for p in INPUTS.glob("*/*") if p.is_file()}
    assert present <= set(oracles.TARGETS)
    assert {"record", "window", "hello", "chain"} <= present


#: Random inputs per target: enough to exercise every oracle path on each
#: test run (also where atheris is not installed), in about a second.
_RUNS = {"record": 300, "window": 120}


@pytest.mark.parametrize("target", sorted(oracles.TARGETS))
def test_seeded_random_inputs(target: str) -> None:
    rng = random.Random(f"rolewire-{target}")
    fn = oracles.TARGETS[target]
    saved = [p.read_bytes() for p in sorted((INPUTS / target).glob("*")) if p.is_file()]
    for i in range(_RUNS.get(target, 1500)):
        if saved and i % 3 == 0:
            # Mutate a saved input: stays close to the interesting structure.
            data = bytearray(rng.choice(saved))
            for _ in range(1 + rng.randrange(3)):
                if data and rng.random() < 0.6:
                    data[rng.randrange(len(data))] = rng.randrange(256)
                else:
                    at = rng.randrange(len(data) + 1)
                    data[at:at] = rng.randbytes(rng.randrange(1, 6))
            fn(bytes(data))
        else:
            fn(rng.randbytes(rng.randrange(0, 400)))
