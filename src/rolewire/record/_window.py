"""Pure-Python twin of the C replay window (csrc/replay.c), same algorithm:
a ring of 64-bit words in the style of RFC 6479. Also usable on its own,
e.g. by tests that model the window."""

from __future__ import annotations

from rolewire.record._format import ERR_REPLAY, ERR_TOO_OLD, OK, check_window

_MASK64 = (1 << 64) - 1


class ReplayWindow:
    """Accepts counter ``c`` iff ``c > last`` or ``last - c < size`` and ``c``
    was not accepted before. ``check`` then (after authentication) ``update``."""

    __slots__ = ("_nwords", "_ring", "last", "size")

    def __init__(self, size: int) -> None:
        self.size = check_window(size)
        self._nwords = size // 64 + 1
        self._ring = [0] * self._nwords
        self.last = 0

    def reset(self) -> None:
        self._ring = [0] * self._nwords
        self.last = 0

    def check(self, counter: int) -> int:
        if counter > self.last:
            return OK
        if self.last - counter >= self.size:
            return ERR_TOO_OLD
        if self._ring[(counter >> 6) % self._nwords] >> (counter & 63) & 1:
            return ERR_REPLAY
        return OK

    def update(self, counter: int) -> None:
        if counter > self.last:
            current_block = self.last >> 6
            steps = min((counter >> 6) - current_block, self._nwords)
            for i in range(1, steps + 1):
                self._ring[(current_block + i) % self._nwords] = 0
            self.last = counter
        index = (counter >> 6) % self._nwords
        self._ring[index] = (self._ring[index] | (1 << (counter & 63))) & _MASK64
