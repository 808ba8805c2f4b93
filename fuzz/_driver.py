"""Shared driver of the fuzz targets in this directory.

The targets' oracles live in ``tests/regressions/oracles.py`` (so that saved
crash inputs replay as plain pytest tests, even against an installed wheel).
This module runs one of them:

* under **atheris** (coverage-guided libFuzzer for Python) when it is
  installed: the rolewire Python modules and the oracle are instrumented; the
  C extension is exercised but not coverage-instrumented (that would need
  clang's ``-fsanitize=fuzzer-no-link``); every libFuzzer flag works
  (``-max_total_time=60``, ``-runs=N``, ``-jobs``, corpus directories, crash
  files to reproduce);
* otherwise under a small built-in **mutational fuzzer** (random mutations
  of the seed corpus, no coverage feedback) that understands
  ``-max_total_time=``, ``-runs=``, ``-seed=``, ``-artifact_prefix=``,
  ``-max_len=`` and corpus directories / files, and prints the same
  ``Done N runs in S second(s)`` line. ``ROLEWIRE_FUZZ_DRIVER=builtin``
  forces it.

Seed inputs come from ``fuzz/seeds.py`` and are added to the first corpus
directory given (created if missing).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: libFuzzer's -max_len default per target (a Hello body with a full
#: X448+ML-KEM share is ~1.3 KB; record programs need room for several records).
MAX_LEN = {"record": 4096, "window": 1024}
DEFAULT_MAX_LEN = 4096


def _import_oracles(instrument: Callable[..., object] | None) -> object:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    if instrument is not None:
        with instrument(include=["rolewire", "tests.regressions.oracles"]):  # type: ignore[operator]
            from tests.regressions import oracles
    else:
        from tests.regressions import oracles
    return oracles


def _write_seeds(target: str, corpus: list[str]) -> None:
    """Adds the target's seeds to the first corpus directory."""
    dirs = [Path(p) for p in corpus if not Path(p).is_file()]
    if not dirs:
        return
    import seeds

    dirs[0].mkdir(parents=True, exist_ok=True)
    for data in seeds.seeds(target):
        name = hashlib.sha1(data).hexdigest()
        (dirs[0] / f"seed-{name}").write_bytes(data)


def main(target: str, argv: list[str]) -> None:
    flags = [a for a in argv if a.startswith("-")]
    paths = [a for a in argv if not a.startswith("-")]
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={MAX_LEN.get(target, DEFAULT_MAX_LEN)}")
    driver = os.environ.get("ROLEWIRE_FUZZ_DRIVER", "")
    atheris = None
    if driver != "builtin":
        try:
            import atheris  # type: ignore[import-not-found, no-redef]
        except ImportError:
            if driver == "atheris":
                raise
    reproducing = bool(paths) and all(Path(p).is_file() for p in paths)
    # Import (and instrument) rolewire before anything else imports it: the
    # seed generator uses rolewire's encoders.
    oracles = _import_oracles(atheris.instrument_imports if atheris is not None else None)
    fn = oracles.TARGETS[target]  # type: ignore[attr-defined]
    if not reproducing:
        _write_seeds(target, paths)
    if atheris is not None:
        print(f"fuzz {target}: driver atheris {getattr(atheris, '__version__', '')}".rstrip(),
              flush=True)
        atheris.Setup([sys.argv[0], *flags, *paths], fn)
        atheris.Fuzz()
    else:
        print(f"fuzz {target}: driver builtin (no atheris)", flush=True)
        sys.exit(_builtin(fn, flags, paths, reproducing))


# --- the built-in fallback -----------------------------------------------------


def _flag(flags: list[str], name: str, default: int) -> int:
    for f in flags:
        if f.startswith(f"-{name}="):
            return int(f.split("=", 1)[1])
    return default


def _mutate(rng: random.Random, data: bytes, pool: list[bytes], max_len: int) -> bytes:
    buf = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        how = rng.randrange(8)
        if how == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif how == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif how == 2:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif how == 3 and buf:
            at = rng.randrange(len(buf))
            del buf[at : at + rng.randrange(1, 17)]
        elif how == 4 and buf:
            at = rng.randrange(len(buf))
            chunk = buf[at : at + rng.randrange(1, 33)]
            to = rng.randrange(len(buf) + 1)
            buf[to:to] = chunk
        elif how == 5 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(buf) + 1)
            buf = buf[:cut] + other[rng.randrange(len(other) + 1):]
        elif how == 6 and len(buf) >= 2:
            at = rng.randrange(len(buf) - 1)
            value = rng.choice((0, 1, 0xFFFF, 0x8000, rng.randrange(1 << 16)))
            buf[at : at + 2] = value.to_bytes(2, "big")
        elif how == 7 and buf:
            del buf[rng.randrange(len(buf)) :]
    return bytes(buf[:max_len])


def _builtin(fn: Callable[[bytes], None], flags: list[str], paths: list[str],
             reproducing: bool) -> int:
    prefix = next((f.split("=", 1)[1] for f in flags if f.startswith("-artifact_prefix=")), "./")
    if reproducing:
        for p in paths:
            print(f"Running: {p}", flush=True)
            fn(Path(p).read_bytes())
            print(f"Executed {p}", flush=True)
        return 0
    max_time = _flag(flags, "max_total_time", 0)
    runs = _flag(flags, "runs", -1)
    max_len = _flag(flags, "max_len", DEFAULT_MAX_LEN)
    rng = random.Random(_flag(flags, "seed", 0) or None)
    pool: list[bytes] = []
    for p in paths:
        path = Path(p)
        files = [path] if path.is_file() else sorted(path.glob("*")) if path.is_dir() else []
        pool.extend(f.read_bytes() for f in files if f.is_file())
    pool = pool or [b""]
    start = time.monotonic()
    done = 0
    while True:
        if runs >= 0 and done >= runs:
            break
        if max_time and time.monotonic() - start >= max_time:
            break
        if not max_time and runs < 0 and done >= 100_000:
            break
        data = pool[done] if done < len(pool) else _mutate(rng, rng.choice(pool), pool, max_len)
        try:
            fn(data)
        except Exception:  # noqa: BLE001 - any exception is a finding
            traceback.print_exc()
            name = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
            Path(name).write_bytes(data)
            print(f"==builtin== ERROR: uncaught exception; input written to {name}", flush=True)
            print(f"Done {done + 1} runs in {int(time.monotonic() - start)} second(s)", flush=True)
            return 1
        done += 1
    print(f"Done {done} runs in {int(time.monotonic() - start)} second(s)", flush=True)
    return 0
