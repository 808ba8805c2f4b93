#!/usr/bin/env python3
"""Fuzz target (b): the replay window.

Random counter sequences (forward steps, big jumps, the window's lower edge,
repeats, counters past the hard limit, records with a bad tag) against a
set model of the specification, through the pure ``ReplayWindow`` and the C
and pure windows via ``RecordLayer.open`` on records built for arbitrary
counters. Oracle: ``tests/regressions/oracles.py`` (``window_target``).

    python fuzz/fuzz_window.py -max_total_time=60 fuzz-corpus/window
"""

import sys

from _driver import main

if __name__ == "__main__":
    main("window", sys.argv[1:])
