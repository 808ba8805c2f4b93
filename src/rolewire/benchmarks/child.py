"""A benchmark server in a child process (used by the benchmarks only).

A plain subprocess, not multiprocessing, so callers need no ``if __name__ ==
"__main__"`` guard. The child reads one line (its spec) from stdin, prints
its port, and serves until stdin closes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def child_server(argv: list[str], spec: bytes) -> Iterator[int]:
    """Run ``python <argv>``, send it ``spec`` (one line), yield the port it
    prints; on exit close its stdin and wait (kill it after 10 s)."""
    proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(spec + b"\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError("benchmark server did not start")
        yield int(line)
    finally:
        try:
            proc.stdin.close()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(5)
