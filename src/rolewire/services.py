"""Role-based authorization of service operations.

A :class:`Service` is a table of operations, each with the roles that may
call it. Semantics follow the paper: the caller needs **at least one** of the
listed roles, proven in the handshake. Two explicit markers replace a role
list: :data:`ANY_AUTHENTICATED` (any caller with at least one verified role)
and :data:`UNRESTRICTED` (anyone who completed a handshake, even an
anonymous one where the server allows that). There is no default: every
operation states who may call it.

A refused call is answered with a typed ``FORBIDDEN`` error (the caller gets
:class:`~rolewire.errors.Forbidden`) and logged as a structured audit event
on the ``rolewire.audit`` logger; it is never dropped silently.

What a refused caller learns. No reply names a role: the error text is
the fixed :data:`REFUSED_TEXT`, and the audit event keeps the detail (the
roles the operation needs, the caller's roles). By default a call to an
operation the caller may not call and a call to an operation that does not
exist get the *same* reply (``FORBIDDEN``, :data:`REFUSED_TEXT`), so a
caller cannot enumerate the operations it may not call; a service may opt
into distinct replies (``UNKNOWN_OPERATION`` for a missing operation) with
``Service(name, distinct_errors=True)``. The two cases also count alike
against a connection's :class:`~rolewire.budgets.CallGuard`.

Example::

    shop = Service("payment")

    @shop.operation("charge", roles=["payment"])
    async def charge(call: CallContext, body: bytes) -> bytes:
        ...

End-user context and signed calls (issue 18): ``Service(name,
end_users=EndUserVerifier(...))`` verifies the end-user token of each call's
metadata (``call.end_user``; :mod:`rolewire.enduser`); ``user=`` on an
operation requires one (``require_claim("scope", "orders:write")``);
``signed="role"`` requires calls signed under that certificate role
(:mod:`rolewire.nonrep`; ``call.signed``). Such refusals are FORBIDDEN too;
their text says what was wrong with the context or signature (never a role).
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rolewire.budgets import CallGuard
from rolewire.callstate import ConnectionState, SignatureRequired, VerifiedMetadata
from rolewire.enduser.context import ClaimRequirement, EndUser, reset_current, set_current
from rolewire.errors import ConfigurationError, RolewireError
from rolewire.protocol.wire import NO_METADATA, CallMessage, ErrorCode, MessageType, error_message

__all__ = [
    "ANY_AUTHENTICATED",
    "REFUSED_TEXT",
    "UNKNOWN_TEXT",
    "UNRESTRICTED",
    "Access",
    "CallContext",
    "Operation",
    "Refusal",
    "Service",
]

audit_log = logging.getLogger("rolewire.audit")

#: The text of every FORBIDDEN reply (no operation or role name in it).
REFUSED_TEXT = "call refused"
#: The text of an UNKNOWN_OPERATION reply (only with ``distinct_errors``).
UNKNOWN_TEXT = "unknown operation"


class Access(enum.Enum):
    """Markers that stand instead of a role list."""

    ANY_AUTHENTICATED = "any-authenticated"
    UNRESTRICTED = "unrestricted"


ANY_AUTHENTICATED = Access.ANY_AUTHENTICATED
UNRESTRICTED = Access.UNRESTRICTED


class Refusal(NamedTuple):
    """Why a call is answered with an ERROR instead of its handler's reply:
    the :class:`~rolewire.protocol.wire.ErrorCode` and the reply text."""

    code: ErrorCode
    text: str


@dataclass(frozen=True)
class CallContext:
    """What a handler knows about the call: the operation, the caller's
    verified roles, a description of the peer (address) for logs, and the
    call's metadata as sent (``{key: bytes}``, docs/PROTOCOL.md "Call
    metadata"; unverified unless a layer above says otherwise)."""

    service: str
    operation: str
    peer_roles: frozenset[str]
    peer: str = ""
    call_id: int = 0
    metadata: Mapping[str, bytes] = field(default_factory=lambda: NO_METADATA, hash=False,
                                          compare=False, repr=False)
    #: The verified end user the call acts for (None: no context, or the
    #: service verifies none).
    end_user: EndUser | None = field(default=None, compare=False)
    #: Proof that the caller signed this call (a rolewire.nonrep.SignedCall),
    #: for operations that require signed calls.
    signed: Any = field(default=None, compare=False, repr=False)


Handler = Callable[[CallContext, bytes], Awaitable[bytes] | bytes | None]

_new = object.__new__


def _request_context(service: str, operation: str, peer_roles: frozenset[str], peer: str,
                     call_id: int) -> CallContext:
    """``CallContext(service, operation, peer_roles, peer, call_id)``, built
    without the frozen dataclass's ``__init__`` (one per request; its eight
    ``object.__setattr__`` calls cost ~1 us). Every field is set, defaults
    included; tests/test_services.py checks it equals the constructor's."""
    context = _new(CallContext)
    context.__dict__.update(service=service, operation=operation, peer_roles=peer_roles,
                            peer=peer, call_id=call_id, metadata=NO_METADATA, end_user=None,
                            signed=None)
    return context


@dataclass(frozen=True)
class Operation:
    name: str
    handler: Handler
    allowed: frozenset[str] | Access
    #: Required end-user context (None: optional).
    user: ClaimRequirement | None = None
    #: Certificate role whose signature every call must carry (None: unsigned).
    signed: str | None = None

    def permits(self, roles: frozenset[str]) -> bool:
        if self.allowed is UNRESTRICTED:
            return True
        if self.allowed is ANY_AUTHENTICATED:
            return bool(roles)
        assert isinstance(self.allowed, frozenset)
        return not self.allowed.isdisjoint(roles)

    def describe(self) -> str:
        if isinstance(self.allowed, Access):
            return self.allowed.value
        return " | ".join(sorted(self.allowed))


@dataclass
class Service:
    """A named set of operations, each guarded by roles.

    Attributes:
        name: the service's name (in audit events).
        operations: ``{name: Operation}``, filled by :meth:`add`.
        distinct_errors: answer a call to a missing operation with
            ``UNKNOWN_OPERATION`` instead of the ``FORBIDDEN`` reply a
            refused call gets (default False: both look the same, so callers
            cannot enumerate the operations they may not call).
        end_users: verifier of end-user tokens in call metadata
            (:class:`rolewire.enduser.EndUserVerifier`; None: ignore them).
        signed_calls: the receiver of signed calls
            (:class:`rolewire.nonrep.SignedCalls`: trust anchors per role,
            audit log); needed by operations with ``signed=``.
    """

    name: str
    operations: dict[str, Operation] = field(default_factory=dict)
    distinct_errors: bool = False
    end_users: Any = None
    signed_calls: Any = None
    _contexts: dict[tuple[str, frozenset[str], str], CallContext] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def operation(
        self, name: str | None = None, *, roles: Iterable[str] | Access,
        user: ClaimRequirement | None = None, signed: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register ``handler`` as operation ``name`` (default: the
        function's name) callable by the given roles or marker; ``user``:
        what the end user must hold (:func:`rolewire.enduser.require_claim`);
        ``signed``: the certificate role whose signature each call needs."""

        def register(handler: Handler) -> Handler:
            self.add(name or handler.__name__, handler, roles=roles, user=user, signed=signed)
            return handler

        return register

    def add(self, name: str, handler: Handler, *, roles: Iterable[str] | Access,
            user: ClaimRequirement | None = None, signed: str | None = None) -> None:
        """Register an operation (the table form of :meth:`operation`)."""
        if name in self.operations:
            raise ConfigurationError(f"operation {name!r} is already defined")
        if len(name.encode("utf-8")) > 255 or not name:
            raise ConfigurationError("operation names are 1..255 UTF-8 bytes")
        if isinstance(roles, Access):
            allowed: frozenset[str] | Access = roles
        else:
            if isinstance(roles, str):
                raise ConfigurationError("roles must be a list of role names, not a string")
            allowed = frozenset(roles)
            if not allowed:
                raise ConfigurationError(
                    f"operation {name!r} lists no roles; use ANY_AUTHENTICATED or UNRESTRICTED"
                )
        if user is not None and not isinstance(user, ClaimRequirement):
            raise ConfigurationError("user= takes rolewire.enduser.require_claim(...)")
        if signed is not None and (not isinstance(signed, str) or not signed):
            raise ConfigurationError("signed= names the certificate role that signs")
        self.operations[name] = Operation(name, handler, allowed, user, signed)

    def connection_state(self, transcript_hash: bytes, peer_roles: frozenset[str],
                         peer: str = "") -> ConnectionState:
        """A new connection's :class:`~rolewire.callstate.ConnectionState`
        (servers call this once per connection)."""
        state = ConnectionState(transcript_hash)
        if self.signed_calls is not None:
            state.admit = self.signed_calls.admission(state, peer_roles, peer)
        return state

    @property
    def signed_operations(self) -> frozenset[str]:
        """The certificate roles some operation requires signed calls under."""
        return frozenset(op.signed for op in self.operations.values() if op.signed)

    def access_table(self) -> dict[str, str]:
        """``{operation: who may call it}`` for ``rolewire inspect`` and docs."""
        return {name: op.describe() for name, op in sorted(self.operations.items())}

    async def dispatch(
        self, message: CallMessage, peer_roles: frozenset[str], peer: str = "",
        guard: CallGuard | None = None, now: float = 0.0,
        state: ConnectionState | None = None,
    ) -> CallMessage | None:
        """Authorize and run one REQUEST or NOTIFY; returns the reply (None
        for a notification). Handler exceptions become a HANDLER_FAILED reply
        whose text names only the exception type.

        ``guard`` is the connection's :class:`~rolewire.budgets.CallGuard`
        (None: no budget): a refused call is charged to it at time ``now``
        (seconds, any monotonic origin), and its audit line is written only
        while the guard's log budget lasts. Check ``guard.exhausted`` after
        dispatching to close a connection that keeps making refused calls.
        ``state``: the connection's :class:`~rolewire.callstate.ConnectionState`
        (caches verified end-user tokens)."""
        result = self.dispatch_nowait(message, peer_roles, peer, guard, now, state)
        if result is None or isinstance(result, CallMessage):
            return result
        return await result

    def authorize(self, operation: str, peer_roles: frozenset[str], peer: str = "",
                  guard: CallGuard | None = None, now: float = 0.0) -> Operation | Refusal:
        """May a caller with ``peer_roles`` call ``operation``? Returns the
        :class:`Operation`, or the :class:`Refusal` to answer with (its
        audit event written, and charged to ``guard`` at time ``now``, as in
        :meth:`dispatch`). The connection core calls it for every call."""
        found = self.operations.get(operation)
        if found is None:
            self._audit_refusal(guard, now, "unknown operation", {
                "event": "unknown_operation", "service": self.name,
                "operation": operation, "peer": peer,
                "peer_roles": sorted(peer_roles)})
            if self.distinct_errors:
                return Refusal(ErrorCode.UNKNOWN_OPERATION, UNKNOWN_TEXT)
            return Refusal(ErrorCode.FORBIDDEN, REFUSED_TEXT)
        if not found.permits(peer_roles):
            # The required roles go to the local audit log only, never into
            # the reply (issue 11, section 3).
            self._audit_refusal(guard, now, "forbidden call", {
                "event": "forbidden", "service": self.name,
                "operation": found.name, "peer": peer,
                "peer_roles": sorted(peer_roles), "required": found.describe()})
            return Refusal(ErrorCode.FORBIDDEN, REFUSED_TEXT)
        return found

    def needs_call_checks(self, operation: Operation) -> bool:
        """True if calls of ``operation`` are checked beyond roles (end-user
        context or signature required), even without metadata."""
        return operation.user is not None or operation.signed is not None

    def call_context(self, operation: Operation, peer_roles: frozenset[str], peer: str = "",
                     call_id: int = 0, metadata: Mapping[str, bytes] = NO_METADATA, *,
                     state: ConnectionState | None = None, guard: CallGuard | None = None,
                     now: float = 0.0) -> CallContext | Refusal:
        """The :class:`CallContext` a handler of the (authorized)
        ``operation`` receives, with the verified end user and signed-call
        evidence of its ``metadata``; or the :class:`Refusal` if the
        operation's end-user or signature requirement is not met (audited
        and charged like :meth:`authorize`). Contexts of notifications
        without metadata are cached and shared."""
        if metadata or operation.user is not None or operation.signed is not None:
            try:
                end_user, evidence = self._call_extras(operation, metadata, peer_roles, state)
            except RolewireError as exc:
                self._audit_refusal(guard, now, "call refused", {
                    "event": "call_refused", "service": self.name,
                    "operation": operation.name, "peer": peer,
                    "peer_roles": sorted(peer_roles), "reason": type(exc).__name__})
                return Refusal(ErrorCode.FORBIDDEN, f"{REFUSED_TEXT}: {exc}")
            return CallContext(self.name, operation.name, peer_roles, peer, call_id,
                               metadata, end_user, evidence)
        return self._context(operation.name, peer_roles, peer, call_id)

    def request_context(self, operation: Operation, peer_roles: frozenset[str], peer: str,
                        call_id: int) -> CallContext:
        """What :meth:`call_context` returns for a request (``call_id`` > 0)
        without metadata of an operation that :meth:`needs_call_checks`
        says is checked by roles only (the connection's fast path)."""
        return _request_context(self.name, operation.name, peer_roles, peer, call_id)

    def invoke(self, operation: Operation, context: CallContext,
               body: bytes) -> bytes | Refusal | Awaitable[bytes | Refusal]:
        """Run an authorized operation's handler (with the context's end
        user as the current one). Returns the reply body, or a
        ``HANDLER_FAILED`` :class:`Refusal` if the handler raised (logged;
        the text names only the exception type); for an asynchronous
        handler, an awaitable of either."""
        end_user = context.end_user
        current = set_current(end_user, self.name) if end_user is not None else None
        try:
            result = operation.handler(context, body)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the session
            return self._failed(operation, exc)
        finally:
            if current is not None:
                reset_current(current)
        if result is not None and not isinstance(result, (bytes, bytearray, memoryview)) \
                and inspect.isawaitable(result):
            return self._await_handler(operation, result, end_user)
        return bytes(result or b"")

    def invoke_many(self, operation: Operation, context: CallContext,
                    bodies: list[bytes]) -> Awaitable[None] | None:
        """Run an authorized notification's handler once per body, in order
        (what :meth:`invoke` does for each, with nothing to answer: a handler
        that raises is logged and the next body runs). Returns None when
        every handler call finished, else an awaitable that runs the rest
        (the first handler that returned an awaitable, and those after it)."""
        if context.end_user is not None:
            return self._invoke_rest(operation, context, bodies, 0, None)
        handler = operation.handler
        plain = (bytes, bytearray, memoryview)
        for i, body in enumerate(bodies):
            try:
                result = handler(context, body)
            except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the session
                self._failed(operation, exc)
                continue
            if result is not None and not isinstance(result, plain) \
                    and inspect.isawaitable(result):
                return self._invoke_rest(operation, context, bodies, i + 1, result)
        return None

    async def _invoke_rest(self, operation: Operation, context: CallContext,
                           bodies: list[bytes], start: int,
                           first: Awaitable[bytes | None] | None) -> None:
        if first is not None:
            await self._await_handler(operation, first, context.end_user)
        for body in bodies[start:]:
            result = self.invoke(operation, context, body)
            if not isinstance(result, (bytes, tuple)):
                await result

    async def _await_handler(self, operation: Operation, pending: Awaitable[bytes | None],
                             end_user: EndUser | None) -> bytes | Refusal:
        current = set_current(end_user, self.name) if end_user is not None else None
        try:
            result = await pending
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the session
            return self._failed(operation, exc)
        finally:
            if current is not None:
                reset_current(current)
        return bytes(result or b"")

    def _failed(self, operation: Operation, exc: Exception) -> Refusal:
        logging.getLogger("rolewire.services").error(
            "handler failed",
            exc_info=exc,
            extra={"event": "handler_failed", "service": self.name,
                   "operation": operation.name},
        )
        return Refusal(ErrorCode.HANDLER_FAILED, f"handler raised {type(exc).__name__}")

    def dispatch_nowait(
        self, message: CallMessage, peer_roles: frozenset[str], peer: str = "",
        guard: CallGuard | None = None, now: float = 0.0,
        state: ConnectionState | None = None,
    ) -> CallMessage | None | Awaitable[CallMessage | None]:
        """:meth:`dispatch` without a coroutine where the handler is
        synchronous (the common case on a message stream: creating and
        awaiting a coroutine per message costs more than a small handler).
        Returns the reply or None, or, for an asynchronous handler, an
        awaitable of it. (:meth:`authorize`, :meth:`call_context`,
        :meth:`invoke`.)"""
        expects_reply = message.type is MessageType.REQUEST
        operation = self.authorize(message.operation, peer_roles, peer, guard, now)
        if isinstance(operation, Refusal):
            return _reply_error(message, expects_reply, operation.code, operation.text)
        context = self.call_context(operation, peer_roles, peer, message.call_id,
                                    message.metadata, state=state, guard=guard, now=now)
        if isinstance(context, Refusal):
            return _reply_error(message, expects_reply, context.code, context.text)
        result = self.invoke(operation, context, message.body)
        if isinstance(result, (bytes, Refusal)):
            return _reply(message, expects_reply, operation, result)
        return self._finish(message, expects_reply, operation, result)

    def _call_extras(self, operation: Operation, metadata: Mapping[str, bytes],
                     peer_roles: frozenset[str], state: ConnectionState | None
                     ) -> tuple[EndUser | None, Any]:
        """The verified end user and signed-call evidence of one call; raises
        a RolewireError (EndUserRejected, SignatureRequired) if the
        operation's requirements are not met."""
        evidence = metadata.evidence if isinstance(metadata, VerifiedMetadata) else None
        if operation.signed is not None and (
                evidence is None or getattr(evidence, "role", None) != operation.signed):
            raise SignatureRequired("this operation requires signed calls")
        end_user = None
        if self.end_users is not None:
            end_user = self.end_users.from_metadata(
                metadata, peer_roles=peer_roles,
                cache=state.user_cache if state is not None else None)
        if operation.user is not None:
            operation.user.check(end_user)
        return end_user, evidence

    async def _finish(self, message: CallMessage, expects_reply: bool, operation: Operation,
                      pending: Awaitable[bytes | Refusal]) -> CallMessage | None:
        return _reply(message, expects_reply, operation, await pending)

    #: The former private name (kept for callers written against it).
    _dispatch_nowait = dispatch_nowait

    @staticmethod
    def _audit_refusal(guard: CallGuard | None, now: float, text: str,
                       fields: dict[str, object]) -> None:
        if guard is None:
            audit_log.warning(text, extra=fields)
            return
        suppressed = guard.refuse(now)
        if suppressed is not None:
            if suppressed:
                fields["suppressed"] = suppressed  # lines dropped since the last one
            audit_log.warning(text, extra=fields)

    def _context(self, operation: str, peer_roles: frozenset[str], peer: str,
                 call_id: int) -> CallContext:
        """The handler's :class:`CallContext`. Those of notifications (call
        id 0) are immutable and identical for every message of one peer to
        one operation, so they are reused (a bounded cache)."""
        if call_id:
            return _request_context(self.name, operation, peer_roles, peer, call_id)
        key = (operation, peer_roles, peer)
        context = self._contexts.get(key)
        if context is None:
            context = CallContext(self.name, operation, peer_roles, peer, 0)
            if len(self._contexts) >= _CONTEXT_CACHE_SIZE:
                self._contexts.clear()
            self._contexts[key] = context
        return context


#: Bound of a service's cache of notification contexts.
_CONTEXT_CACHE_SIZE = 4096


def _reply(message: CallMessage, expects_reply: bool, operation: Operation,
           result: bytes | Refusal) -> CallMessage | None:
    if not expects_reply:
        return None
    if isinstance(result, Refusal):
        return error_message(message.call_id, message.operation, result.code, result.text)
    return CallMessage(MessageType.RESPONSE, message.call_id, operation.name, result)


def _reply_error(message: CallMessage, expects_reply: bool, code: ErrorCode,
                 text: str) -> CallMessage | None:
    if not expects_reply:
        return None
    return error_message(message.call_id, message.operation, code, text)
