"""The handshake state machines (sans-IO, h11 style).

:class:`Initiator` and :class:`Responder` take bytes (:meth:`receive_data`),
report events (:meth:`next_event`) and queue bytes to send
(:meth:`data_to_send`). They never touch a socket or a clock they were not
given. Message flow (docs/PROTOCOL.md, "Handshake")::

    Initiator                                   Responder
    Hello  (suites, key share, role hints,
            J-PAKE round 1)             ---->
                                        <----   [HelloRetry (suite)]  -> new Hello
                                        <----   ResponderHello (suite, key share,
                                                 {role entries}, {role proofs})
    InitiatorAuth ({role entries},
                   {role proofs})       ---->
                                        <----   [ResponderAuth ({password proofs})]
                                                 only with password roles

``{...}`` is encrypted under the handshake key. 3 messages without password
roles, 4 with; a failure on either side sends a Reject with a reason code.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Hashable
from typing import Any

from rolewire import entropy, errors
from rolewire.errors import (
    HandshakeError,
    HandshakeInternalError,
    HandshakeRejected,
    HandshakeStateError,
    InvalidKeyShare,
    MalformedHandshakeMessage,
    NoCommonSuite,
    NoVerifiedRole,
    PasswordAttemptsExceeded,
    RoleProofInvalid,
    UnexpectedHandshakeMessage,
    UnsupportedProtocolVersion,
)
from rolewire.handshake.config import HandshakeConfig
from rolewire.handshake.events import NEED_DATA, Event, HandshakeComplete, HandshakeFailed
from rolewire.handshake.kex import InitiatorShare, hybrid_ikm, responder_exchange
from rolewire.handshake.limiter import HandshakeLimiter, HandshakeSlot
from rolewire.handshake.messages import (
    FRAME_HEADER_SIZE,
    PROTOCOL_VERSION,
    RANDOM_SIZE,
    Flag,
    Hello,
    HelloRetry,
    InitiatorAuth,
    MsgType,
    ProofEntry,
    Reject,
    ResponderAuth,
    ResponderHello,
    RoleEntry,
    RoleOffer,
    encode_chain,
    encode_password_data,
    encode_proofs,
    encode_role_entries,
    parse_chain,
    parse_frame_header,
    parse_message,
    parse_password_data,
    parse_proofs,
    parse_role_entries,
)
from rolewire.handshake.reasons import RejectReason, reason_for
from rolewire.handshake.schedule import SymmetricState
from rolewire.handshake.suites import HandshakeSuite, KexGroup
from rolewire.roles.base import Direction, Role, RoleKind
from rolewire.roles.certificate import CertificateRole
from rolewire.roles.key import KeyRole
from rolewire.roles.password import PasswordAttempt, PasswordExchange, PasswordRole
from rolewire.session import Session

__all__ = ["Handshake", "Initiator", "Responder", "parse_late_reject"]

logger = logging.getLogger("rolewire.handshake")


class _State(enum.Enum):
    WAIT_HELLO = "wait-hello"
    WAIT_HELLO_AFTER_RETRY = "wait-hello-after-retry"
    WAIT_RESPONDER_HELLO = "wait-responder-hello"
    WAIT_INITIATOR_AUTH = "wait-initiator-auth"
    WAIT_RESPONDER_AUTH = "wait-responder-auth"
    DONE = "done"
    FAILED = "failed"


class _Match:
    """A role both sides know, in one handshake (indexed by the Hello offer)."""

    __slots__ = ("attempt", "exchange", "index", "offer_flags", "peer_data", "peer_flags",
                 "role")

    def __init__(self, index: int, role: Role, offer_flags: int) -> None:
        self.index = index
        self.role = role
        #: Flags of the initiator's offer.
        self.offer_flags = offer_flags
        #: Flags of the responder's entry.
        self.peer_flags = 0
        self.exchange: PasswordExchange | None = None
        self.peer_data = b""
        #: The responder's charged password run (section "Password budget").
        self.attempt: PasswordAttempt | None = None


def _my_flags(role: Role) -> int:
    return (Flag.PROVE if role.can_prove else 0) | (Flag.VERIFY if role.can_verify else 0)


#: The only flags a password offer or entry may carry: J-PAKE is mutual, and
#: a one-sided password role would let the side that only verifies collect
#: the other's proofs (one uncounted offline guess per handshake).
_PASSWORD_FLAGS = int(Flag.PROVE | Flag.VERIFY)


def parse_late_reject(payload: bytes) -> HandshakeRejected:
    """For the initiator's adapter: a handshake message that arrives after the
    initiator completed (3-message flow) can only be the responder's Reject of
    message 3. Returns the exception to raise; raises
    :class:`MalformedHandshakeMessage` if ``payload`` is not a Reject."""
    if len(payload) < FRAME_HEADER_SIZE:
        raise MalformedHandshakeMessage("truncated handshake message")
    msg_type, length = parse_frame_header(payload[:FRAME_HEADER_SIZE])
    if msg_type != MsgType.REJECT or len(payload) != FRAME_HEADER_SIZE + length:
        raise MalformedHandshakeMessage("unexpected handshake message after completion")
    reject = parse_message(msg_type, payload[FRAME_HEADER_SIZE:])
    assert isinstance(reject, Reject)
    return _rejected(reject.reason)


def _rejected(code: int) -> HandshakeRejected:
    try:
        name = RejectReason(code).name
    except ValueError:
        name = f"code {code}"
    return HandshakeRejected(f"the peer rejected the handshake: {name}", code)


class Handshake:
    """Common machinery of :class:`Initiator` and :class:`Responder`."""

    is_initiator: bool = False

    def __init__(self, config: HandshakeConfig, *, peer: Hashable = None) -> None:
        if not isinstance(config, HandshakeConfig):
            raise errors.ConfigurationError("config must be a HandshakeConfig")
        self.config = config
        #: Who the peer is (an address, for rate limiting and logs).
        self.peer = peer
        self._clock = config.clock
        self._started = self._clock()
        self._ss = SymmetricState(config.channel_binding)
        self._in = bytearray()
        self._out = bytearray()
        self._events: collections.deque[Event] = collections.deque()
        self._state = _State.WAIT_HELLO
        self._suite: HandshakeSuite | None = None
        self._matches: list[_Match] = []
        self._verified: set[tuple[int, str]] = set()
        #: (role name, reason) of roles left out of this handshake.
        self._dropped: set[tuple[str, str]] = set()
        self._session: Session | None = None

    # -- public API ----------------------------------------------------------
    @property
    def state(self) -> str:
        """The current state's name (for logs and tests)."""
        return self._state.value

    @property
    def finished(self) -> bool:
        """True once the handshake completed or failed."""
        return self._state in (_State.DONE, _State.FAILED)

    def data_to_send(self) -> bytes:
        """Bytes to send to the peer now (possibly empty). Drain it after
        construction and after every call of :meth:`receive_data` /
        :meth:`next_event`."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer. Bytes after the handshake
        ended are refused: records belong to the session."""
        if self._state is _State.DONE:
            raise HandshakeStateError("handshake already complete: pass records to the session")
        if self._state is _State.FAILED:
            return  # the peer may still be talking; nothing to do
        self._in += data
        if len(self._in) > 2 * self.config.max_message_size:
            # Bounded buffer: a peer cannot make us hold more than two messages.
            self._fail(errors.HandshakeMessageTooLarge("too much unprocessed handshake data"))

    def check_timeout(self) -> None:
        """Fail the handshake (HandshakeTimeout) if its time limit passed."""
        if not self.finished and self._clock() - self._started > self.config.timeout:
            self._fail(errors.HandshakeTimeout("the handshake did not finish in time"))

    def next_event(self) -> Event:
        """The next event: NEED_DATA, HandshakeComplete or HandshakeFailed."""
        self.check_timeout()
        while not self._events:
            if self.finished:
                raise HandshakeStateError("no more events: the handshake has ended")
            message = self._take_message()
            if message is None:
                if self._events:  # the header itself failed its checks
                    break
                return NEED_DATA
            msg_type, raw = message
            try:
                self._dispatch(msg_type, raw)
            except HandshakeError as exc:
                self._fail(exc)
            except Exception as exc:  # a bug must not leave the machine stuck
                logger.exception("unexpected error in the handshake", extra={
                    "event": "handshake_internal_error", "peer": str(self.peer),
                    "side": "initiator" if self.is_initiator else "responder"})
                self._fail(HandshakeInternalError(
                    f"internal error while processing a handshake message "
                    f"({type(exc).__name__})"))
        return self._events.popleft()

    # -- internals -------------------------------------------------------------
    def _take_message(self) -> tuple[int, bytes] | None:
        if len(self._in) < FRAME_HEADER_SIZE:
            return None
        try:
            msg_type, length = parse_frame_header(bytes(self._in[:FRAME_HEADER_SIZE]),
                                                  self.config.max_message_size)
        except HandshakeError as exc:
            self._fail(exc)
            return None
        end = FRAME_HEADER_SIZE + length
        if len(self._in) < end:
            return None
        raw = bytes(self._in[:end])
        del self._in[:end]
        return msg_type, raw

    def _dispatch(self, msg_type: int, raw: bytes) -> None:
        message = parse_message(msg_type, raw[FRAME_HEADER_SIZE:])
        if isinstance(message, Reject):
            self._remote_failure(message.reason)
            return
        self._handle(message, raw)

    def _handle(self, message: Any, raw: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _unexpected(self, message: Any) -> UnexpectedHandshakeMessage:
        return UnexpectedHandshakeMessage(
            f"{type(message).__name__} not allowed in state {self._state.value}")

    def _cleanup(self) -> None:
        """Release per-handshake resources (overridden)."""

    def _fail(self, exc: HandshakeError, *, send_reject: bool = True) -> None:
        if self.finished:
            return
        code = reason_for(exc)
        if send_reject:
            self._out += Reject(code).encode()
        self._state = _State.FAILED
        self._on_failure()
        self._cleanup()
        self._events.append(HandshakeFailed(int(code), exc, remote=False,
                                            reject_sent=send_reject))
        logger.info("handshake failed", extra={
            "event": "handshake_failed", "peer": str(self.peer), "reason": code.name,
            "side": "initiator" if self.is_initiator else "responder"})

    def _remote_failure(self, code: int) -> None:
        self._state = _State.FAILED
        self._on_failure()
        self._cleanup()
        self._events.append(HandshakeFailed(code, _rejected(code), remote=True,
                                            reject_sent=False))

    def _on_failure(self) -> None:
        """Password bookkeeping on failure (overridden by the initiator)."""

    # -- role proofs -------------------------------------------------------------
    def _prove(self, match: _Match, direction: Direction, h: bytes) -> bytes:
        role = match.role
        if isinstance(role, PasswordRole):
            assert match.exchange is not None
            return match.exchange.prove(direction, h)
        assert isinstance(role, (KeyRole, CertificateRole))
        return role.prove(direction, h)

    def _verify(self, match: _Match, direction: Direction, h: bytes, proof: bytes | None,
                chain_data: bytes) -> bool:
        """Verifies the peer's proof for one role; True if verified. Raises
        (when ``abort_on_bad_proof``) or returns False on a bad proof."""
        role = match.role
        try:
            if proof is None:
                raise RoleProofInvalid("a role proof is missing")
            if isinstance(role, KeyRole):
                role.verify(direction, h, proof)
            elif isinstance(role, CertificateRole):
                chain = parse_chain(chain_data)
                role.verify(direction, h, chain, proof, self.config.wall_clock())
            else:
                assert isinstance(role, PasswordRole) and match.exchange is not None
                try:
                    match.exchange.verify(direction, h, proof)
                except RoleProofInvalid:
                    self._password_failed(match)
                    raise
                self._password_verified(match)
        except (RoleProofInvalid, MalformedHandshakeMessage):
            if self.config.abort_on_bad_proof:
                raise
            logger.warning("role proof did not verify; role not attached",
                           extra={"event": "role_proof_failed", "peer": str(self.peer),
                                  "kind": role.kind.name.lower()})
            return False
        self._verified.add((role.kind, role.name))
        return True

    def _password_failed(self, match: _Match) -> None:
        """A password proof of the peer did not verify (overridden)."""

    def _password_verified(self, match: _Match) -> None:
        """A password proof of the peer verified (overridden)."""

    def _check_policy(self) -> None:
        names = {name for _, name in self._verified}
        if not names and not self.config.allow_anonymous:
            raise NoVerifiedRole("no role of the peer was verified")
        missing = self.config.required_peer_roles - names
        if missing:
            raise NoVerifiedRole("a required role of the peer was not verified")

    def _complete(self) -> None:
        suite = self._suite
        assert suite is not None
        i2r_key, i2r_iv, r2i_key, r2i_iv = self._ss.split(suite.record_iv_size)
        if self.is_initiator:
            send = (i2r_key, i2r_iv)
            recv = (r2i_key, r2i_iv)
        else:
            send = (r2i_key, r2i_iv)
            recv = (i2r_key, i2r_iv)
        cfg = self.config
        names = frozenset(name for _, name in self._verified)
        kinds = frozenset((RoleKind(k), n) for k, n in self._verified)
        session = (cfg.session_factory or Session.from_keys)(
            suite=suite.record_suite, send_key=send[0], send_iv=send[1], recv_key=recv[0],
            recv_iv=recv[1], peer_roles=names, handshake_suite=suite,
            transcript_hash=self._ss.h, is_initiator=self.is_initiator,
            **cfg.session_options())
        session.peer_role_kinds = kinds
        self._session = session
        self._state = _State.DONE
        self._cleanup()
        self._events.append(HandshakeComplete(names, suite, self._ss.h, session, kinds,
                                              frozenset(self._dropped)))
        logger.info("handshake complete", extra={
            "event": "handshake_complete", "peer": str(self.peer),
            "suite": suite.wire_name, "peer_roles": sorted(names),
            "transcript": self._ss.h[:4].hex(),
            "side": "initiator" if self.is_initiator else "responder"})


class Initiator(Handshake):
    """The side that starts the handshake. Its Hello is queued at
    construction: call :meth:`data_to_send` first.

    Args:
        config: roles, suites and policy.
        peer: who we connect to (for password rate limiting and logs).
    """

    is_initiator = True

    def __init__(self, config: HandshakeConfig, *, peer: Hashable = None) -> None:
        super().__init__(config, peer=peer)
        self._random = entropy.random_bytes(RANDOM_SIZE, "initiator random")
        self._retried = False
        self._offered: list[Role] = []
        self._exchanges: dict[int, PasswordExchange] = {}
        offers: list[RoleOffer] = []
        for role in config.roles:
            flags = _my_flags(role)
            data = b""
            if isinstance(role, PasswordRole):
                if role.limiter.locked_for(peer, role.name) > 0:
                    logger.warning("password role not offered: peer locked out",
                                   extra={"event": "password_refused", "peer": str(peer),
                                          "role": role.name})
                    continue
                exchange = role.exchange(initiator=True, context=self._random)
                self._exchanges[len(offers)] = exchange
                data = encode_password_data(exchange.round1())
            offers.append(RoleOffer(role.kind, flags, role.hint(self._random), data))
            self._offered.append(role)
        self._offers = tuple(offers)
        self._share = InitiatorShare(config.suites[0].group)
        self._hello = self._build_hello()
        raw = self._hello.encode(config.max_message_size)
        self._ss.mix_hash(raw)
        self._out += raw
        self._state = _State.WAIT_RESPONDER_HELLO

    def _build_hello(self) -> Hello:
        share = self._share
        return Hello(PROTOCOL_VERSION, self._random, tuple(int(s) for s in self.config.suites),
                     int(share.group), share.ecdh_public + share.mlkem_ek, self._offers)

    def _cleanup(self) -> None:
        self._exchanges = {}

    def _password_failed(self, match: _Match) -> None:
        # Only an authenticated failure counts: the responder's proof (or its
        # absence) came in ResponderAuth, under the handshake key, from the
        # party that ran J-PAKE with us. A Reject is unauthenticated (anyone
        # on the path can inject one), so it never counts.
        role = match.role
        assert isinstance(role, PasswordRole)
        role.limiter.record_failure(self.peer, role.name)

    def _handle(self, message: Any, raw: bytes) -> None:
        if isinstance(message, HelloRetry) and self._state is _State.WAIT_RESPONDER_HELLO:
            self._on_retry(message, raw)
        elif isinstance(message, ResponderHello) and self._state is _State.WAIT_RESPONDER_HELLO:
            self._on_responder_hello(message)
        elif isinstance(message, ResponderAuth) and self._state is _State.WAIT_RESPONDER_AUTH:
            self._on_responder_auth(message)
        else:
            raise self._unexpected(message)

    def _on_retry(self, retry: HelloRetry, raw: bytes) -> None:
        if retry.version != PROTOCOL_VERSION:
            raise UnsupportedProtocolVersion("HelloRetry with another protocol version")
        if self._retried:
            raise UnexpectedHandshakeMessage("a second HelloRetry")
        try:
            suite = HandshakeSuite(retry.suite)
        except ValueError:
            raise InvalidKeyShare("HelloRetry names an unknown suite") from None
        if suite not in self.config.suites or suite.group is self._share.group:
            raise InvalidKeyShare("HelloRetry for a suite we did not offer or already shared")
        self._retried = True
        self._ss.mix_hash(raw)
        self._share = InitiatorShare(suite.group)
        self._hello = self._build_hello()
        hello_raw = self._hello.encode(self.config.max_message_size)
        self._ss.mix_hash(hello_raw)
        self._out += hello_raw

    def _on_responder_hello(self, rh: ResponderHello) -> None:
        if rh.version != PROTOCOL_VERSION:
            raise UnsupportedProtocolVersion("ResponderHello with another protocol version")
        suite = HandshakeSuite(rh.suite)  # the parser checked it is known
        if suite not in self.config.suites or suite.group is not self._share.group:
            raise InvalidKeyShare("the responder chose a suite we did not offer a share for")
        self._suite = suite
        self._ss.mix_hash(bytes((MsgType.RESPONDER_HELLO,)) + rh.clear())
        ss_mlkem, ss_ecdh = self._share.finish(rh.ecdh_public, rh.mlkem_ct)
        self._ss.mix_key(hybrid_ikm(ss_mlkem, ss_ecdh, rh.ecdh_public, self._share.ecdh_public))
        entries = parse_role_entries(self._ss.decrypt_and_hash(rh.data_ct))
        h_responder = self._ss.h
        proofs = {p.index: p.proof for p in parse_proofs(self._ss.decrypt_and_hash(rh.proof_ct))}

        # Match the responder's entries to our offers.
        for entry in entries:
            if entry.index >= len(self._offered):
                raise MalformedHandshakeMessage("role entry for an index we did not offer")
            match = _Match(entry.index, self._offered[entry.index], self._offers[entry.index].flags)
            match.peer_flags = entry.flags
            match.peer_data = entry.data
            if not entry.flags:
                raise MalformedHandshakeMessage("role entry without flags")
            if isinstance(match.role, PasswordRole):
                if entry.flags != _PASSWORD_FLAGS:
                    raise InvalidKeyShare("a password role entry must carry PROVE|VERIFY")
                match.exchange = self._exchanges.get(entry.index)
                assert match.exchange is not None
                r1, r2 = parse_password_data(entry.data, 2)
                my_round2 = match.exchange.round2(r1)
                match.exchange.finish(r2)
                match.peer_data = my_round2  # what we send back in message 3
            elif entry.data and not (isinstance(match.role, CertificateRole)
                                     and entry.flags & Flag.PROVE):
                raise MalformedHandshakeMessage("unexpected role entry data")
            self._matches.append(match)

        pending_password = False
        for match in self._matches:
            expected = bool(match.peer_flags & Flag.PROVE and match.offer_flags & Flag.VERIFY)
            if isinstance(match.role, PasswordRole):
                pending_password = pending_password or expected
                continue
            proof = proofs.pop(match.index, None)
            if expected:
                self._verify(match, Direction.RESPONDER, h_responder, proof, match.peer_data)
            elif proof is not None:
                raise MalformedHandshakeMessage("a proof for a role not announced as proven")
        if proofs:
            raise MalformedHandshakeMessage("a proof for an unknown role")
        if not pending_password:
            self._check_policy()

        # Message 3: our entries and proofs.
        my_entries = []
        for match in self._matches:
            data = b""
            if isinstance(match.role, PasswordRole):
                data = encode_password_data(match.peer_data)
            elif (isinstance(match.role, CertificateRole) and match.offer_flags & Flag.PROVE
                  and match.peer_flags & Flag.VERIFY):
                data = encode_chain(match.role.chain_der)
            my_entries.append(RoleEntry(match.index, match.offer_flags, data))
        data_ct = self._ss.encrypt_and_hash(encode_role_entries(my_entries))
        h_initiator = self._ss.h
        my_proofs = []
        for match in self._matches:
            if match.offer_flags & Flag.PROVE and match.peer_flags & Flag.VERIFY:
                my_proofs.append(ProofEntry(match.index,
                                            self._prove(match, Direction.INITIATOR, h_initiator)))
        proof_ct = self._ss.encrypt_and_hash(encode_proofs(my_proofs))
        self._out += InitiatorAuth(data_ct, proof_ct).encode(self.config.max_message_size)
        if pending_password:
            self._state = _State.WAIT_RESPONDER_AUTH
        else:
            self._complete()

    def _on_responder_auth(self, ra: ResponderAuth) -> None:
        h_responder = self._ss.h
        proofs = {p.index: p.proof for p in parse_proofs(self._ss.decrypt_and_hash(ra.proof_ct))}
        for match in self._matches:
            if not isinstance(match.role, PasswordRole):
                continue
            proof = proofs.pop(match.index, None)
            if proof is None:
                # The responder (authenticated by the handshake key) did not
                # verify our password proof: a failed attempt.
                self._password_failed(match)
            self._verify(match, Direction.RESPONDER, h_responder, proof, b"")
        if proofs:
            raise MalformedHandshakeMessage("a proof for an unknown role")
        self._check_policy()
        self._complete()


class Responder(Handshake):
    """The side that answers a handshake.

    Args:
        config: roles, suites and policy.
        peer: who connected (an address; rate limiting of password
            attempts and the per-peer handshake bound are keyed by it).
        limiter: a shared :class:`HandshakeLimiter`; when given, the responder
            takes a slot at construction (a full limiter fails the handshake
            at once with a BUSY Reject) and releases it when it ends.
    """

    is_initiator = False

    def __init__(self, config: HandshakeConfig, *, peer: Hashable = None,
                 limiter: HandshakeLimiter | None = None) -> None:
        super().__init__(config, peer=peer)
        self._slot: HandshakeSlot | None = None
        self._hello: Hello | None = None
        self._retry_suite: HandshakeSuite | None = None
        if limiter is not None:
            try:
                self._slot = limiter.acquire(peer)
            except errors.TooManyHandshakes as exc:
                self._fail(exc)

    def _cleanup(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        # A password run that ends before its proof was checked gave nobody a
        # guess (we prove only after the initiator's proof verified): refund.
        for match in self._matches:
            if match.attempt is not None:
                match.attempt.abandoned()

    def _password_failed(self, match: _Match) -> None:
        if match.attempt is not None:
            match.attempt.failed()

    def _password_verified(self, match: _Match) -> None:
        if match.attempt is not None:
            match.attempt.succeeded()

    def _password_budget_refused(self, match: _Match) -> None:
        """The budget refused the run: the role leaves the handshake, the
        other roles proceed (the event's ``dropped_roles`` says why)."""
        if match.attempt is not None:
            match.attempt.abandoned()
        self._dropped.add((match.role.name, "rate_limited"))

    def _handle(self, message: Any, raw: bytes) -> None:
        if isinstance(message, Hello) and self._state in (_State.WAIT_HELLO,
                                                           _State.WAIT_HELLO_AFTER_RETRY):
            self._on_hello(message, raw)
        elif isinstance(message, InitiatorAuth) and self._state is _State.WAIT_INITIATOR_AUTH:
            self._on_initiator_auth(message)
        else:
            raise self._unexpected(message)

    def _choose_suite(self, hello: Hello) -> HandshakeSuite:
        offered = set(hello.suites)
        common = [s for s in self.config.suites if int(s) in offered]
        if not common:
            raise NoCommonSuite("no suite in common")
        if self._state is _State.WAIT_HELLO_AFTER_RETRY:
            assert self._retry_suite is not None
            if hello.group != self._retry_suite.group:
                raise InvalidKeyShare("the second Hello has no share for the requested suite")
            return self._retry_suite
        for suite in common:
            if suite.group == hello.group:
                return suite
        return common[0]

    def _on_hello(self, hello: Hello, raw: bytes) -> None:
        if hello.version != PROTOCOL_VERSION:
            raise UnsupportedProtocolVersion(f"protocol version {hello.version} not supported")
        if self._state is _State.WAIT_HELLO_AFTER_RETRY:
            assert self._hello is not None
            if not self._hello.same_except_share(hello):
                raise InvalidKeyShare("the second Hello differs from the first")
        try:
            group = KexGroup(hello.group)
        except ValueError:
            group = None
        suite = self._choose_suite(hello)
        self._ss.mix_hash(raw)
        if group is None or suite.group is not group:
            # Ask for a share of the group of our choice (only once).
            retry = HelloRetry(PROTOCOL_VERSION, int(suite)).encode()
            self._ss.mix_hash(retry)
            self._out += retry
            self._hello = hello
            self._retry_suite = suite
            self._state = _State.WAIT_HELLO_AFTER_RETRY
            return
        if len(hello.share) != group.share_size:
            raise InvalidKeyShare("key share has the wrong length")
        self._suite = suite

        # Roles: which offers name a role we know?
        for offer in hello.offers:
            if offer.kind == RoleKind.PASSWORD and offer.flags != _PASSWORD_FLAGS:
                # Checked for every password offer, known or not, so the
                # answer says nothing about which roles we hold.
                raise InvalidKeyShare("a password offer must carry PROVE|VERIFY")
        mine = self.config.roles.hints(hello.random)
        for index, offer in enumerate(hello.offers):
            role = mine.get((offer.kind, offer.hint))
            if role is None:
                continue
            flags = _my_flags(role)
            useful = ((offer.flags & Flag.PROVE and flags & Flag.VERIFY)
                      or (offer.flags & Flag.VERIFY and flags & Flag.PROVE))
            if not useful:
                continue
            match = _Match(index, role, offer.flags)
            if isinstance(role, PasswordRole):
                # Charged before J-PAKE runs, so runs in flight count and
                # parallel handshakes cannot all pass one early check.
                try:
                    match.attempt = role.limiter.begin(self.peer, role.name)
                except PasswordAttemptsExceeded:
                    self._password_budget_refused(match)
                    continue
            self._matches.append(match)
        if not self._matches and not self.config.allow_anonymous:
            # Refuse before doing the expensive key exchange.
            if self._dropped:
                raise PasswordAttemptsExceeded("password budget exhausted; no other role")
            raise NoVerifiedRole("no role in common with the peer")

        ecdh_public, mlkem_ct, ss_mlkem, ss_ecdh = responder_exchange(
            group, hello.share[:group.ecdh_size], hello.share[group.ecdh_size:])

        entries = []
        for match in self._matches:
            role = match.role
            offer = hello.offers[match.index]
            data = b""
            if isinstance(role, PasswordRole):
                (peer_round1,) = parse_password_data(offer.data, 1)
                match.exchange = role.exchange(initiator=False, context=hello.random)
                round1 = match.exchange.round1()
                round2 = match.exchange.round2(peer_round1)
                data = encode_password_data(round1, round2)
            elif (isinstance(role, CertificateRole) and role.can_prove
                  and offer.flags & Flag.VERIFY):
                data = encode_chain(role.chain_der)
            entries.append(RoleEntry(match.index, _my_flags(role), data))

        random = entropy.random_bytes(RANDOM_SIZE, "responder random")
        rh_clear = ResponderHello(PROTOCOL_VERSION, random, int(suite), ecdh_public, mlkem_ct,
                                  b"", b"")
        self._ss.mix_hash(bytes((MsgType.RESPONDER_HELLO,)) + rh_clear.clear())
        self._ss.mix_key(hybrid_ikm(ss_mlkem, ss_ecdh, ecdh_public,
                                    hello.share[:group.ecdh_size]))
        data_ct = self._ss.encrypt_and_hash(encode_role_entries(entries))
        h_responder = self._ss.h
        proofs = []
        for match in self._matches:
            if isinstance(match.role, PasswordRole):
                continue  # proven in message 4, after the initiator's proof verified
            if match.role.can_prove and match.offer_flags & Flag.VERIFY:
                proofs.append(ProofEntry(match.index,
                                         self._prove(match, Direction.RESPONDER, h_responder)))
        proof_ct = self._ss.encrypt_and_hash(encode_proofs(proofs))
        rh = ResponderHello(PROTOCOL_VERSION, random, int(suite), ecdh_public, mlkem_ct,
                            data_ct, proof_ct)
        self._out += rh.encode(self.config.max_message_size)
        self._hello = hello
        self._state = _State.WAIT_INITIATOR_AUTH

    def _on_initiator_auth(self, ia: InitiatorAuth) -> None:
        entries = parse_role_entries(self._ss.decrypt_and_hash(ia.data_ct))
        h_initiator = self._ss.h
        proofs = {p.index: p.proof for p in parse_proofs(self._ss.decrypt_and_hash(ia.proof_ct))}
        if [e.index for e in entries] != [m.index for m in self._matches]:
            raise MalformedHandshakeMessage("role entries do not match the responder's")
        has_password = False
        verified_passwords: list[_Match] = []
        for entry, match in zip(entries, self._matches):
            if entry.flags != match.offer_flags:
                raise MalformedHandshakeMessage("role entry flags differ from the Hello")
            role = match.role
            my = _my_flags(role)
            expected = bool(match.offer_flags & Flag.PROVE and my & Flag.VERIFY)
            proof = proofs.pop(match.index, None)
            if isinstance(role, PasswordRole):
                has_password = True
                assert match.exchange is not None and match.attempt is not None
                (peer_round2,) = parse_password_data(entry.data, 1)
                match.exchange.finish(peer_round2)
                try:
                    # Others may have used up the budget since the charge.
                    match.attempt.recheck()
                except PasswordAttemptsExceeded:
                    self._password_budget_refused(match)
                    continue
                if proof is None:
                    match.attempt.abandoned()  # no guess was checked
                if self._verify(match, Direction.INITIATOR, h_initiator, proof, entry.data):
                    verified_passwords.append(match)
                continue
            if entry.data and not isinstance(role, CertificateRole):
                raise MalformedHandshakeMessage("unexpected role entry data")
            if expected:
                self._verify(match, Direction.INITIATOR, h_initiator, proof, entry.data)
            elif proof is not None:
                raise MalformedHandshakeMessage("a proof for a role not announced as proven")
        if proofs:
            raise MalformedHandshakeMessage("a proof for an unknown role")
        if self._dropped and not self._verified and not self.config.allow_anonymous:
            raise PasswordAttemptsExceeded("password budget exhausted; no other role verified")
        self._check_policy()
        if has_password:
            h_responder = self._ss.h
            # Our password proof goes only for roles whose initiator proof
            # verified in this handshake: anything else would hand the peer
            # an offline guess.
            my_proofs = [ProofEntry(m.index, self._prove(m, Direction.RESPONDER, h_responder))
                         for m in verified_passwords]
            proof_ct = self._ss.encrypt_and_hash(encode_proofs(my_proofs))
            self._out += ResponderAuth(proof_ct).encode(self.config.max_message_size)
        self._complete()

