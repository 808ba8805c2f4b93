"""Runner for the wireguard-go replay cases in vectors/replay_wireguard.json.

Their filter accepts counter c iff c < limit and (c > last or last - c <=
windowSize); ours accepts last - c < W. Their windowSize therefore maps to
our W - 1. Records with arbitrary counters are built with the record format
and the C AEAD hook (the counters come from the data, not from a sender)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rolewire import errors
from rolewire.record import RecordLayer, RecordLimits, ReplayWindow, Suite
from rolewire.record._c import aead_seal
from rolewire.record._format import OK, make_nonce, pack_header

OUR_WINDOW = 8192
THEIR_W = OUR_WINDOW - 1
KEY, IV = bytes(range(32)), bytes(range(12))


def _counters(case: dict[str, Any], limit: int) -> list[tuple[int, bool]]:
    env = {"W": THEIR_W, "L": limit}
    if "range" in case:
        spec = case["range"]
        start, stop = eval(spec["from"], {}, env), eval(spec["to"], {}, env)
        step = spec["step"]
        return [(c, case["accept"]) for c in range(start, stop + step, step)]
    return [(eval(case["expr"], {}, env), case["accept"])]


def _record(counter: int) -> bytes:
    header = pack_header(Suite.CHACHA20_POLY1305, 0, counter)
    return header + aead_seal(Suite.CHACHA20_POLY1305, KEY, make_nonce(IV, counter), header,
                              counter.to_bytes(8, "big"))


def _offerer(backend: str, limit: int) -> Callable[[int], bool]:
    """A fresh receiver for one section: offer(counter) is True if accepted."""
    if backend == "window":
        window = ReplayWindow(OUR_WINDOW)

        def offer_window(counter: int) -> bool:
            if counter >= limit or window.check(counter) != OK:
                return False
            window.update(counter)
            return True

        return offer_window
    layer = RecordLayer(
        Suite.CHACHA20_POLY1305, send_key=bytes(32), send_iv=bytes(12),
        recv_key=KEY, recv_iv=IV, window=OUR_WINDOW, backend=backend,
        limits=RecordLimits(soft_messages=0, soft_bytes=0, hard_messages=limit),
    )

    def offer_record(counter: int) -> bool:
        try:
            return layer.open(_record(counter)) == counter.to_bytes(8, "big")
        except (errors.ReplayDetected, errors.MalformedRecord):
            return False

    return offer_record


def run_sections(sections: list[dict[str, Any]], backend: str) -> None:
    for section in sections:
        limit = section["limit"]
        offer = _offerer(backend, limit)
        for case in section["cases"]:
            for counter, accept in _counters(case, limit):
                assert offer(counter) is accept, (section["name"], case, counter)
