"""The handshake state machines (sans-IO, h11 style).

:class:`Initiator` and :class:`Responder` take bytes (:meth:`receive_data`),
report events (:meth:`next_event`) and queue bytes to send
(:meth:`data_to_send`). They never touch a socket or a clock they were not
given. Message flow (docs/PROTOCOL.md, "Handshake")::

    Initiator                                   Responder
    Hello  (suites, key share, role hints,
            anonymous J-PAKE round-1 slots) ---->
                                        <----   [HelloRetry (suite)]  -> new Hello
                                        <----   ResponderHello (suite, key share,
                                                 {role entries, slot round 1s},
                                                 {role proofs})
    InitiatorAuth ({role entries, slot name
                   hints + round 2s},
                   {role proofs})       ---->
                                        <----   [ResponderAuth ({withheld chains,
                                                 slot round 2s + proofs},
                                                 {withheld proofs})]
    [InitiatorFinish ({deferred chains,
                      slot proofs},
                      {deferred proofs})] ---->

``{...}`` is encrypted under the handshake key (and padded). 3 messages for
key and certificate roles; 5 with password slots; 4 or 5 when certificate
proofs wait for the peer to authenticate. A failure on either side sends a
Reject with a reason code (one code for every authentication failure).

Role kinds: the machine never asks which class a role is. It follows each
role's handshake hooks (:class:`~rolewire.roles.base.Role`): its
``proof_channel`` (a Hello hint, or a J-PAKE slot), ``sends_credentials``
(a chain in the role entry, which may be withheld or deferred),
``prove``/``verify_proof``, and for slot kinds ``charge``, ``exchange`` and
``assign_slot``. A new kind needs no change here.
"""

from __future__ import annotations

import collections
import dataclasses
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
from rolewire.handshake.cookie import CookieChecker
from rolewire.handshake.events import NEED_DATA, Event, HandshakeComplete, HandshakeFailed
from rolewire.handshake.kex import InitiatorShare, hybrid_ikm, responder_exchange
from rolewire.handshake.limiter import HandshakeLimiter, HandshakeSlot
from rolewire.handshake.messages import (
    FRAME_HEADER_SIZE,
    HINT_SIZE,
    MAX_PASSWORD_SLOTS,
    MAX_ROLES,
    PROTOCOL_VERSION,
    RANDOM_SIZE,
    CookieReply,
    Flag,
    Hello,
    HelloRetry,
    InitiatorAuth,
    InitiatorFinish,
    MsgType,
    ProofEntry,
    Reject,
    ResponderAuth,
    ResponderHello,
    RoleEntry,
    cookie_mac,
    encode_chain,
    encode_proofs,
    encode_role_data,
    pad,
    parse_chain,
    parse_frame_header,
    parse_message,
    parse_proofs,
    parse_role_data,
    unpad,
)
from rolewire.handshake.reasons import RejectReason, reason_for, wire_reason
from rolewire.handshake.schedule import SymmetricState
from rolewire.handshake.suites import HandshakeSuite, KexGroup
from rolewire.roles.base import Direction, ProofChannel, Role, RoleKind, password_hint
from rolewire.roles.jpake import ROUND2_SIZE
from rolewire.roles.password import PASSWORD_PROOF_SIZE, PasswordAttempt, PasswordExchange
from rolewire.session import Session

__all__ = ["Handshake", "Initiator", "Responder", "parse_late_reject"]

logger = logging.getLogger("rolewire.handshake")

#: Hello hints are padded to a power of two, at least this many.
MIN_HINT_BUCKET = 4

# The flags as plain ints: IntFlag arithmetic builds a new enum member in
# Python on every & and |, a dozen times per handshake.
_PROVE = int(Flag.PROVE)
_VERIFY = int(Flag.VERIFY)


class _State(enum.Enum):
    WAIT_HELLO = "wait-hello"
    WAIT_HELLO_AFTER_RETRY = "wait-hello-after-retry"
    WAIT_RESPONDER_HELLO = "wait-responder-hello"
    WAIT_INITIATOR_AUTH = "wait-initiator-auth"
    WAIT_RESPONDER_AUTH = "wait-responder-auth"
    WAIT_INITIATOR_FINISH = "wait-initiator-finish"
    DONE = "done"
    FAILED = "failed"


class _Match:
    """A role of the ``HINT`` channel (key, certificate) both sides know, in
    one handshake (indexed by the Hello hint)."""

    __slots__ = ("deferred", "index", "offer_flags", "peer_data", "peer_flags", "role",
                 "withheld")

    def __init__(self, index: int, role: Role, offer_flags: int) -> None:
        self.index = index
        self.role = role
        #: Flags of the initiator's offer.
        self.offer_flags = offer_flags
        #: Flags of the responder's entry.
        self.peer_flags = 0
        self.peer_data = b""
        #: The responder's chain and proof wait for ResponderAuth.
        self.withheld = False
        #: The initiator's chain and proof wait for InitiatorFinish.
        self.deferred = False


class _Slot:
    """One J-PAKE slot of the Hello."""

    __slots__ = ("attempt", "exchange", "index", "my_round2", "peer_round1", "proved",
                 "verified")

    def __init__(self, index: int, exchange: PasswordExchange) -> None:
        self.index = index
        self.exchange = exchange
        self.peer_round1 = b""
        self.my_round2 = b""
        #: The responder's charged password run (section "Password budget").
        self.attempt: PasswordAttempt | None = None
        #: We sent our proof (the peer may have checked one guess with it).
        self.proved = False
        self.verified = False


def _my_flags(role: Role) -> int:
    return (_PROVE if role.can_prove else 0) | (_VERIFY if role.can_verify else 0)


def _useful(offer_flags: int, my_flags: int) -> bool:
    return bool((offer_flags & _PROVE and my_flags & _VERIFY)
                or (offer_flags & _VERIFY and my_flags & _PROVE))


def _bucket(n: int, minimum: int, maximum: int) -> int:
    """The smallest power of two >= max(n, minimum), at most ``maximum``
    (``n`` itself if that is larger still)."""
    if n == 0 and minimum == 0:
        return 0
    size = max(minimum, 1)
    while size < n:
        size *= 2
    return max(min(size, maximum), n)


def parse_late_reject(payload: bytes) -> HandshakeRejected:
    """For the initiator's adapter: a handshake message that arrives after the
    initiator completed (its last message was the last of the handshake) can
    only be the responder's Reject of that message. Returns the exception to
    raise; raises :class:`MalformedHandshakeMessage` if ``payload`` is not a
    Reject."""
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
        self._slots: list[_Slot] = []
        self._verified: set[tuple[RoleKind, str]] = set()
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
        buf = self._in
        if len(buf) < FRAME_HEADER_SIZE:
            return None
        try:
            msg_type, length = parse_frame_header(buf, self.config.max_message_size)
        except HandshakeError as exc:
            self._fail(exc)
            return None
        end = FRAME_HEADER_SIZE + length
        if len(buf) < end:
            return None
        if end == len(buf):  # the usual case: the buffer holds one message
            raw = bytes(buf)
            buf.clear()
        else:
            raw = bytes(buf[:end])
            del buf[:end]
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
        # The peer is not authenticated: it gets one code for "no such role",
        # "wrong proof", "foreign CA" and "budget refused"; the event and the
        # log keep the precise reason.
        sent = wire_reason(code)
        if send_reject:
            self._out += Reject(sent).encode()
        self._state = _State.FAILED
        self._on_failure()
        self._cleanup()
        self._events.append(HandshakeFailed(int(code), exc, remote=False,
                                            reject_sent=send_reject,
                                            sent_code=int(sent) if send_reject else None,
                                            dropped_roles=frozenset(self._dropped)))
        logger.info("handshake failed", extra={
            "event": "handshake_failed", "peer": str(self.peer), "reason": code.name,
            "side": "initiator" if self.is_initiator else "responder"})

    def _remote_failure(self, code: int) -> None:
        self._state = _State.FAILED
        self._on_failure()
        self._cleanup()
        self._events.append(HandshakeFailed(code, _rejected(code), remote=True,
                                            reject_sent=False,
                                            dropped_roles=frozenset(self._dropped)))

    def _on_failure(self) -> None:
        """Bookkeeping on failure (overridden)."""

    # -- role proofs -------------------------------------------------------------
    def _encrypt(self, plaintext: bytes) -> bytes:
        return self._ss.encrypt_and_hash(pad(plaintext))

    def _decrypt(self, ciphertext: bytes) -> bytes:
        return unpad(self._ss.decrypt_and_hash(ciphertext))

    def _prove(self, match: _Match, direction: Direction, h: bytes) -> bytes:
        return match.role.prove(direction, h)

    def _verify(self, match: _Match, direction: Direction, h: bytes, proof: bytes | None,
                chain_data: bytes) -> bool:
        """Verifies the peer's proof for one role; True if verified. Raises
        (when ``abort_on_bad_proof``) or returns False on a bad proof."""
        role = match.role
        try:
            if proof is None:
                raise RoleProofInvalid("a role proof is missing")
            # Only a kind that sends credentials can have entry data (the
            # callers refuse it otherwise), so only it parses a chain.
            chain = parse_chain(chain_data) if role.sends_credentials else ()
            role.verify_proof(direction, h, proof, chain, self.config.wall_clock)
        except (RoleProofInvalid, MalformedHandshakeMessage):
            if self.config.abort_on_bad_proof:
                raise
            logger.warning("role proof did not verify; role not attached",
                           extra={"event": "role_proof_failed", "peer": str(self.peer),
                                  "kind": role.kind.name.lower()})
            return False
        self._verified.add((role.kind, role.name))
        return True

    def _verify_password(self, slot: _Slot, direction: Direction, h: bytes,
                         proof: bytes) -> bool:
        """Checks the peer's password proof of one slot; True if verified."""
        try:
            if not proof:
                raise RoleProofInvalid("a password proof is missing")
            slot.exchange.verify(direction, h, proof)
        except RoleProofInvalid:
            self._password_failed(slot)
            if self.config.abort_on_bad_proof:
                raise
            logger.warning("role proof did not verify; role not attached",
                           extra={"event": "role_proof_failed", "peer": str(self.peer),
                                  "kind": "password"})
            return False
        role = slot.exchange.role
        assert role is not None
        slot.verified = True
        self._password_verified(slot)
        self._verified.add((role.kind, role.name))
        return True

    def _password_failed(self, slot: _Slot) -> None:
        """A password proof of the peer did not verify (overridden)."""

    def _password_verified(self, slot: _Slot) -> None:
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
        names = frozenset([name for _, name in self._verified])
        # The kinds as the roles gave them (a kind outside RoleKind stays
        # its own enum member).
        kinds = frozenset(self._verified)
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
        if logger.isEnabledFor(logging.INFO):  # the fields cost more than the call
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
        self._cookie: bytes | None = None
        self._responder_authenticated = False
        #: (role, our flags) per Hello hint; None for padding.
        self._offered: list[tuple[Role, int] | None] = []
        hints: list[bytes] = []
        passwords: list[Role] = []
        for role in config.roles:
            if role.proof_channel is ProofChannel.PASSWORD_SLOT:
                if role.password_locked_for(peer) > 0:
                    logger.warning("password role not offered: peer locked out",
                                   extra={"event": "password_refused", "peer": str(peer),
                                          "role": role.name})
                    continue
                passwords.append(role)
                continue
            flags = _my_flags(role)
            for hint in role.hints(self._random, flags):
                hints.append(hint)
                self._offered.append((role, flags))
        if len(hints) > MAX_ROLES:
            raise errors.ConfigurationError(f"more than {MAX_ROLES} role hints to offer")
        if len(passwords) > MAX_PASSWORD_SLOTS:
            raise errors.ConfigurationError(
                f"at most {MAX_PASSWORD_SLOTS} password roles per initiator")
        # Padding: random hints and dummy J-PAKE slots look like real ones.
        while len(hints) < _bucket(len(hints), MIN_HINT_BUCKET, MAX_ROLES):
            hints.append(entropy.random_bytes(HINT_SIZE, "padding hint"))
            self._offered.append(None)
        self._hints = tuple(hints)
        n_slots = _bucket(len(passwords), 0, MAX_PASSWORD_SLOTS)
        rounds = []
        for i in range(n_slots):
            context = self._random + bytes((i,))
            exchange = (passwords[i].exchange(initiator=True, context=context)
                        if i < len(passwords)
                        else PasswordExchange(None, initiator=True, context=context))
            rounds.append(exchange.round1())
            self._slots.append(_Slot(i, exchange))
        self._rounds1 = tuple(rounds)
        self._share = InitiatorShare(config.suites[0].group)
        self._hello = self._build_hello()
        raw = self._hello.encode(config.max_message_size)
        self._ss.mix_hash(raw)
        self._out += raw
        self._state = _State.WAIT_RESPONDER_HELLO

    def _build_hello(self) -> Hello:
        share = self._share
        hello = Hello(PROTOCOL_VERSION, self._random, tuple(int(s) for s in self.config.suites),
                      int(share.group), share.ecdh_public + share.mlkem_ek, self._hints,
                      self._rounds1)
        if self._cookie is None:
            return hello
        return dataclasses.replace(hello, cookie_mac=cookie_mac(self._cookie,
                                                                hello.cookie_data()))

    def _cleanup(self) -> None:
        self._slots = []

    def _handle(self, message: Any, raw: bytes) -> None:
        if isinstance(message, HelloRetry) and self._state is _State.WAIT_RESPONDER_HELLO:
            self._on_retry(message, raw)
        elif isinstance(message, CookieReply) and self._state is _State.WAIT_RESPONDER_HELLO:
            self._on_cookie(message)
        elif isinstance(message, ResponderHello) and self._state is _State.WAIT_RESPONDER_HELLO:
            self._on_responder_hello(message)
        elif isinstance(message, ResponderAuth) and self._state is _State.WAIT_RESPONDER_AUTH:
            self._on_responder_auth(message)
        else:
            raise self._unexpected(message)

    def _on_cookie(self, reply: CookieReply) -> None:
        if reply.version != PROTOCOL_VERSION:
            raise UnsupportedProtocolVersion("CookieReply with another protocol version")
        if self._cookie is not None or self._retried:
            raise UnexpectedHandshakeMessage("a second CookieReply, or one after HelloRetry")
        # The responder kept nothing: the handshake starts again from our
        # Hello, now with the cookie MAC (same random, shares and slots).
        self._cookie = reply.cookie
        self._ss = SymmetricState()
        self._hello = self._build_hello()
        raw = self._hello.encode(self.config.max_message_size)
        self._ss.mix_hash(raw)
        self._out += raw

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
        entries, rounds1 = parse_role_data(self._decrypt(rh.data_ct))
        h_responder = self._ss.h
        proofs = {p.index: p.proof for p in parse_proofs(self._decrypt(rh.proof_ct))}
        if len(rounds1) != len(self._slots):
            raise MalformedHandshakeMessage("one J-PAKE round 1 per password slot expected")

        # Match the responder's entries to our hints.
        roles_seen: set[bytes] = set()
        for entry in entries:
            offered = self._offered[entry.index] if entry.index < len(self._offered) else None
            if offered is None:
                raise MalformedHandshakeMessage("role entry for an index we did not offer")
            role, flags = offered
            if role.role_id in roles_seen:
                raise MalformedHandshakeMessage("two role entries for one role")
            roles_seen.add(role.role_id)
            if not _useful(entry.flags, flags):
                raise MalformedHandshakeMessage("role entry with flags of no use")
            if entry.data and not (role.sends_credentials and entry.flags & _PROVE):
                raise MalformedHandshakeMessage("unexpected role entry data")
            match = _Match(entry.index, role, flags)
            match.peer_flags = entry.flags
            match.peer_data = entry.data
            self._matches.append(match)

        for match in self._matches:
            expected = bool(match.peer_flags & _PROVE and match.offer_flags & _VERIFY)
            proof = proofs.pop(match.index, None)
            if expected:
                if match.role.sends_credentials and not match.peer_data and proof is None:
                    match.withheld = True  # the responder proves in ResponderAuth
                    continue
                self._verify(match, Direction.RESPONDER, h_responder, proof, match.peer_data)
            elif proof is not None:
                raise MalformedHandshakeMessage("a proof for a role not announced as proven")
        if proofs:
            raise MalformedHandshakeMessage("a proof for an unknown role")
        self._responder_authenticated = bool(self._verified)

        # Password slots: our round 2 and, encrypted, which role each names.
        h_slots = self._ss.h
        slot_data = []
        for slot, round1 in zip(self._slots, rounds1):
            slot.peer_round1 = round1
            slot.my_round2 = slot.exchange.round2(round1)
            pw_role = slot.exchange.role
            hint = (password_hint(pw_role.role_id, h_slots, slot.index) if pw_role is not None
                    else entropy.random_bytes(HINT_SIZE, "padding slot hint"))
            slot_data.append(hint + slot.my_round2)

        # Message 3: our entries and proofs. Certificate chains and signatures
        # go only to a responder that has authenticated (else: deferred to
        # message 5). Exception: a responder that has no later chance to
        # authenticate, when we accept anonymous responders anyway (we chose
        # to talk to anyone: a client certificate to an anonymous server).
        expect_auth = bool(self._slots) or any(m.withheld for m in self._matches)
        send_chains = self._responder_authenticated or (
            not expect_auth and self.config.allow_anonymous)
        my_entries = []
        for match in self._matches:
            data = b""
            if (match.role.sends_credentials and match.offer_flags & _PROVE
                    and match.peer_flags & _VERIFY):
                if send_chains:
                    data = encode_chain(match.role.credentials())
                else:
                    match.deferred = True
            my_entries.append(RoleEntry(match.index, match.offer_flags, data))
        if not expect_auth:
            self._check_policy()
        data_ct = self._encrypt(encode_role_data(my_entries, slot_data))
        h_initiator = self._ss.h
        my_proofs = []
        for match in self._matches:
            if (match.offer_flags & _PROVE and match.peer_flags & _VERIFY
                    and not match.deferred):
                my_proofs.append(ProofEntry(match.index,
                                            self._prove(match, Direction.INITIATOR, h_initiator)))
        proof_ct = self._encrypt(encode_proofs(my_proofs))
        self._out += InitiatorAuth(data_ct, proof_ct).encode(self.config.max_message_size)
        if expect_auth:
            self._state = _State.WAIT_RESPONDER_AUTH
        else:
            self._complete()

    def _on_responder_auth(self, ra: ResponderAuth) -> None:
        h_slots = self._ss.h
        entries, slot_data = parse_role_data(self._decrypt(ra.data_ct))
        h_responder = self._ss.h
        proofs = {p.index: p.proof for p in parse_proofs(self._decrypt(ra.proof_ct))}
        if len(slot_data) != len(self._slots):
            raise MalformedHandshakeMessage("one J-PAKE entry per password slot expected")

        # Withheld certificate roles (a responder sends them only to an
        # initiator that authenticated in message 3).
        withheld = {m.index: m for m in self._matches if m.withheld}
        for entry in entries:
            match = withheld.pop(entry.index, None)
            if match is None or entry.flags != match.peer_flags or not entry.data:
                raise MalformedHandshakeMessage("unexpected role entry in ResponderAuth")
            self._verify(match, Direction.RESPONDER, h_responder, proofs.pop(entry.index, None),
                         entry.data)
        if proofs:
            raise MalformedHandshakeMessage("a proof for an unknown role")

        # Password slots: the responder's round 2 and proof.
        for slot, data in zip(self._slots, slot_data):
            if len(data) != ROUND2_SIZE + PASSWORD_PROOF_SIZE:
                raise MalformedHandshakeMessage("J-PAKE slot entry has the wrong length")
            slot.exchange.finish(data[:ROUND2_SIZE])
            role = slot.exchange.role
            if role is None:
                continue
            # A proof that does not verify means "wrong password" or "the
            # responder does not hold this role" (indistinguishable by
            # design): the role is just not attached, and nothing is counted.
            # Our own proof goes only to a responder whose proof verified, so
            # a responder without the password never gets an offline guess
            # from us (nor can an injected Reject lock us out).
            try:
                slot.exchange.verify(Direction.RESPONDER, h_slots, data[ROUND2_SIZE:])
            except RoleProofInvalid:
                logger.info("password role not verified by the responder", extra={
                    "event": "password_not_verified", "peer": str(self.peer),
                    "role": role.name})
                continue
            slot.verified = True
            self._verified.add((role.kind, role.name))
        self._responder_authenticated = self._responder_authenticated or bool(self._verified)

        deferred = [m for m in self._matches if m.deferred]
        if not (self._slots or (deferred and any(m.withheld for m in self._matches))):
            self._check_policy()
            self._complete()
            return
        self._check_policy()
        # Message 5: our password proofs (only for slots whose responder
        # proof verified) and the deferred certificate proofs (only if the
        # responder has authenticated by now).
        h_finish = self._ss.h
        slot_proofs = [slot.exchange.prove(Direction.INITIATOR, h_finish) if slot.verified
                       else b"" for slot in self._slots]
        sent = deferred if self._responder_authenticated else []
        fin_entries = [RoleEntry(m.index, m.offer_flags, encode_chain(m.role.credentials()))
                       for m in sent if m.role.sends_credentials]
        data_ct = self._encrypt(encode_role_data(fin_entries, slot_proofs))
        h_initiator = self._ss.h
        fin_proofs = [ProofEntry(m.index, self._prove(m, Direction.INITIATOR, h_initiator))
                      for m in sent]
        proof_ct = self._encrypt(encode_proofs(fin_proofs))
        self._out += InitiatorFinish(data_ct, proof_ct).encode(self.config.max_message_size)
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
        cookies: a shared :class:`~rolewire.handshake.cookie.CookieChecker`.
        under_load: the adapter's load signal: with ``cookies``, a Hello
            without a valid cookie MAC for ``peer`` gets a CookieReply and
            nothing is computed for it (docs/PROTOCOL.md, "Cookie").
    """

    is_initiator = False

    def __init__(self, config: HandshakeConfig, *, peer: Hashable = None,
                 limiter: HandshakeLimiter | None = None,
                 cookies: CookieChecker | None = None, under_load: bool = False) -> None:
        super().__init__(config, peer=peer)
        self._cookies = cookies if under_load else None
        self._cookie_sent = False
        self._slot: HandshakeSlot | None = None
        self._hello: Hello | None = None
        self._retry_suite: HandshakeSuite | None = None
        self._expect_finish = False
        #: The transcript hash the password slot hints of message 3 are keyed with.
        self._slots_h = b""
        if limiter is not None:
            try:
                self._slot = limiter.acquire(peer)
            except errors.TooManyHandshakes as exc:
                self._fail(exc)

    def _cleanup(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        for slot in self._slots:
            if slot.attempt is not None:
                if slot.proved:
                    # Our proof went out: the peer could check one guess with
                    # it, whether or not it answered.
                    slot.attempt.failed()
                else:
                    slot.attempt.abandoned()  # no guess: refunded

    def _password_failed(self, slot: _Slot) -> None:
        if slot.attempt is not None:
            slot.attempt.failed()

    def _password_verified(self, slot: _Slot) -> None:
        if slot.attempt is not None:
            slot.attempt.succeeded()

    def _handle(self, message: Any, raw: bytes) -> None:
        if isinstance(message, Hello) and self._state in (_State.WAIT_HELLO,
                                                           _State.WAIT_HELLO_AFTER_RETRY):
            self._on_hello(message, raw)
        elif isinstance(message, InitiatorAuth) and self._state is _State.WAIT_INITIATOR_AUTH:
            self._on_initiator_auth(message)
        elif (isinstance(message, InitiatorFinish)
              and self._state is _State.WAIT_INITIATOR_FINISH):
            self._on_initiator_finish(message)
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
        if self._cookies is not None and self._state is _State.WAIT_HELLO:
            now = self._clock()
            if not self._cookies.valid(self.peer, hello.cookie_mac, hello.cookie_data(), now):
                if self._cookie_sent:
                    raise InvalidKeyShare("the Hello's cookie MAC did not verify")
                # Stateless: answer with the cookie, keep nothing of this Hello.
                self._out += CookieReply(PROTOCOL_VERSION,
                                         self._cookies.cookie(self.peer, now)).encode()
                self._cookie_sent = True
                return
            self._cookies = None  # proven: the rest of the handshake as usual
        if self._state is _State.WAIT_HELLO_AFTER_RETRY:
            assert self._hello is not None
            if not self._hello.same_except_share(hello):
                raise InvalidKeyShare("the second Hello differs from the first")
        if hello.group == 0:
            # Group 0 is reserved (never a group); ids 3..255 are unassigned
            # and get a HelloRetry, so a later version can add groups.
            raise InvalidKeyShare("key share for the reserved group 0")
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

        # Roles: which hints name a key or certificate role we hold? (No
        # early refusal when none does: "no such role" must look like "wrong
        # proof", so the key exchange runs either way.)
        table = self.config.roles.hints(hello.random)
        roles_seen: set[bytes] = set()
        for index, hint in enumerate(hello.hints):
            found = table.get(hint)
            if found is None:
                continue
            role, offer_flags = found
            if role.role_id in roles_seen or not _useful(offer_flags, _my_flags(role)):
                continue
            roles_seen.add(role.role_id)
            self._matches.append(_Match(index, role, offer_flags))

        ecdh_public, mlkem_ct, ss_mlkem, ss_ecdh = responder_exchange(
            group, hello.share[:group.ecdh_size], hello.share[group.ecdh_size:])

        # Password slots: our round 1 now; which role a slot names (if any)
        # we learn in message 3.
        rounds1 = []
        for i, peer_round1 in enumerate(hello.slots):
            exchange = PasswordExchange(None, initiator=False,
                                        context=hello.random + bytes((i,)), deferred=True)
            slot = _Slot(i, exchange)
            slot.peer_round1 = peer_round1
            rounds1.append(exchange.round1())
            self._slots.append(slot)

        entries = []
        for match in self._matches:
            role = match.role
            data = b""
            if role.sends_credentials and role.can_prove and match.offer_flags & _VERIFY:
                if self.config.withhold_certificates:
                    match.withheld = True
                else:
                    data = encode_chain(role.credentials())
            entries.append(RoleEntry(match.index, _my_flags(role), data))

        random = entropy.random_bytes(RANDOM_SIZE, "responder random")
        rh_clear = ResponderHello(PROTOCOL_VERSION, random, int(suite), ecdh_public, mlkem_ct,
                                  b"", b"")
        self._ss.mix_hash(bytes((MsgType.RESPONDER_HELLO,)) + rh_clear.clear())
        self._ss.mix_key(hybrid_ikm(ss_mlkem, ss_ecdh, ecdh_public,
                                    hello.share[:group.ecdh_size]))
        data_ct = self._encrypt(encode_role_data(entries, rounds1))
        h_responder = self._ss.h
        proofs = []
        for match in self._matches:
            if match.role.can_prove and match.offer_flags & _VERIFY and not match.withheld:
                proofs.append(ProofEntry(match.index,
                                         self._prove(match, Direction.RESPONDER, h_responder)))
        proof_ct = self._encrypt(encode_proofs(proofs))
        rh = ResponderHello(PROTOCOL_VERSION, random, int(suite), ecdh_public, mlkem_ct,
                            data_ct, proof_ct)
        self._out += rh.encode(self.config.max_message_size)
        self._hello = hello
        self._state = _State.WAIT_INITIATOR_AUTH

    def _assign_slot(self, slot: _Slot, hint: bytes, taken: set[bytes]) -> None:
        """Which of our password roles the slot names, if it may run now;
        charged to the budget before J-PAKE goes on. Unknown names, repeats
        and refused runs go on as dummies (a random password)."""
        h = self._slots_h
        role: Role | None = None
        for candidate in self.config.roles:
            if (candidate.proof_channel is ProofChannel.PASSWORD_SLOT
                    and candidate.role_id not in taken
                    and password_hint(candidate.role_id, h, slot.index) == hint):
                role = candidate
                break
        if role is not None:
            taken.add(role.role_id)
            try:
                slot.attempt = role.charge(self.peer)
            except PasswordAttemptsExceeded:
                self._dropped.add((role.name, "rate_limited"))
                role = None
        if role is None:
            slot.exchange.assign(None)
        else:
            role.assign_slot(slot.exchange)

    def _on_initiator_auth(self, ia: InitiatorAuth) -> None:
        self._slots_h = self._ss.h
        entries, slot_data = parse_role_data(self._decrypt(ia.data_ct))
        h_initiator = self._ss.h
        proofs = {p.index: p.proof for p in parse_proofs(self._decrypt(ia.proof_ct))}
        if [e.index for e in entries] != [m.index for m in self._matches]:
            raise MalformedHandshakeMessage("role entries do not match the responder's")
        if len(slot_data) != len(self._slots):
            raise MalformedHandshakeMessage("one J-PAKE entry per password slot expected")
        for entry, match in zip(entries, self._matches):
            if entry.flags != match.offer_flags:
                raise MalformedHandshakeMessage("role entry flags differ from the Hello")
            role = match.role
            expected = bool(match.offer_flags & _PROVE and _my_flags(role) & _VERIFY)
            proof = proofs.pop(match.index, None)
            if entry.data and not (role.sends_credentials and expected):
                raise MalformedHandshakeMessage("unexpected role entry data")
            if expected:
                if role.sends_credentials and not entry.data and proof is None:
                    match.deferred = True  # the initiator proves in InitiatorFinish
                    continue
                self._verify(match, Direction.INITIATOR, h_initiator, proof, entry.data)
            elif proof is not None:
                raise MalformedHandshakeMessage("a proof for a role not announced as proven")
        if proofs:
            raise MalformedHandshakeMessage("a proof for an unknown role")
        initiator_authenticated = bool(self._verified)

        # Password slots: name, charge, our round 2, check theirs.
        taken: set[bytes] = set()
        for slot, data in zip(self._slots, slot_data):
            if len(data) != HINT_SIZE + ROUND2_SIZE:
                raise MalformedHandshakeMessage("J-PAKE slot entry has the wrong length")
            self._assign_slot(slot, data[:HINT_SIZE], taken)
            slot.my_round2 = slot.exchange.round2(slot.peer_round1)
            slot.exchange.finish(data[HINT_SIZE:])

        withheld = [m for m in self._matches if m.withheld]
        deferred = [m for m in self._matches if m.deferred]
        if not (self._slots or withheld):
            self._check_policy()
            self._complete()
            return
        self._expect_finish = bool(self._slots or (deferred and withheld))
        if not self._expect_finish:
            self._check_policy()
        # Message 4: withheld chains and proofs (only to an initiator that
        # authenticated), and per slot our round 2 and proof.
        h_slots = self._ss.h
        slot_out = []
        for slot in self._slots:
            slot_out.append(slot.my_round2 + slot.exchange.prove(Direction.RESPONDER, h_slots))
            slot.proved = True
        sent = withheld if initiator_authenticated else []
        ra_entries = [RoleEntry(m.index, _my_flags(m.role), encode_chain(m.role.credentials()))
                      for m in sent if m.role.sends_credentials]
        data_ct = self._encrypt(encode_role_data(ra_entries, slot_out))
        h_responder = self._ss.h
        ra_proofs = [ProofEntry(m.index, self._prove(m, Direction.RESPONDER, h_responder))
                     for m in sent]
        proof_ct = self._encrypt(encode_proofs(ra_proofs))
        self._out += ResponderAuth(data_ct, proof_ct).encode(self.config.max_message_size)
        if self._expect_finish:
            self._state = _State.WAIT_INITIATOR_FINISH
        else:
            self._complete()

    def _on_initiator_finish(self, fin: InitiatorFinish) -> None:
        h_slots = self._ss.h
        entries, slot_proofs = parse_role_data(self._decrypt(fin.data_ct))
        h_initiator = self._ss.h
        proofs = {p.index: p.proof for p in parse_proofs(self._decrypt(fin.proof_ct))}
        if len(slot_proofs) != len(self._slots):
            raise MalformedHandshakeMessage("one J-PAKE entry per password slot expected")
        deferred = {m.index: m for m in self._matches if m.deferred}
        for entry in entries:
            match = deferred.pop(entry.index, None)
            if match is None or entry.flags != match.offer_flags or not entry.data:
                raise MalformedHandshakeMessage("unexpected role entry in InitiatorFinish")
            self._verify(match, Direction.INITIATOR, h_initiator, proofs.pop(entry.index, None),
                         entry.data)
        if proofs:
            raise MalformedHandshakeMessage("a proof for an unknown role")
        for slot, proof in zip(self._slots, slot_proofs):
            if not proof and slot.attempt is None:
                continue  # a dummy slot, as expected
            if slot.attempt is not None:
                try:
                    # Others may have locked the role since the charge.
                    slot.attempt.recheck()
                except PasswordAttemptsExceeded:
                    assert slot.exchange.role is not None
                    self._dropped.add((slot.exchange.role.name, "rate_limited"))
                    slot.attempt.failed()
                    continue
                if not proof:
                    slot.attempt.failed()  # it had our proof: one guess
                    continue
            # A proof for a dummy slot fails like a wrong password.
            self._verify_password(slot, Direction.INITIATOR, h_slots, proof)
        if self._dropped and not self._verified and not self.config.allow_anonymous:
            raise PasswordAttemptsExceeded("password budget exhausted; no other role verified")
        self._check_policy()
        self._complete()
