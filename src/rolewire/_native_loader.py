"""Load ``rolewire._native`` and connect it to PyNaCl's libsodium.

The C core does not link libsodium itself: PyNaCl ships it already. We
import ``nacl.bindings`` first (which runs ``sodium_init()`` and selects the
CPU-specific implementations), take the addresses of the functions we need
from PyNaCl's cffi library, and hand them to the C code once.

Only this module and ``rolewire.record`` import the native module.
"""

from __future__ import annotations

from typing import Any

#: PyNaCl versions whose cdef we have checked: the function signatures
#: declared in csrc/record.c follow theirs exactly. Keep in sync with the
#: dependency pin in pyproject.toml.
SUPPORTED_PYNACL = ">=1.6.0,<1.7"

#: The libsodium functions the C core calls, in rw_install_sodium order.
REQUIRED_SODIUM_FUNCTIONS = (
    "crypto_aead_chacha20poly1305_ietf_encrypt",
    "crypto_aead_chacha20poly1305_ietf_decrypt",
    "crypto_aead_aegis256_encrypt",
    "crypto_aead_aegis256_decrypt",
    "sodium_memzero",
    "crypto_generichash_blake2b_salt_personal",
)


def _load() -> tuple[Any, Any]:
    try:
        import nacl
        import nacl.bindings  # runs sodium_init
        from nacl import _sodium
    except ImportError as exc:  # pragma: no cover - PyNaCl is a dependency
        raise ImportError(
            f"rolewire needs PyNaCl {SUPPORTED_PYNACL} (its bundled libsodium): {exc}"
        ) from exc

    from rolewire import _native

    addresses = []
    for name in REQUIRED_SODIUM_FUNCTIONS:
        if not hasattr(_sodium.lib, name):
            raise ImportError(
                f"PyNaCl {getattr(nacl, '__version__', '?')} does not expose libsodium "
                f"function {name!r}; rolewire supports PyNaCl {SUPPORTED_PYNACL}"
            )
        pointer = _sodium.ffi.addressof(_sodium.lib, name)
        addresses.append(int(_sodium.ffi.cast("uintptr_t", pointer)))
    if _native.lib.rw_install_sodium(*addresses) != _native.lib.RW_OK:
        raise ImportError("rolewire._native refused the libsodium function table")
    return _native.ffi, _native.lib


ffi, lib = _load()
