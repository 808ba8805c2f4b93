"""Shared fixtures: every record test runs against both backends."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from rolewire.record import RecordLayer, RecordLimits, Suite

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BACKENDS = ("c", "pure")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(Suite), ids=lambda s: s.wire_name)
def suite(request: pytest.FixtureRequest) -> Suite:
    return Suite(request.param)


def key_material(suite: Suite, seed: int = 0) -> dict[str, bytes]:
    """Deterministic direction keys (tests compare bytes across backends)."""
    def fill(tag: int, size: int) -> bytes:
        return bytes((seed * 31 + tag * 7 + i) % 256 for i in range(size))

    return {
        "a_key": fill(1, 32), "a_iv": fill(2, suite.iv_size),
        "b_key": fill(3, 32), "b_iv": fill(4, suite.iv_size),
    }


def make_pair(
    suite: Suite, backend: str, *, seed: int = 0, limits: RecordLimits | None = None,
    window: int = 8192, past_epochs: int = 4,
) -> tuple[RecordLayer, RecordLayer]:
    """Two ends of one session: alice seals with a_*, bob with b_*."""
    k = key_material(suite, seed)
    alice = RecordLayer(suite, send_key=k["a_key"], send_iv=k["a_iv"], recv_key=k["b_key"],
                        recv_iv=k["b_iv"], limits=limits, window=window,
                        past_epochs=past_epochs, backend=backend)
    bob = RecordLayer(suite, send_key=k["b_key"], send_iv=k["b_iv"], recv_key=k["a_key"],
                      recv_iv=k["a_iv"], limits=limits, window=window,
                      past_epochs=past_epochs, backend=backend)
    return alice, bob


@pytest.fixture
def pair(suite: Suite, backend: str) -> tuple[RecordLayer, RecordLayer]:
    return make_pair(suite, backend)


@pytest.fixture
def pair_factory(backend: str) -> Callable[..., Any]:
    def factory(suite: Suite = Suite.CHACHA20_POLY1305, **kwargs: Any) -> Any:
        return make_pair(suite, backend, **kwargs)

    return factory


def assert_owner_only(path: Any) -> None:
    """What each OS can guarantee for a secret file: mode 0600 on POSIX; on
    Windows (no mode bits) an ACL that grants no well-known group access."""
    import stat
    import sys

    from rolewire.pki import owner_only

    assert owner_only(path), f"{path} is readable by others"
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
