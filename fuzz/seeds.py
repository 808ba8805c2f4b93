"""Seed inputs for the fuzz targets, built with rolewire's own encoders.

``python fuzz/seeds.py OUTDIR`` writes them to ``OUTDIR/<target>/``; the
driver adds them to a target's corpus directory automatically. Seeds are
generated, not checked in: they follow the message formats as they evolve.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _record_seeds() -> list[bytes]:
    """Programs in the record target's op encoding (see
    ``tests/regressions/oracles.py``: ``record_target``)."""
    seal = lambda n: b"\x00" + _u16(n) + bytes(range(n % 256))[:n].ljust(n, b"s")
    open_idx = lambda i, kind=0: b"\x04" + b"\x00" + _u16(i) + bytes((kind,))
    open_raw = lambda raw: b"\x07" + _u16(len(raw)) + raw
    mutate_last = lambda how, *args: b"\x08" + bytes((how, *args))
    update, retire = b"\x0c", b"\x0d"
    many = b"\x09\x03" + b"\x00\x00\x00" + b"\x00\x00\x01" + b"\xf0\x00\x00\x01"
    packed = b"\x0b\x02" + b"\x00\x00\x00" + b"\x00\x00\x01" + b"\x01" + b"\x01"
    packed_cut = b"\x0b\x02" + b"\x00\x00\x00" + b"\x00\x00\x01" + b"\x00\x02\x00\x10\x00\x30\x01"
    programs = [
        seal(5) + open_idx(0) + open_idx(0),
        seal(0) + seal(17) + open_idx(1, 1) + open_idx(0, 2) + many,
        seal(40) + seal(40) + seal(40) + packed + packed_cut,
        seal(3) + update + seal(4) + open_idx(1) + open_idx(0) + retire + open_idx(0),
        seal(8) + update + update + update + update + update + seal(8) + open_idx(1),
        seal(300) + open_idx(0) + mutate_last(0, 0, 20, 0x40) + mutate_last(5, 0, 0, 0, 0, 0, 0,
                                                                            0, 9),
        seal(12) + mutate_last(1, 0, 9) + mutate_last(4, 0, 0, 0, 1) + mutate_last(3, 0, 2),
        open_raw(b"\x01\x01" + bytes(12) + bytes(40)) + open_raw(b"\x01\x02" + bytes(60)),
        seal(1) + b"\x0e\xff\x00",
    ]
    out = []
    for cfg in range(16):
        out.extend(bytes((cfg,)) + p for p in programs)
    return out


def _window_seeds() -> list[bytes]:
    return [
        bytes((cfg,)) + ops
        for cfg in (0, 1, 2, 3, 4, 5, 0x80, 0x84)
        for ops in (
            b"\x00\x05" * 8 + b"\x01\x00\x10" * 4 + b"\x04\x00\x00",
            b"\x03\x00\x00\x10\x00" + b"\x02\x01" * 4 + b"\x06\x15" + b"\x07",
            b"\x00\x00\xf9\x01\x00\x02" + b"\x05" + bytes(8) + b"\x08\x07" + b"\xf7",
        )
    ]


def _parser_seeds() -> dict[str, list[bytes]]:
    from rolewire.handshake import messages as hm

    hint = lambda i: hashlib.blake2b(bytes((i,)), digest_size=16).digest()
    hints = tuple(hint(i) for i in range(4))
    slots = (bytes(range(192)), bytes(192))
    hellos = [
        hm.Hello(2, bytes(range(32)), (1, 2, 3, 4), 1, bytes(56 + 1184), hints, slots),
        hm.Hello(2, bytes(32), (2,), 2, bytes(32 + 1184), ()),
        hm.Hello(2, bytes(32), (4, 3), 2, b"short", hints[:1], slots[:1]),
        hm.Hello(2, bytes(32), (1,), 1, bytes(56 + 1184), hints, (), bytes(range(16))),
    ]
    responder = [
        hm.ResponderHello(1, bytes(32), suite, bytes(56 if suite in (1, 3) else 32),
                          bytes(1088), b"data-ct" * 3, b"proof-ct" * 2)
        for suite in (1, 2, 3, 4)
    ]
    bodies = {
        "hello": [h.encode()[4:] for h in hellos],
        "hello_retry": [hm.HelloRetry(1, 2).encode()[4:], hm.HelloRetry(2, 9).encode()[4:]],
        "responder_hello": [r.encode()[4:] for r in responder],
        "initiator_auth": [hm.InitiatorAuth(b"d" * 40, b"p" * 60).encode()[4:],
                           hm.InitiatorAuth(b"", b"").encode()[4:]],
        "responder_auth": [hm.ResponderAuth(b"d" * 40, b"p" * 48).encode()[4:],
                           hm.ResponderAuth(b"", b"").encode()[4:]],
        "cookie_reply": [hm.CookieReply(2, bytes(range(16))).encode()[4:]],
        "initiator_finish": [hm.InitiatorFinish(b"d" * 20, b"p" * 30).encode()[4:],
                             hm.InitiatorFinish(b"", b"").encode()[4:]],
        "reject": [hm.Reject(1).encode()[4:], hm.Reject(200).encode()[4:]],
        "role_entries": [
            hm.encode_role_entries([hm.RoleEntry(0, 1, b"x"), hm.RoleEntry(2, 3, b"")]),
            hm.encode_role_entries([hm.RoleEntry(i, 2, bytes(i)) for i in range(10)]),
            b"\x00",
        ],
        "proofs": [
            hm.encode_proofs([hm.ProofEntry(0, b"p" * 32), hm.ProofEntry(5, b"q" * 64)]),
            b"\x00",
        ],
        "chain": [hm.encode_chain((b"leaf-der" * 20, b"intermediate" * 10)),
                  hm.encode_chain(tuple(bytes((i,)) * 8 for i in range(8)))],
        "role_data": [
            hm.encode_role_data([hm.RoleEntry(0, 1, b"x")], [b"s" * 112, b"t" * 112]),
            hm.encode_role_data([], []),
            hm.encode_role_data([hm.RoleEntry(i, 3, b"") for i in range(4)], [b""] * 8),
        ],
        "padding": [hm.pad(b"body"), hm.pad(b""), hm.pad(bytes(300), 64), b"\x00\x00"],
        "frame": [b"\xff" + hm.frame(1, b"body"), b"\x00" + b"\x05\x00\x00\x01" + b"x",
                  b"\x10" + b"\x01\x00\x10\x00"],
    }
    bodies["message_any"] = [
        bytes((int(t),)) + b
        for t, name in ((hm.MsgType.HELLO, "hello"), (hm.MsgType.HELLO_RETRY, "hello_retry"),
                        (hm.MsgType.RESPONDER_HELLO, "responder_hello"),
                        (hm.MsgType.INITIATOR_AUTH, "initiator_auth"),
                        (hm.MsgType.RESPONDER_AUTH, "responder_auth"),
                        (hm.MsgType.INITIATOR_FINISH, "initiator_finish"),
                        (hm.MsgType.COOKIE_REPLY, "cookie_reply"),
                        (hm.MsgType.REJECT, "reject"))
        for b in bodies[name]
    ]
    return bodies


def _machine_seeds() -> list[bytes]:
    from rolewire.handshake import HandshakeConfig, Initiator
    from rolewire.handshake import messages as hm
    from rolewire.roles import KeyRole

    hello = Initiator(HandshakeConfig(roles=[KeyRole("k", bytes(range(32)))])).data_to_send()
    return [
        b"\x00" + hello,                                   # responder: a Hello
        b"\x02" + hm.InitiatorAuth(b"x" * 300, b"y" * 40).encode(),  # after a real Hello
        b"\x06" + hm.Reject(7).encode(),
        b"\x01" + hm.HelloRetry(2, 2).encode(),             # initiator
        b"\x01" + hm.CookieReply(2, bytes(16)).encode() + hm.CookieReply(2, bytes(16)).encode(),
        b"\x05" + hm.ResponderHello(2, bytes(32), 2, bytes(32), bytes(1088), b"d" * 272,
                                     b"p" * 272).encode(),
    ]


def seeds(target: str) -> list[bytes]:
    if target == "record":
        return _record_seeds()
    if target == "window":
        return _window_seeds()
    if target == "handshake_machine":
        return _machine_seeds()
    return _parser_seeds().get(target, [])


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from tests.regressions.oracles import TARGETS

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz-seeds")
    for target in TARGETS:
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for data in seeds(target):
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
        print(f"{target}: {len(list(d.iterdir()))} seeds in {d}")


if __name__ == "__main__":
    main()
