"""Merkle tree hashes and inclusion proofs over call digests.

The tree is the one of RFC 9162 (Certificate Transparency 2.0), section
2.1, with SHA-256: ``leaf = H(0x00 || d)``, ``node = H(0x01 || left ||
right)``; a list of ``n > 1`` leaves splits at the largest power of two
smaller than ``n``. Domain separation of leaves and nodes keeps a leaf from
being passed off as an inner node. Only hashing is done here (hashlib).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "EMPTY_ROOT",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "merkle_root_recursive",
    "verify_inclusion",
]

#: The root of an empty list (RFC 9162: the hash of the empty string).
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def _root(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return _node(_root(hashes[:k]), _root(hashes[k:]))


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of ``leaves`` (each a call digest).

    Computed bottom-up: pairing neighbours level by level and carrying an
    unpaired last node up unchanged gives exactly RFC 9162's left-balanced
    tree (tests compare it with the recursive definition)."""
    if not leaves:
        return EMPTY_ROOT
    sha = hashlib.sha256
    level = [sha(b"\x00" + d).digest() for d in leaves]
    while len(level) > 1:
        paired = [sha(b"\x01" + level[i] + level[i + 1]).digest()
                  for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
    return level[0]


def merkle_root_recursive(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162's recursive definition (reference for tests)."""
    if not leaves:
        return EMPTY_ROOT
    return _root([leaf_hash(d) for d in leaves])


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` (RFC 9162 2.1.3.1), bottom-up."""
    if not 0 <= index < len(leaves):
        raise IndexError("leaf index outside the tree")
    hashes = [leaf_hash(d) for d in leaves]
    path: list[bytes] = []

    def walk(part: Sequence[bytes], m: int) -> None:
        if len(part) == 1:
            return
        k = _split(len(part))
        if m < k:
            walk(part[:k], m)
            path.append(_root(part[k:]))
        else:
            walk(part[k:], m - k)
            path.append(_root(part[:k]))

    walk(hashes, index)
    return path


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """True if ``proof`` shows leaf data ``leaf`` at ``index`` of a tree of
    ``size`` leaves with ``root`` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
