"""Per-connection state of the layers above the call codec, and the marker
of metadata that a connection-level check has verified.

A server keeps one :class:`ConnectionState` per connection and passes it to
:meth:`rolewire.services.Service.dispatch`: the end-user layer caches
verified tokens in it (:mod:`rolewire.enduser`), the signed-call layer its
batch state (:mod:`rolewire.nonrep`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from rolewire.errors import RolewireError

__all__ = ["ConnectionState", "SignatureRequired", "VerifiedMetadata"]


class SignatureRequired(RolewireError):
    """The operation requires calls signed under a certificate role and this
    call was not (or under another role)."""


class ConnectionState:
    """What one connection remembers between calls.

    Attributes:
        transcript_hash: the session's handshake transcript hash (binds
            signed calls to this session).
        user_cache: verified end-user tokens by SHA-256 digest.
        extensions: per-layer state (``"nonrep"``: the signed-call receiver).
    """

    __slots__ = ("admit", "extensions", "transcript_hash", "user_cache")

    def __init__(self, transcript_hash: bytes = b"") -> None:
        self.transcript_hash = transcript_hash
        self.user_cache: dict[bytes, Any] = {}
        self.extensions: dict[str, Any] = {}
        #: None, or ``admit(messages) -> messages``: the connection-level
        #: check decoded call messages pass before dispatch (signed calls
        #: are held until their batch's signature verifies).
        self.admit: Callable[[Iterable[Any]], Iterable[Any]] | None = None


class VerifiedMetadata(Mapping[str, bytes]):
    """A call's metadata after a connection-level check proved something
    about the call (``evidence``: e.g. a :class:`rolewire.nonrep.SignedCall`).
    Only that check builds one; a decoded message never carries one, so a
    peer cannot claim the proof by sending metadata."""

    __slots__ = ("_data", "evidence")

    def __init__(self, data: Mapping[str, bytes], evidence: Any) -> None:
        self._data = data
        self.evidence = evidence

    def __getitem__(self, key: str) -> bytes:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return True  # verified even if no entry is left
