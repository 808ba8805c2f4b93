"""Non-repudiation for rolewire calls (issue 18 §2, thesis section 5.2.1).

A caller signs its calls with the key of one of its certificate roles, one
signature per *batch* (a Merkle root over the calls' digests); the receiver
verifies once per batch, releases the calls with the proof attached
(``call.signed``) and appends batch head, call digests and signer chain to a
hash-chained SQLite log that a third party can check later with only the
roles' trust anchors (``rolewire audit verify DB --anchors DIR``).

Caller::

    signer = Signer.from_files("payment", "user-api-sign.pem", "user-api-sign.key")
    sign_calls(channel, signer)                 # every call of this channel is signed

Receiver::

    service = Service("payment", signed_calls=SignedCalls({"payment": [payment_ca]},
                                                          log=AuditLog("payment-audit.db")))
    @service.operation("charge", roles=["payment"], signed="payment")
    def charge(call, body): ...

See docs/nonrep.md for the formats and exactly what is and is not proven.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from cryptography import x509

from rolewire.callstate import ConnectionState
from rolewire.nonrep.audit import (
    AuditLog,
    AuditLogError,
    AuditLogTampered,
    LogRowDeleted,
    LogRowEdited,
    LogRowInserted,
    ProvenCall,
    load_anchors,
    show,
    verify,
)
from rolewire.nonrep.batch import (
    MAX_BATCH_CALLS,
    POSITION_KEY,
    BatchError,
    BatchHead,
    BatchIncomplete,
    BatchMalformed,
    BatchSignatureInvalid,
    BatchSigner,
    BatchVerifier,
    SignedCall,
    call_digest,
)
from rolewire.nonrep.merkle import inclusion_proof, merkle_root, verify_inclusion
from rolewire.nonrep.signing import (
    Algorithm,
    SignatureInvalid,
    Signer,
    SignerNotTrusted,
    issue_signer,
)
from rolewire.protocol.wire import CallMessage, MessageType, encode

__all__ = [
    "MAX_BATCH_CALLS",
    "POSITION_KEY",
    "Algorithm",
    "AuditLog",
    "AuditLogError",
    "AuditLogTampered",
    "BatchError",
    "BatchHead",
    "BatchIncomplete",
    "BatchMalformed",
    "BatchSignatureInvalid",
    "BatchSigner",
    "BatchVerifier",
    "LogRowDeleted",
    "LogRowEdited",
    "LogRowInserted",
    "ProvenCall",
    "SignatureInvalid",
    "SignedCall",
    "SignedCalls",
    "Signer",
    "SignerNotTrusted",
    "call_digest",
    "inclusion_proof",
    "issue_signer",
    "load_anchors",
    "merkle_root",
    "show",
    "sign_calls",
    "verify",
    "verify_inclusion",
]

log = logging.getLogger("rolewire.audit")


class SignedCalls:
    """A service's receiver of signed calls.

    Args:
        anchors: ``{role: trust anchors}`` of the certificate roles whose
            signed calls the service accepts (e.g. ``{"payment":
            role.anchors}`` of its :class:`~rolewire.roles.CertificateRole`).
        log: where verified batches are recorded (None: verify only).
        max_skew: seconds a signed call's time may differ from ours.
        clock: wall-clock seconds.
    """

    def __init__(self, anchors: Mapping[str, Sequence[x509.Certificate]],
                 log: AuditLog | None = None, *, max_skew: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.anchors = {role: list(certs) for role, certs in anchors.items()}
        self.log = log
        self.max_skew = max_skew
        self.clock = clock

    def verifier(self, transcript_hash: bytes, peer_roles: frozenset[str],
                 peer: str = "") -> BatchVerifier:
        """A :class:`BatchVerifier` for one connection."""
        return BatchVerifier(
            self.anchors, transcript_hash, peer_roles,
            clock=lambda: int(self.clock() * 1000), max_skew_ms=int(self.max_skew * 1000),
            record=self.log.recorder(transcript_hash, peer) if self.log is not None else None)

    def admission(self, state: ConnectionState, peer_roles: frozenset[str],
                  peer: str = "") -> Callable[[Iterable[CallMessage]], Iterator[CallMessage]]:
        """The connection-level check of :attr:`ConnectionState.admit`."""
        verifier = self.verifier(state.transcript_hash, peer_roles, peer)
        state.extensions["nonrep"] = verifier
        receive = verifier.receive

        def admit(messages: Iterable[CallMessage]) -> Iterator[CallMessage]:
            for message in messages:
                if not message.metadata and message.type is not MessageType.SIGNED_BATCH:
                    yield message
                    continue
                refused = verifier.refused
                released = receive(message)
                if verifier.refused != refused:
                    log.warning("signed batch refused", extra={
                        "event": "signed_batch_refused", "peer": peer,
                        "reason": type(verifier.last_error).__name__,
                        "error": str(verifier.last_error)})
                yield from released

        return admit


def sign_calls(channel: Any, signer: Signer, *, max_calls: int = 256, max_delay: float = 0.0,
               clock: Callable[[], float] = time.time) -> BatchSigner:
    """Sign every call and notification ``channel`` (a
    :class:`rolewire.aio.Channel`) sends from now on, under ``signer``'s
    role. A batch closes when it has ``max_calls`` calls or, at the latest,
    ``max_delay`` seconds after its first call (0: at the end of the current
    event-loop iteration, so calls issued together share one signature and
    a lone call is not delayed). Must be called inside the event loop."""
    batcher = BatchSigner(signer, channel.session.transcript_hash, max_calls=max_calls)
    loop = asyncio.get_running_loop()
    scheduled = False

    def close() -> None:
        nonlocal scheduled
        scheduled = False
        for body in batcher.close():
            channel.queue(encode(CallMessage(MessageType.SIGNED_BATCH, 0, "", body)))

    def hook(_channel: Any, kind: MessageType, call_id: int, operation: str, body: bytes,
             metadata: Mapping[str, bytes]) -> Mapping[str, bytes]:
        nonlocal scheduled
        if kind is not MessageType.REQUEST and kind is not MessageType.NOTIFY:
            return metadata
        stamped = batcher.stamp(kind, call_id, operation, body, metadata, int(clock() * 1000))
        if not scheduled:
            scheduled = True
            if max_delay > 0:
                loop.call_later(max_delay, close)
            else:
                loop.call_soon(close)
        return stamped

    channel.outgoing_hooks.append(hook)
    return batcher
