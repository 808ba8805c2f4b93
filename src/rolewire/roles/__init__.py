"""Roles: a name plus a way to prove it (key, password or certificate).

See :mod:`rolewire.roles.base` for what all roles share and
docs/PROTOCOL.md, "Roles", for the proofs on the wire.
"""

from __future__ import annotations

from rolewire.roles.base import MAX_ROLE_NAME, MAX_ROLES, Role, RoleKind, RoleSet
from rolewire.roles.budget import BudgetStore, MemoryBudgetStore, SqliteBudgetStore
from rolewire.roles.certificate import CertificateRole
from rolewire.roles.key import KeyRole
from rolewire.roles.password import PasswordRateLimiter, PasswordRole

__all__ = [
    "MAX_ROLES",
    "MAX_ROLE_NAME",
    "BudgetStore",
    "CertificateRole",
    "KeyRole",
    "MemoryBudgetStore",
    "PasswordRateLimiter",
    "PasswordRole",
    "Role",
    "RoleKind",
    "RoleSet",
    "SqliteBudgetStore",
]
