#!/usr/bin/env python3
"""Fuzz target (c): every handshake message parser.

    python fuzz/fuzz_parsers.py PARSER [libFuzzer flags] [corpus dirs]
    python fuzz/fuzz_parsers.py --list

PARSER is one of: hello, hello_retry, responder_hello, initiator_auth,
responder_auth, initiator_finish, cookie_reply, reject (``parse_message`` for that type),
message_any (``parse_message`` with the type taken from the first byte),
role_entries, role_data, padding, proofs, chain, frame
(``parse_frame_header`` and ``frame``).
Only MalformedHandshakeMessage (or its subclass HandshakeMessageTooLarge)
may escape, and whatever a parser accepts must encode back to the same
bytes. Oracle: ``tests/regressions/oracles.py`` (``PARSER_TARGETS``).
"""

import sys

from _driver import ROOT, main

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "--list"):
        from tests.regressions.oracles import PARSER_TARGETS

        print("parsers:", " ".join(PARSER_TARGETS))
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    main(sys.argv[1], sys.argv[2:])
