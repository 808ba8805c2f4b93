"""Shared helpers of the handshake tests: drive two handshakes in memory,
with an optional man in the middle, and build certificate roles."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from rolewire import pki
from rolewire.handshake import NEED_DATA, HandshakeComplete, HandshakeFailed, Initiator, Responder
from rolewire.roles import CertificateRole

#: tamper(index, sender, data) -> data to deliver (None drops it). ``index``
#: counts flights in order (0 = Hello).
Tamper = Callable[[int, str, bytes], "bytes | None"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Outcome:
    initiator: object = None
    responder: object = None
    flights: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (isinstance(self.initiator, HandshakeComplete)
                and isinstance(self.responder, HandshakeComplete))


def pump(init: Initiator, resp: Responder, tamper: Tamper | None = None,
         max_rounds: int = 12) -> Outcome:
    """Shuttle bytes until both sides reported their final event or nothing
    moves any more."""
    out = Outcome()
    index = 0
    sides = (("initiator", init, resp), ("responder", resp, init))
    for _ in range(max_rounds):
        moved = False
        for name, me, other in sides:
            data = me.data_to_send()
            if not data:
                continue
            out.flights.append((name, data))
            if tamper is not None:
                data = tamper(index, name, data)
            index += 1
            if data is None:
                continue
            moved = True
            if other.finished:
                continue
            other.receive_data(data)
        for attr, me in (("initiator", init), ("responder", resp)):
            if getattr(out, attr) is None and not me.finished:
                ev = me.next_event()
                if ev is not NEED_DATA:
                    setattr(out, attr, ev)
                    moved = True
            elif getattr(out, attr) is None and me.finished:
                ev = me._events.popleft() if me._events else None
                if ev is not None:
                    setattr(out, attr, ev)
                    moved = True
        if not moved:
            break
    return out


def failed(ev: object) -> bool:
    return isinstance(ev, HandshakeFailed)


@dataclass
class CA:
    issued: pki.Issued

    @property
    def cert(self):  # type: ignore[no-untyped-def]
        return self.issued.certificate


def make_ca(name: str = "role CA", key_type: str = "ec-p256") -> CA:
    return CA(pki.create_ca(name, key_type=key_type))


def cert_role(name: str, ca: CA, *, holder: bool = True, key_type: str = "ec-p256",
              anchors: list | None = None) -> CertificateRole:  # type: ignore[type-arg]
    anchors = anchors if anchors is not None else [ca.cert]
    if not holder:
        return CertificateRole(name, anchors=anchors)
    leaf = pki.issue(ca.issued, f"{name}-holder", key_type=key_type)
    return CertificateRole(name, anchors=anchors, chain=[leaf.certificate],
                           private_key=leaf.private_key)


def shifted_clock(days: float) -> Callable[[], datetime.datetime]:
    def clock() -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    return clock
