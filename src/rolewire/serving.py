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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rolewire.aio import Server, serve
from rolewire.config import ServiceConfig, load_config
from rolewire.errors import ConfigurationError, RolewireError
from rolewire.roles.certificate import CertificateRole
from rolewire.services import Operation, Service

__all__ = ["ServiceRunner", "file_stamps", "load_service", "watch_certificates"]

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
    reloaded, draining, stopped); ``rolewire serve`` prints them."""

    def __init__(self, service: Service, config: ServiceConfig, *,
                 listen: tuple[str, int] | None = None,
                 say: Callable[[str], None] = lambda line: None) -> None:
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
        self.server = await serve(self.service, handshake, host=host, port=port,
                                  **self.config.server.serve_options())
        self._install_signals()
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
