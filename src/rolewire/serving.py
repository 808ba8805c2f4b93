"""Running a :class:`~rolewire.services.Service` from a config file, the way
``rolewire serve`` does: load the service object, apply the config, serve
until a stop signal, drain, and reload on SIGHUP or when watched files
change.

Everything here uses the public :func:`rolewire.serve` /
:class:`rolewire.Server` API: a reload builds fresh role objects and a new
``HandshakeConfig`` and hands it to :meth:`Server.reload_config`, so every
handshake uses one consistent set of roles (a rotated certificate and its
key arrive together), sessions already open keep their keys, and the new
roles start with empty certificate-validation caches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolewire.aio import Server, WorkerInfo, WorkerPool, serve
from rolewire.config import ServiceConfig, load_config
from rolewire.errors import ConfigurationError, RolewireError
from rolewire.roles.certificate import CertificateRole
from rolewire.services import Operation, Service

__all__ = ["ServeWorker", "ServiceRunner", "file_stamps", "load_service", "serve_with_workers",
           "watch_certificates"]

log = logging.getLogger("rolewire.serve")


def load_service(target: str) -> Service:
    """``"package.module:attr"`` -> the :class:`Service` it names (``attr``
    may be dotted, or a zero-argument factory returning a Service). The
    current directory is importable, as with uvicorn."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"{target!r}: give the service as MODULE:ATTR")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import module {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, Service) and callable(obj):
        obj = obj()
    if not isinstance(obj, Service):
        raise ConfigurationError(f"{target!r} is not a rolewire Service "
                                 f"(got {type(obj).__name__})")
    return obj


def file_stamps(paths: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """(mtime, size, inode) of each file, None where it is missing: a change
    in any of them (an atomic rename changes the inode) means "reload"."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = Path(path).stat()
        except OSError:
            stamps.append(None)
            continue
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


async def watch_certificates(server: Server, *, interval: float = 2.0,
                             on_reload: Callable[[list[str]], None] | None = None) -> None:
    """Until cancelled: every ``interval`` seconds, look at the certificate
    roles of ``server.config`` loaded with ``from_files(..., watch=True)``;
    when one's files changed, build it anew (:meth:`CertificateRole.reloaded`)
    and hand the server a config with the new role
    (:meth:`Server.reload_config`). Run it as a task next to the server::

        watcher = asyncio.create_task(watch_certificates(server))

    A role whose files do not load yet (a new key next to the old
    certificate, mid-rotation) is kept as it is and tried again next time.
    ``on_reload`` receives the names of the roles swapped."""
    if interval <= 0:
        raise ConfigurationError("interval must be > 0")
    last_error: dict[str, str] = {}
    while True:
        await asyncio.sleep(interval)
        config = server.config
        roles = list(config.roles)
        swapped = []
        for index, role in enumerate(roles):
            if not (isinstance(role, CertificateRole) and role.watch and role.files_changed()):
                continue
            try:
                roles[index] = role.reloaded()
            except RolewireError as exc:
                if last_error.get(role.name) != str(exc):
                    last_error[role.name] = str(exc)
                    log.warning("certificate role %r not reloaded yet: %s", role.name, exc,
                                extra={"event": "reload_failed", "role": role.name})
                continue
            last_error.pop(role.name, None)
            swapped.append(role.name)
        if swapped and server.config is config:
            server.reload_config(dataclasses.replace(config, roles=roles))
            if on_reload is not None:
                on_reload(swapped)


class ServiceRunner:
    """Serve ``service`` as ``config`` says until :meth:`stop`.

    ``say`` receives one human-readable line per lifecycle event (listening,
    reloaded, draining, stopped); ``rolewire serve`` prints them. ``worker``:
    this runner is one worker of a :class:`~rolewire.aio.WorkerPool` (it
    listens with SO_REUSEPORT, charges the pool's shared password budget,
    also after a reload, and stops when the pool's parent ends)."""

    def __init__(self, service: Service, config: ServiceConfig, *,
                 listen: tuple[str, int] | None = None,
                 say: Callable[[str], None] = lambda line: None,
                 worker: WorkerInfo | None = None) -> None:
        self.worker = worker
        self.service = service
        self.config = config
        address = listen or config.listen
        if address is None:
            raise ConfigurationError("no listen address: set [service] listen or --listen")
        self.address = address
        self.say = say
        self.server: Server | None = None
        self.reloads = 0
        # The operations as the code defines them: each reload re-applies
        # [access] to these, so an entry removed from the file reverts.
        self._code_operations: dict[str, Operation] = dict(service.operations)
        config.apply_access(service)
        self._stop = asyncio.Event()
        self._watched = config.watched_files
        self._stamps = file_stamps(self._watched)
        self._failed_stamps: tuple[Any, ...] | None = None

    def stop(self) -> None:
        """Begin the drain (what SIGTERM/SIGINT do)."""
        self._stop.set()

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Re-read the config file and every secret, then hand new handshakes
        the new roles. On any error the running config stays in force (the
        error is logged) and False is returned."""
        assert self.server is not None
        path = self.config.path
        try:
            config = load_config(path) if path is not None else self.config
            roles = config.load_roles()
            operations = dict(self._code_operations)
            trial = Service(self.service.name, operations)
            config.apply_access(trial)  # validate before touching the live service
            handshake = config.handshake_config(roles)
            if self.worker is not None:
                # New roles come with new limiters: point them at the
                # shared budget too, or a reload would reset it.
                self.worker.share_budget(handshake.roles)
        except RolewireError as exc:
            log.error("reload failed, keeping the running config: %s", exc,
                      extra={"event": "reload_failed", "reason": reason})
            self.say(f"reload ({reason}) failed, still serving the previous config: {exc}")
            return False
        if config.listen is not None and config.listen != self.config.listen:
            self.say("listen address changed in the config: restart to apply it")
        self.service.operations.clear()
        self.service.operations.update(operations)
        self.server.reload_config(handshake)
        self.config = config
        self._watched = config.watched_files
        self._stamps = file_stamps(self._watched)
        self.reloads += 1
        self.say(f"reloaded ({reason}): roles {', '.join(r.name for r in roles)}")
        return True

    async def _watch(self) -> None:
        interval = self.config.server.watch_interval
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
                return
            except asyncio.TimeoutError:
                pass
            interval = self.config.server.watch_interval
            stamps = file_stamps(self._watched)
            if stamps == self._stamps or stamps == self._failed_stamps:
                continue
            if self.reload("files changed"):
                self._failed_stamps = None
            else:
                # A rotation in progress (new key, old certificate): try
                # again when the files change once more.
                self._failed_stamps = stamps

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        def hangup() -> None:
            self.reload("SIGHUP")

        handlers: dict[str, Callable[[], None]] = {
            "SIGTERM": self.stop, "SIGINT": self.stop, "SIGHUP": hangup}
        for name, handler in handlers.items():
            signum = getattr(signal, name, None)
            if signum is None:
                continue  # Windows has no SIGHUP (watch = true still works)
            try:
                loop.add_signal_handler(signum, handler)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                def fallback(_sig: int, _frame: Any, handler: Callable[[], None] = handler
                             ) -> None:
                    loop.call_soon_threadsafe(handler)

                signal.signal(signum, fallback)

    async def run(self) -> int:
        """Serve until stopped, then drain; returns an exit status (0)."""
        host, port = self.address
        handshake = self.config.handshake_config()
        worker = self.worker
        if worker is not None:
            worker.share_budget(handshake.roles)
        self.server = await serve(self.service, handshake, host=host, port=port,
                                  reuse_port=worker is not None and worker.reuse_port,
                                  **self.config.server.serve_options())
        self._install_signals()
        if worker is not None:
            worker.watch_parent(self.stop)
            worker.ready(self.server.port)
        watcher = asyncio.create_task(self._watch()) if self._watched else None
        self.say(f"serving {self.service.name!r} on {host}:{self.server.port} "
                 f"(pid {os.getpid()}, roles "
                 f"{', '.join(r.name for r in handshake.roles) or 'none'})")
        try:
            await self._stop.wait()
        finally:
            open_sessions = self.server.stats.sessions_open
            self.say(f"draining: {open_sessions} session(s), up to "
                     f"{self.config.server.drain_timeout:g}s for calls in flight")
            self.server.close()
            await self.server.wait_closed()
            if watcher is not None:
                watcher.cancel()
            # The signal handlers stay until the loop closes: a second
            # SIGTERM during the drain must not kill the process half-way.
            self.say(f"stopped ({self.server.stats.requests} request(s) served)")
        return 0


@dataclass(frozen=True)
class ServeWorker:
    """The ``main`` of each worker of ``rolewire serve --workers N``: load
    the config and the service in the worker (nothing but these strings
    crosses the process boundary) and run a :class:`ServiceRunner` until
    SIGTERM/SIGINT."""

    target: str
    config_path: str
    log_level: str = "info"

    def __call__(self, info: WorkerInfo) -> None:
        logging.basicConfig(level=self.log_level.upper(), stream=sys.stderr,
                            format=f"%(asctime)s %(levelname)s %(name)s[worker {info.index}]: "
                                   "%(message)s")
        config = load_config(self.config_path)
        service = load_service(self.target)

        def say(line: str) -> None:
            # One write per line: the workers share stdout, and print()
            # writes the text and its newline apart when unbuffered.
            sys.stdout.write(f"rolewire: worker {info.index}: {line}\n")
            sys.stdout.flush()

        runner = ServiceRunner(service, config, listen=(info.host, info.port), say=say,
                               worker=info)
        asyncio.run(runner.run())


def serve_with_workers(target: str, config_path: str | os.PathLike[str], *, workers: int,
                       listen: tuple[str, int] | None = None,
                       budget_path: str | os.PathLike[str] | None = None,
                       log_level: str = "info",
                       say: Callable[[str], None] = lambda line: None,
                       restart: bool = True) -> int:
    """``rolewire serve --workers N``: run ``workers`` processes (each a
    :class:`ServeWorker`) on one port until SIGTERM/SIGINT, then stop them
    (each drains, as one process does); SIGHUP is passed on to every worker
    (each reloads). A worker that exits on its own is restarted
    (:class:`~rolewire.aio.WorkerPool`'s defaults; ``restart=False``, or
    ``--no-restart``: not). Returns the exit status: 0, or 3 if a worker
    exited on its own and did not come back (not restarted, or given up
    after too many exits; logged as ``worker_exited``/``worker_given_up``);
    it returns once every worker is down for good."""
    config = load_config(config_path)
    address = listen or config.listen
    if address is None:
        raise ConfigurationError("no listen address: set [service] listen or --listen")
    host, port = address
    pool = WorkerPool(ServeWorker(target, str(Path(config_path).resolve()), log_level),
                      workers=workers, host=host, port=port, budget_path=budget_path,
                      stop_timeout=config.server.drain_timeout + 10.0, restart=restart)
    stop = threading.Event()
    wanted = {"SIGTERM": lambda *_: stop.set(), "SIGINT": lambda *_: stop.set(),
              "SIGHUP": lambda *_: pool.signal(signal.SIGHUP)}
    previous: dict[int, Any] = {}
    for name, handler in wanted.items():
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, handler)
    try:
        pool.start()
        say(f"serving {config.name!r} on {host}:{pool.port} with {workers} workers "
            f"(pids {', '.join(map(str, pool.pids))})")
        # (a short wait, not a busy loop: signal handlers run between waits;
        # pool.wait(0) is true once no worker runs or will be restarted)
        while not stop.wait(0.5) and not pool.wait(0):
            pass
        say(f"stopping {pool.alive} worker(s): each drains for up to "
            f"{config.server.drain_timeout:g}s")
    finally:
        pool.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pool.exited:
        say("worker(s) exited on their own and were not restarted: " + ", ".join(
            f"{index} (code {code})" for index, code in sorted(pool.exited.items())))
        return 3
    say("stopped")
    return 0
