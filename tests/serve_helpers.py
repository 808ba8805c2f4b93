"""A real ``rolewire serve`` subprocess for tests: started, read line by line,
signalled, always stopped."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

LISTEN_RE = re.compile(r"serving '.*' on ([0-9.]+):(\d+)")


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rolewire.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, check=False,
                          env=dict(os.environ, **(env or {})),
                          **({"input": stdin.decode()} if stdin is not None else {}))


class ServeProcess:
    """``rolewire serve TARGET --config CONFIG --listen 127.0.0.1:0`` in ``cwd``."""

    def __init__(self, target: str, config: Path, cwd: Path, env: dict[str, str] | None = None,
                 *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rolewire.cli", "serve", target, "--config", str(config),
             "--listen", "127.0.0.1:0", "--log-level", "warning", *extra],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, **(env or {})))
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines.append),
                         daemon=True).start()
        try:
            line = self.wait_for("serving ")
        except BaseException:
            self.proc.kill()
            self.proc.wait(10)
            raise
        match = LISTEN_RE.search(line)
        assert match, line
        self.host, self.port = match.group(1), int(match.group(2))

    @staticmethod
    def _pump(stream: Any, put: Any) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The next stdout line containing ``text`` (lines before it are kept
        in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {text!r} in {timeout}s; stdout: "
                                     f"{self.seen}; stderr: {self.stderr_lines[-20:]}")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(f"server exited ({self.proc.returncode}) before "
                                         f"{text!r}; stdout {self.seen}; stderr "
                                         f"{self.stderr_lines[-20:]}") from None
                continue
            self.seen.append(line)
            if text in line:
                return line

    def line_with(self, text: str, timeout: float = 60.0) -> str:
        """The first stdout line containing ``text``: one already read (the
        wait for the listening line may have read past it: workers and the
        parent print in no fixed order), else the next (:meth:`wait_for`)."""
        for line in self.seen:
            if text in line:
                return line
        return self.wait_for(text, timeout)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status, once the process has ended by itself."""
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> ServeProcess:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
