#!/usr/bin/env python3
"""Fuzz target (a): the record open path.

Random programs of seal / open / open_many / open_packed / key update /
retire / close against the C backend, every step checked against the pure
twin, plus a forgery and replay model: only RecordError subclasses may
escape, an accepted record must be one the sender sealed, byte for byte,
and no record is accepted twice. Oracle: ``tests/regressions/oracles.py``
(``record_target``).

    python fuzz/fuzz_record.py -max_total_time=60 fuzz-corpus/record
"""

import sys

from _driver import main

if __name__ == "__main__":
    main("record", sys.argv[1:])
