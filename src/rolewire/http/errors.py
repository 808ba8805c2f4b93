"""Typed errors of the HTTP binding, all under
:class:`rolewire.errors.RolewireError`.

Each error the server detects maps to one HTTP status and one token in the
``Rolewire-Error`` header (docs/PROTOCOL.md, "HTTP binding / Status codes");
the client turns a status and token back into the same class. Messages never
carry key material, plaintext or role names.
"""

from __future__ import annotations

from rolewire.errors import Forbidden, RolewireError

__all__ = [
    "BodyTooLarge",
    "BodyTruncated",
    "HTTPBindingError",
    "HTTPForbidden",
    "MalformedBody",
    "NotSealed",
    "RecordRejected",
    "ResponseForged",
    "ResponseTruncated",
    "SessionExpired",
    "SessionIdInUse",
    "UnknownSession",
    "error_for",
]


class HTTPBindingError(RolewireError):
    """A sealed HTTP message was refused. ``status`` is the HTTP status the
    server answers with and ``code`` the ``Rolewire-Error`` token."""

    status = 400
    code = "error"

    @property
    def retry_after_handshake(self) -> bool:
        """True if the request never reached the application and a fresh
        handshake lets it be sent again safely."""
        return False


class NotSealed(HTTPBindingError):
    """The request is not a sealed rolewire request (no session header, or
    not the sealed content type)."""

    status = 401
    code = "not-sealed"


class UnknownSession(HTTPBindingError):
    """The session id names no session this server holds (never made here,
    evicted, or held by another replica)."""

    status = 401
    code = "session-unknown"

    @property
    def retry_after_handshake(self) -> bool:
        return True


class SessionExpired(UnknownSession):
    """The session outlived its lifetime; run a new handshake."""

    code = "session-expired"


class SessionIdInUse(HTTPBindingError):
    """A handshake tried to start under a session id that is taken."""

    status = 409
    code = "session-id-in-use"


class RecordRejected(HTTPBindingError):
    """A sealed record did not open or its bound metadata did not match: it
    was forged, sealed for another session, moved to another method, path or
    request, or replayed."""

    status = 401
    code = "rejected"


class MalformedBody(HTTPBindingError):
    """A sealed body or its metadata does not parse."""

    status = 400
    code = "malformed"


class BodyTruncated(MalformedBody):
    """A sealed body ended before its final record."""

    code = "truncated"


class BodyTooLarge(HTTPBindingError):
    """A sealed body (or one record of it) exceeds the size limit; refused
    before decryption."""

    status = 413
    code = "too-large"


class ResponseForged(RolewireError):
    """Client side: a response did not open, was not bound to its request
    (swapped, replayed, moved) or disagrees with its outer status."""


class ResponseTruncated(ResponseForged):
    """Client side: the sealed response ended before its final record."""


class HTTPForbidden(Forbidden):
    """The server's role authorization refused the request (HTTP 403). The
    reply never names the roles required."""

    status = 403
    code_token = "forbidden"

    def __init__(self, message: str = "forbidden by the server's role policy", *,
                 operation: str = "") -> None:
        super().__init__(message, operation=operation)


_BY_CODE: dict[str, type[HTTPBindingError]] = {
    cls.code: cls for cls in (NotSealed, UnknownSession, SessionExpired, SessionIdInUse,
                              RecordRejected, MalformedBody, BodyTruncated, BodyTooLarge)
}


def error_for(status: int, code: str | None) -> HTTPBindingError | None:
    """Client side: the error a server reply stands for, or None if the reply
    is not one of the binding's error replies."""
    if code is None:
        return None
    cls = _BY_CODE.get(code)
    if cls is None or cls.status != status:
        return None
    return cls(f"the server refused the request: {code} (HTTP {status})")
