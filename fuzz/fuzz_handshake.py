#!/usr/bin/env python3
"""Fuzz target (d): the handshake state machines.

A Responder (after a real Hello, or from the start) or an Initiator is fed
the input in chunks; ``next_event()`` must return only NEED_DATA or a typed
HandshakeFailed, never raise, never complete on random bytes, and a failure
is final (issue 11 §1: every failure inside ``next_event()`` is a typed
handshake failure). Oracle: ``tests/regressions/oracles.py``
(``handshake_machine_target``).

    python fuzz/fuzz_handshake.py -max_total_time=60 fuzz-corpus/handshake_machine
"""

import sys

from _driver import main

if __name__ == "__main__":
    main("handshake_machine", sys.argv[1:])
