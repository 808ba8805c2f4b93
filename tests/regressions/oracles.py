"""Fuzz oracles: what every fuzz input must satisfy.

Each target is a plain function ``target(data: bytes) -> None`` that decodes
``data`` into a sequence of operations on the public API and raises
(``AssertionError`` or an unexpected exception type) when a property breaks.
The same functions serve two drivers:

* ``fuzz/`` runs them under atheris (coverage-guided libFuzzer) or, where
  atheris is not installed, under a small built-in mutational fuzzer;
* ``tests/regressions/test_fuzz_regressions.py`` replays every saved input
  under ``tests/regressions/inputs/<target>/`` as a pytest test.

They live in the test tree (not in ``fuzz/``) so the regression replay also
runs when the test suite is run against an installed wheel with only
``tests/`` copied out of the source tree.

Input decoding never fails: a reader that runs out of bytes yields zeros, so
every byte string is a valid program and short inputs are cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rolewire.errors import (
    AuthenticationFailed,
    ConfigurationError,
    HandshakeMessageTooLarge,
    MalformedHandshakeMessage,
    MalformedRecord,
    RecordError,
    RecordLayerClosed,
    RecordTooOld,
    ReplayDetected,
)
from rolewire.handshake import messages as hm
from rolewire.record import RecordLayer, RecordLimits, ReplayWindow, Suite
from rolewire.record._format import (
    ERR_REPLAY,
    ERR_TOO_OLD,
    OK,
    make_nonce,
    pack_header,
)

__all__ = ["PARSER_TARGETS", "TARGETS", "Reader", "record_target", "window_target"]


#: Set by the fuzz drivers to step over *known, reported* bugs so fuzzing can
#: go on past them; test_fuzz_regressions.py replays every saved input with
#: it False (a known bug's input is listed there in KNOWN, as a strict xfail,
#: until fixed). Guard each tolerance with ``if TOLERATE_KNOWN and <exact
#: condition>`` and name it KNOWN-<n>. None at the moment: KNOWN-1 (a closed
#: C layer reported MalformedRecord for a short record) is fixed and its
#: input, inputs/record/closed-layer-short-record.bin, is a plain regression.
TOLERATE_KNOWN = False


class Reader:
    """Consumes a fuzz input; past its end every read returns zeros/empty."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def uint(self, width: int) -> int:
        return int.from_bytes(self.take(width).ljust(width, b"\0"), "big")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)


def _keys(suite: Suite) -> dict[str, bytes]:
    def fill(tag: int, size: int) -> bytes:
        return bytes((tag * 37 + i * 11) % 256 for i in range(size))

    return {"a_key": fill(1, 32), "a_iv": fill(2, suite.iv_size),
            "b_key": fill(3, 32), "b_iv": fill(4, suite.iv_size)}


def _layer(suite: Suite, backend: str, sender: bool, limits: RecordLimits | None,
           window: int) -> RecordLayer:
    k = _keys(suite)
    # alice seals with a_*, bob opens with a_* (and would seal with b_*).
    if sender:
        kw = {"send_key": k["a_key"], "send_iv": k["a_iv"], "recv_key": k["b_key"],
              "recv_iv": k["b_iv"]}
    else:
        kw = {"send_key": k["b_key"], "send_iv": k["b_iv"], "recv_key": k["a_key"],
              "recv_iv": k["a_iv"]}
    return RecordLayer(suite, limits=limits, window=window, backend=backend, **kw)


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) or ("err", exception type); only RolewireErrors expected."""
    try:
        return "ok", fn()
    except RecordError as exc:
        return "err", type(exc)


def _as_buffer(record: bytes, kind: int) -> Any:
    if kind == 1:
        return bytearray(record)
    if kind == 2:
        return memoryview(record)
    return record


# --- (a) the record open path ---------------------------------------------------


class _RecordHarness:
    """alice (C and pure) seals; bob (C and pure) opens. Checks on every step:

    * C and pure agree (record bytes, plaintext, error class, epochs);
    * only RecordError subclasses escape open/open_many/open_packed;
    * an accepted record is one alice sealed, byte for byte (no forgery),
      and is accepted at most once (no replay);
    * a failed open changes nothing visible.
    """

    def __init__(self, inp: Reader) -> None:
        cfg = inp.u8()
        self.suite = Suite.AEGIS_256 if cfg & 1 else Suite.CHACHA20_POLY1305
        self.limits = RecordLimits(max_plaintext=200) if cfg & 2 else None
        self.window = (64, 128, 1024, 8192)[(cfg >> 2) & 3]
        self.alice = [_layer(self.suite, b, True, self.limits, self.window)
                      for b in ("c", "pure")]
        self.bob = [_layer(self.suite, b, False, self.limits, self.window)
                    for b in ("c", "pure")]
        self.sealed: dict[bytes, bytes] = {}
        self.records: list[bytes] = []
        self.accepted: set[bytes] = set()
        self.inp = inp

    # -- helpers ------------------------------------------------------------
    def state(self, layer: RecordLayer) -> tuple[int, bool]:
        return layer.recv_epoch, layer.has_previous_epoch

    def check_same_state(self) -> None:
        c, p = self.bob
        assert self.state(c) == self.state(p), (self.state(c), self.state(p))

    def accept(self, record: bytes, plaintext: bytes) -> None:
        assert record in self.sealed, "opened a record alice never sealed (forgery)"
        assert self.sealed[record] == plaintext, "wrong plaintext"
        assert record not in self.accepted, "record accepted twice (replay)"
        self.accepted.add(record)

    def pick_record(self) -> bytes:
        inp = self.inp
        if not self.records:
            return inp.take(inp.u8())
        choice = inp.u8()
        if choice < 200:
            return self.records[inp.u16() % len(self.records)]
        if choice < 240:
            return self.mutate(self.records[inp.u16() % len(self.records)])
        return inp.take(inp.u16() % 600)

    def mutate(self, record: bytes) -> bytes:
        inp = self.inp
        how = inp.u8() % 8
        rec = bytearray(record)
        if how == 0:  # flip bits in one byte
            rec[inp.u16() % len(rec)] ^= inp.u8() or 1
        elif how == 1:  # truncate
            del rec[inp.u16() % len(rec):]
        elif how == 2:  # extend
            rec += inp.take(1 + inp.u8() % 32)
        elif how == 3:  # rewrite the version or suite byte
            rec[inp.u8() & 1] = inp.u8()
        elif how == 4:  # rewrite the epoch
            rec[2:6] = inp.u32().to_bytes(4, "big")
        elif how == 5:  # rewrite the counter
            rec[6:14] = inp.u64().to_bytes(8, "big")
        elif how == 6:  # splice two records: header of one, body of another
            other = self.records[inp.u16() % len(self.records)]
            rec = bytearray(record[:14] + other[14:])
        else:  # overwrite a run of bytes
            at = inp.u16() % len(rec)
            patch = inp.take(1 + inp.u8() % 16)
            rec[at : at + len(patch)] = patch
        return bytes(rec)

    # -- operations -----------------------------------------------------------
    def op_seal(self) -> None:
        inp = self.inp
        size = inp.u16() % 320
        plaintext = inp.take(size).ljust(size, b"p")
        results = [_outcome(lambda layer=layer: layer.seal(plaintext)) for layer in self.alice]
        assert results[0] == results[1], ("seal differs between C and pure", results)
        kind, value = results[0]
        if kind == "ok":
            self.sealed[value] = plaintext
            self.records.append(value)
        else:
            too_big = self.limits is not None and size > self.limits.max_plaintext
            assert too_big, f"seal failed unexpectedly: {value}"

    def op_open(self, record: bytes) -> None:
        buf_kind = self.inp.u8() % 3
        results = [_outcome(lambda layer=layer: layer.open(_as_buffer(record, buf_kind)))
                   for layer in self.bob]
        assert results[0] == results[1], ("open differs between C and pure", results)
        self.check_same_state()
        kind, value = results[0]
        if kind == "ok":
            self.accept(record, value)

    def op_open_many(self) -> None:
        count = self.inp.u8() % 6
        batch = [self.pick_record() for _ in range(count)]
        results = []
        for layer in self.bob:
            out = layer.open_many(batch)
            assert len(out) == len(batch)
            results.append([x if isinstance(x, bytes) else type(x) for x in out])
            for item in out:
                assert isinstance(item, (bytes, RecordError)), type(item)
        assert results[0] == results[1], ("open_many differs", results)
        self.check_same_state()
        for record, item in zip(batch, results[0]):
            if isinstance(item, bytes):
                self.accept(record, item)

    def op_open_packed(self) -> None:
        """Records glued together and cut at fuzz-chosen offsets (usually not
        the record boundaries); sometimes invalid offsets (a caller bug:
        ConfigurationError, nothing opened)."""
        inp = self.inp
        count = inp.u8() % 4
        parts = [self.pick_record() for _ in range(count)]
        blob = b"".join(parts)
        if inp.u8() & 1:  # cut at the record boundaries
            offsets = [0]
            for part in parts:
                offsets.append(offsets[-1] + len(part))
        else:
            cuts = sorted({inp.u16() % (len(blob) + 1) for _ in range(inp.u8() % 6)})
            offsets = [0, *cuts, len(blob)]
        invalid = inp.u8() % 8 == 0
        if invalid:
            offsets = [*offsets, len(blob) + 1 + inp.u8()]
        outcomes = []
        for layer in self.bob:
            try:
                res = layer.open_packed(blob, offsets)
            except ConfigurationError:
                outcomes.append("config")
                continue
            items = res.results()
            for item in items:
                assert isinstance(item, (bytes, RecordError)), type(item)
            outcomes.append([x if isinstance(x, bytes) else type(x) for x in items])
        assert outcomes[0] == outcomes[1], ("open_packed differs", outcomes)
        self.check_same_state()
        if invalid:
            assert outcomes[0] == "config", "out-of-range offsets were accepted"
            return
        assert outcomes[0] != "config"
        for i, item in enumerate(outcomes[0]):
            if isinstance(item, bytes):
                self.accept(blob[offsets[i] : offsets[i + 1]], item)

    def op_update(self) -> None:
        epochs = [layer.update_send_key() for layer in self.alice]
        assert epochs[0] == epochs[1]

    def op_retire(self) -> None:
        for layer in self.bob:
            layer.retire_previous_epoch()
        self.check_same_state()
        assert not self.bob[0].has_previous_epoch

    def op_close(self) -> None:
        for layer in self.bob:
            layer.close()
        if self.records:
            for layer in self.bob:
                try:
                    layer.open(self.records[-1])
                except RecordLayerClosed:
                    pass
                else:
                    raise AssertionError("closed layer opened a record")
        raw = self.inp.take(self.inp.u8())
        results = [_outcome(lambda layer=layer: layer.open(raw)) for layer in self.bob]
        # Closed reports "closed", before any check of the record itself.
        assert results == [("err", RecordLayerClosed)] * 2, results


def record_target(data: bytes) -> None:
    """(a) Random records into ``RecordLayer.open``/``open_many``/``open_packed``
    (C backend, checked against the pure twin and a forgery/replay model)."""
    inp = Reader(data)
    h = _RecordHarness(inp)
    updates = 0
    for _ in range(48):
        if inp.exhausted:
            break
        op = inp.u8() % 16
        if op <= 3:
            h.op_seal()
        elif op <= 6:
            h.op_open(h.pick_record())
        elif op == 7:
            h.op_open(inp.take(inp.u16() % 700))
        elif op == 8:
            h.op_open(h.mutate(h.records[-1]) if h.records else inp.take(40))
        elif op in (9, 10):
            h.op_open_many()
        elif op == 11:
            h.op_open_packed()
        elif op == 12 and updates < 6:
            updates += 1
            h.op_update()
        elif op == 13:
            h.op_retire()
        elif op == 14 and inp.u8() == 0xFF:
            h.op_close()
            break


# --- (b) the replay window ---------------------------------------------------------


class _WindowModel:
    """The specification: accept c iff unseen and (c > last or last - c < W)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.last = 0

    def verdict(self, counter: int) -> str:
        in_range = counter > self.last or self.last - counter < self.size
        if not in_range:
            return "old"
        return "replay" if counter in self.seen else "ok"

    def accept(self, counter: int) -> None:
        self.seen.add(counter)
        self.last = max(self.last, counter)


_HARD = 1 << 40
_VERDICT = {ReplayDetected: "replay", RecordTooOld: "old", AuthenticationFailed: "auth",
            MalformedRecord: "counter"}


def _forge(suite: Suite, key: bytes, iv: bytes, counter: int, plaintext: bytes,
           bad_tag: bool) -> bytes:
    """A genuine record for ``counter`` (any counter: the sender's counter
    is sequential, so the window target builds records itself), sealed with
    the raw AEAD through the C core's libsodium pointers."""
    from rolewire.record._c import aead_seal

    header = pack_header(suite, 0, counter)
    body = aead_seal(suite, key, make_nonce(iv, counter), header, plaintext)
    if bad_tag:
        body = body[:-1] + bytes((body[-1] ^ 0x80,))
    return header + body


def window_target(data: bytes) -> None:
    """(b) Random counter sequences against a set model: the pure
    ``ReplayWindow`` alone, and the C and pure windows through the real
    record path (records forged for arbitrary counters)."""
    inp = Reader(data)
    cfg = inp.u8()
    size = (64, 128, 192, 256, 1024, 8192)[cfg % 6]
    suite = Suite.AEGIS_256 if cfg & 0x80 else Suite.CHACHA20_POLY1305
    limits = RecordLimits(hard_messages=_HARD, soft_messages=_HARD // 2)
    layers = [_layer(suite, b, False, limits, size) for b in ("c", "pure")]
    k = _keys(suite)
    window = ReplayWindow(size)
    model = _WindowModel(size)
    accepted: list[int] = []
    for _ in range(64):
        if inp.exhausted:
            break
        op = inp.u8()
        kind = op % 9
        last = model.last
        if kind == 0:
            counter = last + 1 + inp.u8()
        elif kind == 1:
            counter = max(last - inp.u16() % (2 * size + 2), 0)
        elif kind == 2:  # the window's lower edge
            counter = max(last - size + inp.u8() % 4 - 1, 0)
        elif kind == 3:
            counter = last + inp.u32()
        elif kind == 4 and accepted:
            counter = accepted[inp.u16() % len(accepted)]
        elif kind == 5:
            counter = inp.u64() >> (inp.u8() % 64)
        elif kind == 6:
            counter = last + 64 * (inp.u8() % 40) - 64 * 20
            counter = max(counter, 0)
        elif kind == 7:
            counter = last
        else:
            counter = inp.u8()
        bad_tag = op >= 0xF0
        expected = ("counter" if counter >= _HARD else "auth" if bad_tag
                    else model.verdict(counter))
        # An authentication failure is only reported when the header checks
        # (counter range, window) pass first.
        if bad_tag and counter < _HARD and model.verdict(counter) != "ok":
            expected = model.verdict(counter)

        # The pure window on its own (counters below the hard limit only:
        # the limit is checked by the record layer, not the window).
        if counter < _HARD and not bad_tag:
            rc = window.check(counter)
            got = {OK: "ok", ERR_REPLAY: "replay", ERR_TOO_OLD: "old"}[rc]
            assert got == expected, ("ReplayWindow", counter, got, expected)
            if rc == OK:
                window.update(counter)

        record = _forge(suite, k["a_key"], k["a_iv"], counter, counter.to_bytes(8, "big"),
                        bad_tag)
        for layer in layers:
            try:
                plaintext = layer.open(record)
            except RecordError as exc:
                got = _VERDICT.get(type(exc), type(exc).__name__)
            else:
                assert plaintext == counter.to_bytes(8, "big")
                got = "ok"
            assert got == expected, (layer.backend, size, counter, got, expected)
        if expected == "ok":
            model.accept(counter)
            accepted.append(counter)


# --- (c) handshake message parsers ----------------------------------------------

_ALLOWED = MalformedHandshakeMessage  # HandshakeMessageTooLarge is a subclass
_BIG = 1 << 30


def _parse_guard(fn: Callable[[], Any]) -> Any:
    """Runs a parser: returns its result, or None if it raised the allowed
    error. Any other exception propagates (a fuzz finding)."""
    try:
        return fn()
    except _ALLOWED:
        return None


def _message_target(msg_type: int) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        message = _parse_guard(lambda: hm.parse_message(msg_type, data))
        if message is None:
            return
        # Accepted input is canonical: encoding the result gives it back.
        try:
            framed = message.encode(max_size=_BIG)
        except TypeError:  # encoders without a size bound (tiny messages)
            framed = message.encode()
        assert framed[0] == msg_type
        assert framed[hm.FRAME_HEADER_SIZE:] == data, "parse/encode round trip differs"

    target.__name__ = f"parse_message_{hm.MsgType(msg_type).name.lower()}"
    return target


def message_any_target(data: bytes) -> None:
    """``parse_message`` with an arbitrary type byte (first input byte)."""
    if not data:
        return
    msg_type, body = data[0], data[1:]
    message = _parse_guard(lambda: hm.parse_message(msg_type, body))
    if message is not None:
        assert msg_type in set(hm.MsgType), "unknown message type accepted"


def role_entries_target(data: bytes) -> None:
    entries = _parse_guard(lambda: hm.parse_role_entries(data))
    if entries is not None:
        assert len(entries) <= hm.MAX_ROLES
        assert hm.encode_role_entries(entries) == data


def proofs_target(data: bytes) -> None:
    proofs = _parse_guard(lambda: hm.parse_proofs(data))
    if proofs is not None:
        assert len(proofs) <= hm.MAX_ROLES
        assert hm.encode_proofs(proofs) == data


def chain_target(data: bytes) -> None:
    chain = _parse_guard(lambda: hm.parse_chain(data))
    if chain is not None:
        assert 1 <= len(chain) <= hm.MAX_CHAIN
        assert hm.encode_chain(chain) == data


def role_data_target(data: bytes) -> None:
    """Role data of an encrypted field (entries, then password slots)."""
    parsed = _parse_guard(lambda: hm.parse_role_data(data))
    if parsed is not None:
        entries, slots = parsed
        assert len(entries) <= hm.MAX_ROLES and len(slots) <= hm.MAX_PASSWORD_SLOTS
        assert hm.encode_role_data(entries, slots) == data


def padding_target(data: bytes) -> None:
    """``unpad``: only typed errors; what it accepts pads back to itself when
    the padding is minimal, and ``pad`` always round-trips."""
    body = _parse_guard(lambda: hm.unpad(data))
    if body is not None:
        assert len(body) <= len(data) - 2
        n = int.from_bytes(data[-2:], "big")
        assert data == body + bytes(n) + n.to_bytes(2, "big")
    bucket = 1 + (data[0] if data else 0)
    padded = hm.pad(data, bucket)
    assert len(padded) % bucket == 0 and hm.unpad(padded) == data


def frame_target(data: bytes) -> None:
    """``parse_frame_header`` on 4 header bytes (its documented input; the
    handshake machine never calls it with fewer) and the bound of ``frame``."""
    if len(data) < 5:
        return
    max_size = (hm.FRAME_HEADER_SIZE + 1) + int.from_bytes(data[:1], "big") * 257
    header, body = data[1:5], data[5:]
    parsed = _parse_guard(lambda: hm.parse_frame_header(header, max_size))
    length = int.from_bytes(header[1:4], "big")
    if parsed is None:
        assert hm.FRAME_HEADER_SIZE + length > max_size
    else:
        assert parsed == (header[0], length)
        assert hm.FRAME_HEADER_SIZE + length <= max_size
    try:
        framed = hm.frame(header[0], body, max_size)
    except HandshakeMessageTooLarge:
        assert hm.FRAME_HEADER_SIZE + len(body) > max_size
    else:
        assert hm.parse_frame_header(framed[:4], max_size) == (header[0], len(body))
        assert framed[4:] == body


PARSER_TARGETS: dict[str, Callable[[bytes], None]] = {
    "hello": _message_target(hm.MsgType.HELLO),
    "hello_retry": _message_target(hm.MsgType.HELLO_RETRY),
    "responder_hello": _message_target(hm.MsgType.RESPONDER_HELLO),
    "initiator_auth": _message_target(hm.MsgType.INITIATOR_AUTH),
    "responder_auth": _message_target(hm.MsgType.RESPONDER_AUTH),
    "initiator_finish": _message_target(hm.MsgType.INITIATOR_FINISH),
    "cookie_reply": _message_target(hm.MsgType.COOKIE_REPLY),
    "reject": _message_target(hm.MsgType.REJECT),
    "message_any": message_any_target,
    "role_entries": role_entries_target,
    "proofs": proofs_target,
    "chain": chain_target,
    "role_data": role_data_target,
    "padding": padding_target,
    "frame": frame_target,
}

# --- (d) the handshake state machines ------------------------------------------------

_MACHINE_KEY = bytes(range(32))


def _machine_configs() -> Any:
    from rolewire.handshake import HandshakeConfig
    from rolewire.roles import KeyRole, PasswordRateLimiter, PasswordRole

    if not hasattr(_machine_configs, "cache"):
        limiter = PasswordRateLimiter(max_failures=1 << 30)
        roles = [KeyRole("k", _MACHINE_KEY), PasswordRole("p", "pw", limiter=limiter)]
        _machine_configs.cache = HandshakeConfig(roles=roles)  # type: ignore[attr-defined]
    return _machine_configs.cache  # type: ignore[attr-defined]


def handshake_machine_target(data: bytes) -> None:
    """A Responder (first byte even) or Initiator fed the input in chunks,
    after a real Hello for the responder (so later messages reach the
    encrypted paths, where the AEAD stops random bytes): ``next_event()``
    returns only NEED_DATA / HandshakeFailed (never raises), a failure is
    final, and every failure it reports is typed."""
    from rolewire.errors import HandshakeError
    from rolewire.handshake import NEED_DATA, HandshakeFailed, Initiator, Responder

    if not data:
        return
    cfg = _machine_configs()
    side, rest = data[0], data[1:]
    if side % 2 == 0:
        machine = Responder(cfg, peer="fuzz")
        if side & 2:
            machine.receive_data(Initiator(cfg).data_to_send())
            assert machine.next_event() is NEED_DATA
            machine.data_to_send()
    else:
        machine = Initiator(cfg, peer="fuzz")
        machine.data_to_send()
    step = 1 + (side >> 2) % 64
    for i in range(0, len(rest), step):
        if machine.finished:
            break
        machine.receive_data(rest[i:i + step])
        ev = machine.next_event()
        machine.data_to_send()
        if ev is NEED_DATA:
            continue
        assert isinstance(ev, HandshakeFailed), "random bytes completed a handshake"
        assert isinstance(ev.error, HandshakeError)
        assert machine.finished


TARGETS: dict[str, Callable[[bytes], None]] = {
    "record": record_target,
    "window": window_target,
    "handshake_machine": handshake_machine_target,
    **PARSER_TARGETS,
}
