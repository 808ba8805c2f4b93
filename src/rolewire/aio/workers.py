"""Worker processes: one port served by N processes, each with its own
event loop and :class:`~rolewire.aio.Server`, so handshakes use every core
(docs/aio.md, "Worker processes").

Why spawned processes and not ``serve(..., workers=N)`` forking inside the
caller's loop: a fork of a process that runs an event loop copies the
loop, its selector and sockets, every open connection, and locks other
threads held at that instant (logging's, the native layer's); parent and
child would then share all of it. So workers are *spawned* (the
multiprocessing ``spawn`` start method on every platform: a fresh
interpreter, fork+exec on POSIX) and each builds its own service and
config by calling a picklable ``factory`` (a module-level function, a
``functools.partial`` of one, or a ``"module:attr"`` string). Each worker
reads its secrets itself: nothing secret needs to cross a pipe.

The port: the parent binds, but does not listen on, one SO_REUSEPORT
socket first (with port 0 the kernel picks the port there, once), and
every worker listens on that host:port with SO_REUSEPORT; the kernel
spreads new connections over the listening workers (Linux: by a hash of
the addresses and ports). The parent's socket keeps the port reserved
while the pool runs. Without SO_REUSEPORT (Windows) more than one worker
is refused with a :class:`~rolewire.errors.ConfigurationError`.

The password budget: with more than one worker the workers' password
limiters share one :class:`~rolewire.roles.budget.SqliteBudgetStore` (a
file in a private temporary directory the parent creates and removes, or a
path the caller gives), never a copy per worker.

Restarts: a monitor thread in the parent respawns a worker that exits on
its own (same index, port reservation and budget file) after a growing
backoff, and gives an index up after too many exits in a window
(:class:`WorkerPool`).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rolewire.aio.server import serve
from rolewire.errors import ConfigurationError, RolewireError, WorkerFailed
from rolewire.handshake import HandshakeConfig
from rolewire.roles.budget import SqliteBudgetStore
from rolewire.roles.password import share_budget
from rolewire.services import Service

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from typing_extensions import Self

    from rolewire.roles.base import Role

__all__ = ["WorkerInfo", "WorkerPool", "check_workers", "reuse_port_available",
           "serve_workers"]

log = logging.getLogger("rolewire.aio")


def reuse_port_available() -> bool:
    """True if this platform can bind several listening sockets to one
    port (``SO_REUSEPORT``: Linux, macOS, the BSDs; not Windows)."""
    return hasattr(socket, "SO_REUSEPORT") and sys.platform != "win32"


def check_workers(workers: object) -> int:
    """``workers`` as a checked int: an int >= 1, and 1 where SO_REUSEPORT
    is unavailable; raises :class:`ConfigurationError` otherwise."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigurationError(f"workers must be an integer >= 1 (got {workers!r})")
    if workers > 1 and not reuse_port_available():
        raise ConfigurationError(
            f"workers={workers} needs SO_REUSEPORT, which {sys.platform} does not have: "
            "serve with workers=1, or run one process per port behind a load balancer")
    return workers


def refuse_in_loop_workers(workers: object) -> None:
    """What ``serve(..., workers=N)`` does for N != 1: a clear error (serve
    runs inside the caller's event loop, which must not be forked)."""
    n = check_workers(workers)
    if n != 1:
        raise ConfigurationError(
            f"serve(workers={n}): serve() runs inside your event loop and cannot start "
            "worker processes from it safely (a fork would copy the running loop); use "
            f"rolewire.aio.serve_workers(factory, workers={n}, ...) with a picklable "
            "factory returning (service, config)")


@dataclass
class WorkerInfo:
    """One worker's place in its :class:`WorkerPool`, passed to the pool's
    ``main`` in the worker process.

    Attributes:
        index: 0 .. workers - 1.
        workers: how many workers the pool runs.
        host, port: where to listen (the port is fixed, also for port 0).
        reuse_port: listen with SO_REUSEPORT (``serve(reuse_port=...)``).
        budget_path: the shared password-budget file (None: one worker,
            nothing to share).
    """

    index: int
    workers: int
    host: str
    port: int
    reuse_port: bool
    budget_path: str | None
    _conn: Any = field(default=None, repr=False)
    _store: SqliteBudgetStore | None = field(default=None, repr=False)
    _reported: bool = field(default=False, repr=False)
    #: The pool made budget_path's directory (a temporary one).
    _owns_budget_dir: bool = field(default=False, repr=False)
    _orphaned: bool = field(default=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        # The store (an open SQLite connection) stays in its process.
        return {**self.__dict__, "_store": None}

    def ready(self, port: int) -> None:
        """Tell the parent that this worker listens on ``port``."""
        self._send(("ready", os.getpid(), int(port)))

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._conn is None or self._reported:
            return
        self._reported = True
        try:
            self._conn.send(message)
        except OSError:  # the parent is gone; the parent watch ends us
            pass

    def budget_store(self) -> SqliteBudgetStore | None:
        """This process's connection to the shared budget file (opened on
        first use; None with a single worker)."""
        if self.budget_path is None:
            return None
        if self._store is None:
            self._store = SqliteBudgetStore(self.budget_path)
        return self._store

    def share_budget(self, roles: Iterable[Role]) -> int:
        """Make the password roles among ``roles`` charge the pool's shared
        budget (:func:`rolewire.roles.password.share_budget`); call it for
        every config this worker serves, also after a reload. Returns the
        number of limiters switched (0 with a single worker)."""
        roles = list(roles)
        if self.budget_path is None or not any(
                getattr(role, "limiter", None) is not None for role in roles):
            return 0
        store = self.budget_store()
        assert store is not None
        return share_budget(roles, store)

    def watch_parent(self, callback: Callable[[], None]) -> None:
        """On the running loop: call ``callback`` once when the parent
        process ends (a worker must not outlive its pool, even if the
        parent was killed)."""
        parent = multiprocessing.parent_process()
        fd = getattr(parent, "sentinel", None)
        if fd is None:
            return
        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(fd)
            self._orphaned = True
            log.warning("parent process gone: worker stopping", extra={
                "event": "worker_orphaned", "worker": self.index})
            callback()

        try:
            loop.add_reader(fd, gone)
        except (NotImplementedError, ValueError, OSError):  # pragma: no cover - Windows
            pass

    def close(self) -> None:
        """Close this process's budget store (the pool removes the file)."""
        if self._store is not None:
            self._store.close()
            self._store = None


def _worker_entry(main: Callable[[WorkerInfo], None], info: WorkerInfo) -> None:
    """The body of a worker process."""
    try:
        main(info)
    except RolewireError as exc:
        # Startup errors go to the parent, which raises them as WorkerFailed
        # (rolewire's messages hold no secret). No traceback for these: the
        # message says it all (a missing file, a bad setting).
        info._send(("error", f"{type(exc).__name__}: {exc}"))
        sys.exit(3)
    except BaseException as exc:
        # Type and text, as the traceback multiprocessing prints anyway.
        info._send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        info.close()
        if info._conn is not None:
            info._conn.close()
        if info._orphaned and info._owns_budget_dir and info.budget_path:
            # The parent died and cannot remove its temporary budget
            # directory: the workers do, each once it has drained (a worker
            # still draining accepts no new handshake, so charges no more).
            shutil.rmtree(os.path.dirname(info.budget_path), ignore_errors=True)


def _resolve(factory: Callable[[], Any] | str) -> Callable[[], Any]:
    if not isinstance(factory, str):
        return factory
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"{factory!r}: give the factory as MODULE:ATTR")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _ServeMain:
    """The ``main`` of :func:`serve_workers`: build (service, config) with
    the factory, serve until SIGTERM/SIGINT or the parent's end, drain."""

    factory: Callable[[], Any] | str
    options: dict[str, Any]

    def __call__(self, info: WorkerInfo) -> None:
        asyncio.run(self.run(info))

    async def run(self, info: WorkerInfo) -> None:
        built = _resolve(self.factory)()
        if not isinstance(built, tuple) or len(built) not in (2, 3):
            raise ConfigurationError("the worker factory must return (service, config) or "
                                     "(service, config, serve_options)")
        service, config = built[0], built[1]
        options = {**self.options, **(built[2] if len(built) == 3 else {})}
        if not isinstance(service, Service) or not isinstance(config, HandshakeConfig):
            raise ConfigurationError("the worker factory must return a Service and a "
                                     "HandshakeConfig")
        info.share_budget(config.roles)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stop.set))
        info.watch_parent(stop.set)
        async with serve(service, config, host=info.host, port=info.port,
                         reuse_port=info.reuse_port, **options) as server:
            info.ready(server.port)
            await stop.wait()


def _running(proc: BaseProcess) -> bool:
    # The sentinel, not exitcode: reading exitcode reaps the process
    # (waitpid), which the monitor thread does at the same time.
    return not multiprocessing.connection.wait([proc.sentinel], timeout=0)


def _exit_code(proc: BaseProcess) -> int | None:
    """The exit code of an ended process (reaped here or by another thread,
    which may not have stored the code yet)."""
    for _ in range(100):
        proc.join(5)
        if proc.exitcode is not None:
            break
        time.sleep(0.01)
    return proc.exitcode


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on host:port: it fixes
    the port (port 0: the kernel's pick) for every worker and keeps it
    while the pool runs; it receives no connection (only listening sockets
    do)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot resolve host {host!r}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class _Slot:
    """The monitor's view of one worker index (guarded by the pool's lock)."""

    index: int
    proc: BaseProcess
    #: "starting" (spawned again, not yet listening), "running", "backoff"
    #: (waiting to be spawned again) or "down" (not coming back).
    state: str = "running"
    #: The worker's end of its ready pipe, while "starting".
    pipe: Any = None
    #: "starting": when it must listen by; "backoff": when to spawn it.
    deadline: float = 0.0
    #: Monotonic times of its exits within the restart window.
    crashes: deque[float] = field(default_factory=deque)
    #: The process it replaces and that one's exit code (for the log).
    old_pid: int | None = None
    old_code: int | None = None
    #: What a "starting" worker reported before it exited, if anything.
    error: str | None = None
    timed_out: bool = False


class WorkerPool:
    """``workers`` processes, each running ``main(info)`` with a
    :class:`WorkerInfo` (``main`` must be picklable; it must listen on
    ``info.host:info.port`` with ``reuse_port=info.reuse_port`` and call
    ``info.ready(port)``). :func:`serve_workers` builds the usual one;
    ``rolewire serve --workers N`` another.

    :meth:`start` returns once every worker listens (or raises
    :class:`~rolewire.errors.WorkerFailed` with the first worker's error,
    after stopping the others: a worker that cannot start is a
    configuration problem, not something a restart fixes).

    A worker that exits on its own while the pool runs is logged (event
    ``worker_exited`` on ``rolewire.aio``, an error unless its exit code is
    0) and, with ``restart`` (the default), spawned again with the same
    index on the same host:port and the same shared password-budget file
    (the budget is never reset by a restart) after a backoff of
    ``restart_backoff`` seconds, doubled for each further exit of that
    index within ``restart_window`` seconds, at most
    ``restart_backoff_max``. The new process must call ``info.ready`` as
    at start (within ``start_timeout``, or it is killed and counts as a
    crash); it is then logged (``worker_restarted``) and counted in
    :attr:`restarts`. An index that exits more than ``max_restarts`` times
    within ``restart_window`` seconds is not restarted again (an error,
    ``worker_given_up``). With ``restart=False`` no worker is restarted.

    :meth:`stop` sends SIGTERM (each worker drains its sessions), waits up
    to ``stop_timeout`` seconds, then kills what is left; a worker waiting
    for its restart is not spawned any more, one being spawned is stopped
    too. Use as a context manager. Call it from the main module's ``if
    __name__ == "__main__":`` block (the spawned workers import the main
    module). Raises :class:`~rolewire.errors.ConfigurationError` for a bad
    setting."""

    def __init__(self, main: Callable[[WorkerInfo], None], *, workers: int,
                 host: str = "127.0.0.1", port: int = 0,
                 budget_path: str | os.PathLike[str] | None = None,
                 start_timeout: float = 60.0, stop_timeout: float = 30.0,
                 restart: bool = True, max_restarts: int = 5, restart_window: float = 60.0,
                 restart_backoff: float = 0.5, restart_backoff_max: float = 30.0) -> None:
        self.workers = check_workers(workers)
        if start_timeout <= 0 or stop_timeout <= 0:
            raise ConfigurationError("start_timeout and stop_timeout must be > 0")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be 0..65535 (got {port!r})")
        if not isinstance(restart, bool):
            raise ConfigurationError(f"restart must be True or False (got {restart!r})")
        if (not isinstance(max_restarts, int) or isinstance(max_restarts, bool)
                or max_restarts < 1):
            raise ConfigurationError(f"max_restarts must be an integer >= 1 "
                                     f"(got {max_restarts!r})")
        for name, value in (("restart_window", restart_window),
                            ("restart_backoff", restart_backoff),
                            ("restart_backoff_max", restart_backoff_max)):
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not 0 < value < float("inf")):
                raise ConfigurationError(f"{name} must be a number of seconds > 0 "
                                         f"(got {value!r})")
        if restart_backoff > restart_backoff_max:
            raise ConfigurationError(f"restart_backoff ({restart_backoff:g}) must not exceed "
                                     f"restart_backoff_max ({restart_backoff_max:g})")
        try:
            pickle.dumps(main)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ConfigurationError(
                "the worker main/factory must be picklable (a module-level function, a "
                f"functools.partial of one, or a 'module:attr' string): {exc}") from None
        self.main = main
        self.host = host
        #: The port every worker listens on (known after :meth:`start`).
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.restart = restart
        self.max_restarts = max_restarts
        self.restart_window = float(restart_window)
        self.restart_backoff = float(restart_backoff)
        self.restart_backoff_max = float(restart_backoff_max)
        self._given_budget = os.fspath(budget_path) if budget_path is not None else None
        #: The shared password-budget file (None with one worker).
        self.budget_path: str | None = None
        #: Each index's current process (the last one while it waits for
        #: its restart or after it was given up).
        self.processes: list[BaseProcess] = []
        #: index -> last exit code of each worker that exited on its own
        #: and is not coming back: not restarted (``restart=False``) or
        #: given up after ``max_restarts``. A worker that is restarted, or
        #: waits for its restart, is not in it; a stopped pool adds nothing.
        self.exited: dict[int, int | None] = {}
        #: index -> how often that worker was restarted (counted when the
        #: new process listens).
        self.restarts: dict[int, int] = {}
        self._pids: list[int] = []
        self._slots: list[_Slot] = []
        self._sock: socket.socket | None = None
        self._tmpdir: str | None = None
        self._reuse = False
        self._ctx: Any = None
        self._wake: tuple[Any, Any] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        self._lock = threading.Lock()
        self._all_exited = threading.Event()

    # -- queries ------------------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        """The workers' process ids, by index: each index's current process
        (a restarted worker's new one; the last one while it waits for its
        restart or after it was given up)."""
        return list(self._pids)

    @property
    def alive(self) -> int:
        """Worker processes running now (one being restarted counts once
        spawned; one waiting for its restart does not)."""
        return sum(1 for p in list(self.processes) if _running(p))

    # -- life -----------------------------------------------------------------------
    def start(self) -> Self:
        """Spawn the workers and wait until each listens."""
        if self.processes:
            raise ConfigurationError("this WorkerPool was started already")
        self._ctx = multiprocessing.get_context("spawn")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        self._wake = self._ctx.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._monitor, name="rolewire-workers",
                                        daemon=True)
        self._thread.start()
        log.info("workers listening", extra={
            "event": "workers_started", "workers": self.workers, "host": self.host,
            "port": self.port, "pids": self.pids})
        return self

    def _spawn(self, index: int) -> tuple[BaseProcess, Any]:
        """Start worker ``index``; returns it and the end of the pipe it
        reports ready (or its startup error) on. Every spawn, the first
        and each restart, gets the same host:port and budget file."""
        receiver, sender = self._ctx.Pipe(duplex=False)
        info = WorkerInfo(index, self.workers, self.host, self.port, self._reuse,
                          self.budget_path, _conn=sender,
                          _owns_budget_dir=self._tmpdir is not None)
        proc = self._ctx.Process(target=_worker_entry, args=(self.main, info),
                                 name=f"rolewire-worker-{index}")
        try:
            proc.start()
        except BaseException:
            receiver.close()
            raise
        finally:
            sender.close()  # the worker holds its own end
        return proc, receiver

    def _start(self) -> None:
        self._reuse = reuse = reuse_port_available()
        if reuse:
            self._sock = _reserve_port(self.host, self.port)
            self.port = int(self._sock.getsockname()[1])
        if self.workers > 1:
            if self._given_budget is None:
                # A private directory (0700): nobody else may pre-create or
                # edit the budget, and the WAL side files go with it.
                self._tmpdir = tempfile.mkdtemp(prefix="rolewire-budget-")
                self.budget_path = os.path.join(self._tmpdir, "budget.sqlite")
            else:
                self.budget_path = self._given_budget
            # Created here, before the workers race to create the table.
            SqliteBudgetStore(self.budget_path).close()
        pipes = []
        try:
            for index in range(self.workers):
                proc, receiver = self._spawn(index)
                pipes.append(receiver)
                with self._lock:
                    self.processes.append(proc)
                    self._pids.append(proc.pid or 0)
                    self._slots.append(_Slot(index, proc))
            deadline = time.monotonic() + self.start_timeout
            waiting = dict(enumerate(pipes))
            ports: dict[int, int] = {}
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerFailed(f"worker(s) {sorted(waiting)} did not listen within "
                                       f"{self.start_timeout:g}s")
                objects: list[Any] = list(waiting.values())
                objects += [self.processes[i].sentinel for i in waiting]
                multiprocessing.connection.wait(objects, timeout=left)
                for index, pipe in list(waiting.items()):
                    message: Any = None
                    if pipe.poll():
                        try:
                            message = pipe.recv()
                        except EOFError:
                            message = None
                    elif self.processes[index].exitcode is None:
                        continue
                    if message is not None and message[0] == "ready":
                        ports[index] = message[2]
                        del waiting[index]
                        continue
                    if message is not None and message[0] == "error":
                        raise WorkerFailed(f"worker {index} failed to start: {message[1]}")
                    proc = self.processes[index]
                    proc.join(5)
                    raise WorkerFailed(f"worker {index} exited (code {proc.exitcode}) "
                                       "before it listened")
        finally:
            for pipe in pipes:
                pipe.close()
        if not reuse:  # one worker, no reserved port: it picked its own
            self.port = ports[0]

    # -- the monitor thread -------------------------------------------------------
    def _monitor(self) -> None:
        """Reports each worker that ends and restarts it (see the class
        docstring), until every worker is down and none will be spawned:
        after :meth:`stop`, or once every index was given up."""
        assert self._wake is not None
        wake = self._wake[0]
        slot: _Slot | None  # (also what watched.get() found, below)
        try:
            while True:
                with self._lock:
                    watched: dict[Any, _Slot] = {}
                    deadlines = []
                    for slot in self._slots:
                        if slot.state in ("running", "starting"):
                            watched[slot.proc.sentinel] = slot
                        if slot.state == "starting":
                            if slot.pipe is not None:
                                watched[slot.pipe] = slot
                            if not slot.timed_out:
                                deadlines.append(slot.deadline)
                        elif slot.state == "backoff":
                            if self._stopping:
                                slot.state = "down"  # stop() won: not spawned
                            else:
                                deadlines.append(slot.deadline)
                    if not watched and not deadlines:
                        break
                timeout = (max(0.0, min(deadlines) - time.monotonic())
                           if deadlines else None)
                ready = multiprocessing.connection.wait([wake, *watched], timeout=timeout)
                if wake in ready:
                    try:
                        wake.recv_bytes()
                    except (EOFError, OSError):
                        pass
                # Ready messages first: a worker may report and die at once.
                for obj in ready:
                    slot = watched.get(obj)
                    if slot is not None and obj is slot.pipe:
                        self._read_pipe(slot)
                for obj in ready:
                    slot = watched.get(obj)
                    if slot is not None and obj is slot.proc.sentinel:
                        self._ended(slot)
                self._due(time.monotonic())
        finally:
            with self._lock:
                for slot in self._slots:
                    if slot.pipe is not None:
                        slot.pipe.close()
                        slot.pipe = None
            self._all_exited.set()

    def _read_pipe(self, slot: _Slot) -> None:
        """A restarted worker reported (or closed its pipe by exiting)."""
        try:
            message: Any = slot.pipe.recv()
        except (EOFError, OSError):
            message = None
        slot.pipe.close()
        with self._lock:
            slot.pipe = None
            if message is not None and message[0] == "error":
                slot.error = str(message[1])
            if message is None or message[0] != "ready" or slot.state != "starting":
                return
            slot.state = "running"
            count = self.restarts[slot.index] = self.restarts.get(slot.index, 0) + 1
        log.warning("worker %d restarted (pid %s, was %s, which exited with code %s)",
                    slot.index, slot.proc.pid, slot.old_pid, slot.old_code, extra={
                        "event": "worker_restarted", "worker": slot.index,
                        "pid": slot.proc.pid, "old_pid": slot.old_pid,
                        "exitcode": slot.old_code, "restarts": count})

    def _ended(self, slot: _Slot) -> None:
        """``slot``'s process exited: log it; restart it, give it up, or
        (stopping, ``restart=False``) leave it down."""
        proc = slot.proc
        code = _exit_code(proc)
        now = time.monotonic()
        if slot.pipe is not None:  # what it sent before it exited, if anything
            self._read_pipe(slot)
        with self._lock:
            starting = slot.state == "starting"
            error, timed_out = slot.error, slot.timed_out
            slot.error, slot.timed_out = None, False
            stopping = self._stopping
            delay: float | None = None
            given_up = False
            if stopping:
                slot.state = "down"
            else:
                slot.crashes.append(now)
                while slot.crashes and slot.crashes[0] <= now - self.restart_window:
                    slot.crashes.popleft()
                if not self.restart:
                    slot.state = "down"
                elif len(slot.crashes) > self.max_restarts:
                    slot.state, given_up = "down", True
                else:
                    delay = min(self.restart_backoff * 2.0 ** (len(slot.crashes) - 1),
                                self.restart_backoff_max)
                    slot.state, slot.deadline = "backoff", now + delay
                    slot.old_pid, slot.old_code = proc.pid, code
                if slot.state == "down":
                    self.exited[slot.index] = code
        if stopping and code == 0:
            return
        why = (" before it listened (did not within start_timeout: killed)" if timed_out
               else " before it listened" if starting else "")
        what = (f": {error}" if error else "")
        then = (" while stopping" if stopping
                else f"; restarting it in {delay:g}s" if delay is not None else "")
        level = logging.INFO if code == 0 and not starting else logging.ERROR
        log.log(level, "worker %d (pid %s) exited with code %s%s%s%s", slot.index, proc.pid,
                code, why, what, then, extra={
                    "event": "worker_exited", "worker": slot.index, "pid": proc.pid,
                    "exitcode": code, "restart_in": delay})
        if given_up:
            log.error("worker %d exited %d times within %gs: not restarted again",
                      slot.index, len(slot.crashes), self.restart_window, extra={
                          "event": "worker_given_up", "worker": slot.index,
                          "pid": proc.pid, "exitcode": code,
                          "exits": len(slot.crashes), "window": self.restart_window})

    def _due(self, now: float) -> None:
        """Spawn the workers whose backoff is over; kill the restarted ones
        that did not listen within ``start_timeout``."""
        for slot in self._slots:
            if slot.state == "starting" and not slot.timed_out and now >= slot.deadline:
                slot.timed_out = True  # its exit, seen next, counts as a crash
                slot.proc.kill()
            if slot.state != "backoff" or now < slot.deadline:
                continue
            # Spawned under the lock that stop() takes first: either stop()
            # sees this process (and stops it), or this sees _stopping and
            # does not spawn.
            with self._lock:
                if self._stopping:
                    slot.state = "down"
                    continue
                try:
                    proc, pipe = self._spawn(slot.index)
                except OSError as exc:  # out of processes or descriptors: try again later
                    slot.deadline = now + self.restart_backoff_max
                    log.error("worker %d could not be spawned again (%s): next try in %gs",
                              slot.index, type(exc).__name__, self.restart_backoff_max,
                              extra={"event": "worker_spawn_failed", "worker": slot.index})
                    continue
                slot.proc, slot.pipe, slot.state = proc, pipe, "starting"
                slot.deadline = time.monotonic() + self.start_timeout
                self.processes[slot.index] = proc
                self._pids[slot.index] = proc.pid or 0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every worker has exited and none will be restarted
        (after :meth:`stop`, or once every index was given up); True if so."""
        return self._all_exited.wait(timeout)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every running worker (e.g. SIGHUP: reload).
        A worker still starting after a restart is skipped: it reads its
        config as it starts, and before its handlers are set up a SIGHUP
        would end it."""
        with self._lock:
            procs = [slot.proc for slot in self._slots if slot.state == "running"]
        for proc in procs:
            if _running(proc) and proc.pid is not None:
                try:
                    os.kill(proc.pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every worker (each drains), wait up to ``timeout``
        (default ``stop_timeout``) seconds, kill the rest; then free the
        port and remove the temporary budget file. A worker waiting for its
        restart is not spawned again; one being spawned is stopped with the
        others. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = self._stopping = True
            # Taken under the lock: no respawn can slip in after this list.
            procs = list(enumerate(self.processes))
        atexit.unregister(self.stop)
        if self._wake is not None:  # the monitor drops its pending restarts
            try:
                self._wake[1].send_bytes(b"")
            except OSError:
                pass
        for _, proc in procs:
            if _running(proc):
                proc.terminate()
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        for _, proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for index, proc in procs:
            if _running(proc):
                log.warning("worker %d (pid %s) did not stop in time: killed", index, proc.pid,
                            extra={"event": "worker_killed", "worker": index, "pid": proc.pid})
                proc.kill()
                proc.join(10)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        # (a monitor still running, stuck reaping, keeps its wake-up pipe)
        if self._wake is not None and self._all_exited.is_set():
            for end in self._wake:
                end.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        if not self.processes:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_workers(factory: Callable[[], Any] | str, *, workers: int | None = None,
                  host: str = "127.0.0.1", port: int = 0,
                  budget_path: str | os.PathLike[str] | None = None,
                  start_timeout: float = 60.0, stop_timeout: float = 30.0,
                  restart: bool = True, max_restarts: int = 5, restart_window: float = 60.0,
                  restart_backoff: float = 0.5, restart_backoff_max: float = 30.0,
                  **serve_options: Any) -> WorkerPool:
    """Serve on ``host:port`` from ``workers`` processes (default: one per
    CPU) and return the started :class:`WorkerPool` (``pool.port``,
    ``pool.pids``, ``pool.stop()``; a context manager)::

        with serve_workers("myapp:build", workers=4, port=7000) as pool:
            ...

    ``factory`` runs in each worker and returns ``(service, config)`` (or
    ``(service, config, serve_options)`` for options that cannot be
    pickled, such as a ``Telemetry``); it must be picklable: a module-level
    function, a ``functools.partial`` of one, or a ``"module:attr"``
    string. ``serve_options`` are :func:`serve`'s keyword arguments
    (picklable ones). With more than one worker, the password roles' budget
    is shared (see the module's docstring); ``budget_path`` names the file
    (default: a temporary one, removed by :meth:`WorkerPool.stop`). A
    worker that exits on its own is restarted (``restart``,
    ``max_restarts``, ``restart_window``, ``restart_backoff``,
    ``restart_backoff_max``: see :class:`WorkerPool`). Raises
    :class:`~rolewire.errors.ConfigurationError` for more than one worker
    where SO_REUSEPORT is unavailable, and
    :class:`~rolewire.errors.WorkerFailed` if a worker does not start."""
    if workers is None:
        workers = os.cpu_count() or 1
    check_workers(workers)
    for name in ("host", "port", "workers", "reuse_port"):
        if name in serve_options:
            raise ConfigurationError(f"{name!r} is set by serve_workers")
    try:  # a misspelt option fails here, in the caller, not in every worker
        inspect.signature(serve).bind(None, None, **serve_options)
    except TypeError as exc:
        raise ConfigurationError(f"serve_workers: {exc}") from None
    pool = WorkerPool(_ServeMain(factory, dict(serve_options)), workers=workers, host=host,
                      port=port, budget_path=budget_path, start_timeout=start_timeout,
                      stop_timeout=stop_timeout, restart=restart, max_restarts=max_restarts,
                      restart_window=restart_window, restart_backoff=restart_backoff,
                      restart_backoff_max=restart_backoff_max)
    return pool.start()
