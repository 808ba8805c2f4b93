"""The self-signed JWT baseline: token checks, services end to end, and
both ways of passing the end-user context (forwarded / exchanged per hop)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from rolewire import pki
from rolewire.baselines import jwt
from rolewire.baselines.jwt import (
    KeyRegistry,
    ServiceIdentity,
    TokenSigner,
    TokenVerifier,
)
from rolewire.errors import ConfigurationError, Forbidden, RemoteCallError
from rolewire.services import CallContext, Service
from tests.conftest import assert_owner_only

BODY = b'{"amount": 42}'


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.fixture(scope="module", params=["EdDSA", "ES256"])
def ids(request: pytest.FixtureRequest) -> dict[str, ServiceIdentity]:
    alg = request.param
    return {name: ServiceIdentity.generate(name, alg)
            for name in ("user-api", "payment", "suggestion", "orders", "inventory")}


@pytest.fixture(scope="module")
def sts() -> jwt.SecurityTokenService:
    return jwt.SecurityTokenService(ServiceIdentity.generate("sts"))


@pytest.fixture(scope="module")
def registry(ids: dict[str, ServiceIdentity], sts: jwt.SecurityTokenService) -> KeyRegistry:
    reg = KeyRegistry()
    reg.add_identity(ids["user-api"], ["user-info", "payment"])
    reg.add_identity(ids["payment"], ["payment"])
    reg.add_identity(ids["suggestion"], ["user-info"])
    reg.add_identity(ids["orders"], ["orders"])
    reg.add_identity(ids["inventory"], ["inventory"])
    reg.add_identity(sts.identity, sts=True)
    return reg


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.create_ca("transport CA")


def verifier(registry: KeyRegistry, **kwargs: Any) -> TokenVerifier:
    return TokenVerifier("payment", registry, **kwargs)


# --- token checks (no sockets) ----------------------------------------------------------


def test_valid_token_maps_roles(ids: dict[str, ServiceIdentity], registry: KeyRegistry) -> None:
    token = TokenSigner(ids["user-api"]).sign("payment", "charge", BODY)
    verified = verifier(registry).verify(token, "charge", BODY)
    assert verified.caller == "user-api"
    assert verified.roles == {"user-info", "payment"}
    assert verified.user is None
    header = pyjwt.get_unverified_header(token)
    assert header["alg"] == ids["user-api"].algorithm


def test_expired_token_is_refused(ids: dict[str, ServiceIdentity],
                                  registry: KeyRegistry) -> None:
    old = TokenSigner(ids["user-api"], clock=lambda: time.time() - 120)  # exp 60 s ago
    with pytest.raises(jwt.TokenExpired):
        verifier(registry).verify(old.sign("payment", "charge", BODY), "charge", BODY)
    # Within the leeway it still passes (clock skew is tolerated, a little).
    skewed = TokenSigner(ids["user-api"], clock=lambda: time.time() - 62)
    verifier(registry).verify(skewed.sign("payment", "charge", BODY), "charge", BODY)


def test_future_and_overlong_tokens_are_refused(ids: dict[str, ServiceIdentity],
                                                registry: KeyRegistry) -> None:
    future = TokenSigner(ids["user-api"], clock=lambda: time.time() + 60)
    with pytest.raises(jwt.TokenNotYetValid):
        verifier(registry).verify(future.sign("payment", "charge", BODY), "charge", BODY)
    long_lived = TokenSigner(ids["user-api"], lifetime=3600)
    with pytest.raises(jwt.TokenLifetimeTooLong):
        verifier(registry).verify(long_lived.sign("payment", "charge", BODY), "charge", BODY)


def test_reused_jti_is_refused(ids: dict[str, ServiceIdentity], registry: KeyRegistry) -> None:
    check = verifier(registry)
    token = TokenSigner(ids["user-api"]).sign("payment", "charge", BODY)
    check.verify(token, "charge", BODY)
    with pytest.raises(jwt.TokenReplayed):
        check.verify(token, "charge", BODY)


def test_rejected_token_does_not_consume_its_jti(ids: dict[str, ServiceIdentity],
                                                 registry: KeyRegistry) -> None:
    check = verifier(registry)
    token = TokenSigner(ids["user-api"]).sign("payment", "charge", BODY)
    with pytest.raises(jwt.TokenRequestMismatch):
        check.verify(token, "charge", b"other")
    assert len(check.replay_cache) == 0
    check.verify(token, "charge", BODY)


def test_replay_cache_forgets_expired_entries_and_is_bounded() -> None:
    cache = jwt.ReplayCache(max_entries=2, leeway=0)
    cache.add("a", "1", expires=100, now=50)
    cache.add("a", "2", expires=200, now=50)
    with pytest.raises(jwt.ReplayCacheFull):
        cache.add("a", "3", expires=200, now=60)
    cache.add("a", "3", expires=300, now=150)  # "1" expired and was purged
    assert len(cache) == 2
    with pytest.raises(jwt.TokenReplayed):
        cache.add("a", "2", expires=200, now=150)
    other = jwt.ReplayCache()
    other.add("a", "x", 10, 0)
    other.add("b", "x", 10, 0)  # jti is per issuer


def test_token_signed_by_another_service_is_refused(ids: dict[str, ServiceIdentity],
                                                    registry: KeyRegistry) -> None:
    # suggestion's key, claiming to be user-api (who holds the payment role)
    forged = TokenSigner(ServiceIdentity("user-api", ids["suggestion"].private_key))
    with pytest.raises(jwt.TokenSignatureInvalid):
        verifier(registry).verify(forged.sign("payment", "charge", BODY), "charge", BODY)


def test_verify_signed_token_is_the_public_signature_check(
        ids: dict[str, ServiceIdentity], registry: KeyRegistry) -> None:
    # the audit log verifies stored tokens through this public function
    token = TokenSigner(ids["user-api"]).sign("payment", "charge", BODY)
    entry = registry.get("user-api")
    assert entry is not None
    claims = jwt.verify_signed_token(token, entry, audience=None, leeway=0,
                                     require=["iss", "aud", "jti", "rh"])
    assert claims["iss"] == "user-api" and claims["aud"] == "payment"
    with pytest.raises(jwt.TokenAudienceMismatch):
        jwt.verify_signed_token(token, entry, audience="orders", leeway=0, require=["aud"])
    other = registry.get("suggestion")
    assert other is not None
    with pytest.raises(jwt.TokenRejected):  # another signer's key: the issuer differs
        jwt.verify_signed_token(token, other, audience=None, leeway=0, require=["iss"])
    head, body, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(jwt.TokenSignatureInvalid):
        jwt.verify_signed_token(f"{head}.{body}.{flipped}", entry, audience=None,
                                leeway=0, require=["iss"])
    expired = TokenSigner(ids["user-api"], clock=lambda: time.time() - 120)
    old = expired.sign("payment", "charge", BODY)
    with pytest.raises(jwt.TokenExpired):
        jwt.verify_signed_token(old, entry, audience=None, leeway=0, require=["exp"])
    assert jwt.verify_signed_token(old, entry, audience=None, leeway=0, require=["exp"],
                                   verify_exp=False)["jti"]


def test_unknown_issuer_and_sts_as_caller_are_refused(
        registry: KeyRegistry, sts: jwt.SecurityTokenService) -> None:
    stranger = TokenSigner(ServiceIdentity.generate("stranger"))
    with pytest.raises(jwt.UnknownIssuer):
        verifier(registry).verify(stranger.sign("payment", "charge", BODY), "charge", BODY)
    # An STS key signs user tokens, not service calls.
    with pytest.raises(jwt.UnknownIssuer):
        verifier(registry).verify(TokenSigner(sts.identity).sign("payment", "charge", BODY),
                                  "charge", BODY)


def test_algorithm_confusion_is_refused(ids: dict[str, ServiceIdentity],
                                        registry: KeyRegistry) -> None:
    now = int(time.time())
    claims = {"iss": "user-api", "sub": "user-api", "aud": "payment", "iat": now,
              "exp": now + 60, "jti": "A" * 22, "rh": jwt.request_hash("charge", BODY)}
    unsigned = pyjwt.encode(claims, "", algorithm="none")
    with pytest.raises(jwt.TokenSignatureInvalid):
        verifier(registry).verify(unsigned, "charge", BODY)
    other_alg = "ES256" if ids["user-api"].algorithm == "EdDSA" else "EdDSA"
    wrong = TokenSigner(ServiceIdentity("user-api",
                                        ServiceIdentity.generate("x", other_alg).private_key))
    with pytest.raises(jwt.TokenSignatureInvalid):
        verifier(registry).verify(wrong.sign("payment", "charge", BODY), "charge", BODY)


def test_token_for_another_audience_is_refused(ids: dict[str, ServiceIdentity],
                                               registry: KeyRegistry) -> None:
    token = TokenSigner(ids["user-api"]).sign("shipping", "charge", BODY)
    with pytest.raises(jwt.TokenAudienceMismatch):
        verifier(registry).verify(token, "charge", BODY)


def test_token_moved_to_another_request_is_refused(ids: dict[str, ServiceIdentity],
                                                   registry: KeyRegistry) -> None:
    token = TokenSigner(ids["user-api"]).sign("payment", "charge", BODY)
    with pytest.raises(jwt.TokenRequestMismatch):
        verifier(registry).verify(token, "charge", b'{"amount": 4200}')
    with pytest.raises(jwt.TokenRequestMismatch):
        verifier(registry).verify(token, "refund", BODY)
    # The length prefix keeps operation/body boundaries apart.
    assert jwt.request_hash("ab", b"c") != jwt.request_hash("a", b"bc")


def test_malformed_tokens_are_refused(registry: KeyRegistry) -> None:
    for bad in ("", "a.b", "a.b.c", "x" * 20000, "eyJhbGciOiJub25lIn0.W10.x"):
        with pytest.raises(jwt.MalformedToken):
            verifier(registry).verify(bad, "charge", BODY)


def test_registry_round_trip(registry: KeyRegistry, tmp_path: Path) -> None:
    registry.save(tmp_path / "keys")
    loaded = KeyRegistry.load(tmp_path / "keys")
    assert {e.name for e in loaded} == {e.name for e in registry}
    assert loaded.roles("user-api") == {"user-info", "payment"}
    assert loaded.get("sts") is not None and loaded.get("sts").sts  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError):
        KeyRegistry().add("../evil", ServiceIdentity.generate("x").public_key)


def test_identity_save_load(tmp_path: Path) -> None:
    me = ServiceIdentity.generate("orders", "ES256")
    me.save(tmp_path / "orders.key")
    assert_owner_only(tmp_path / "orders.key")
    again = ServiceIdentity.load("orders", tmp_path / "orders.key")
    assert again.algorithm == "ES256"
    assert "PRIVATE" not in repr(again)


def test_request_context_outside_a_request() -> None:
    with pytest.raises(jwt.NoRequestContext):
        jwt.request_context()


# --- the token authorizer, sans-IO ---------------------------------------------------------


def test_token_authorizer_drives_the_transport_secured_connection(
        ids: dict[str, ServiceIdentity], registry: KeyRegistry) -> None:
    """Tokens in the call metadata, checked by the Authorizer wrapper inside
    the sans-IO core: no sockets, no event loop."""
    from rolewire.protocol import CallFailed, CallReceived, CallRefused, ReplyReceived
    from rolewire.protocol.transport_secured import TransportSecuredConnection

    authorizer = jwt.TokenAuthorizer(payment_service(), verifier(registry))
    server = TransportSecuredConnection.server(authorizer, now=0.0, peer="10.0.0.1:5")
    client = TransportSecuredConnection.client(now=0.0)
    client.receive_data(server.data_to_send(0.0), 0.0)
    client.events()
    server.events()
    signer = TokenSigner(ids["user-api"])

    def send(operation: str, body: bytes, token: str | None) -> tuple[list, list]:
        meta = {jwt.TOKEN_KEY: token.encode()} if token is not None else None
        client.call(operation, body, metadata=meta)
        server.receive_data(client.data_to_send(0.0), 0.0)
        at_server = server.events()
        for event in at_server:
            if isinstance(event, CallReceived):
                server.reply(event.call_id, event.operation.name, b"ok", 0.0)
        client.receive_data(server.data_to_send(0.0), 0.0)
        return at_server, client.events()

    token = signer.sign("payment", "charge", BODY)
    [received], [reply] = send("charge", BODY, token)
    assert isinstance(received, CallReceived) and isinstance(reply, ReplyReceived)
    assert received.context.peer_roles == {"user-info", "payment"}
    assert received.context.signed.caller == "user-api"  # what request_context() returns
    assert jwt.TOKEN_KEY not in received.context.metadata
    # The same token again: replayed.
    [refused], [failed] = send("charge", BODY, token)
    assert isinstance(refused, CallRefused) and isinstance(failed, CallFailed)
    assert isinstance(failed.error, Forbidden) and "already used" in str(failed.error)
    assert token not in str(failed.error)
    # A token for another body, none at all, none for an operation that does
    # not exist (the token is checked first: nothing tells a caller without
    # one which operations exist).
    for operation, body, tok, why in (
            ("charge", b"other", signer.sign("payment", "charge", BODY), "another request"),
            ("charge", BODY, None, "no token"),
            ("no-such-op", BODY, None, "no token")):
        [refused], [failed] = send(operation, body, tok)
        assert isinstance(refused, CallRefused) and why in str(failed.error)
    assert authorizer.stats.refused == 4
    # A valid token whose caller lacks the role: refused by the service.
    [refused], [failed] = send("refund", b"", signer.sign("payment", "refund", b""))
    assert isinstance(failed.error, Forbidden) and "token" not in str(failed.error)
    assert authorizer.stats.refused == 4  # roles, not the credential


# --- end to end ---------------------------------------------------------------------------


def payment_service() -> Service:
    svc = Service("payment")

    @svc.operation("charge", roles=["payment"])
    def charge(call: CallContext, body: bytes) -> bytes:
        request = jwt.request_context()
        return json.dumps({"caller": request.caller, "roles": sorted(call.peer_roles),
                           "body": body.decode()}).encode()

    @svc.operation("refund", roles=["admin"])
    def refund(call: CallContext, body: bytes) -> bytes:
        return b"refunded"

    return svc


class FixedTokenSigner(TokenSigner):
    """Signs once and replays that token forever (an attacker's replay)."""

    def sign(self, *args: Any, **kwargs: Any) -> str:
        if not hasattr(self, "_token"):
            self._token = super().sign(*args, **kwargs)
        return self._token


def test_services_end_to_end(ids: dict[str, ServiceIdentity], registry: KeyRegistry,
                             ca: pki.Issued) -> None:
    cert = pki.issue(ca, "payment")

    async def main() -> None:
        async with jwt.serve(payment_service(), cert=cert, registry=registry) as server:
            async with jwt.connect("127.0.0.1", server.port, identity=ids["user-api"],
                                   audience="payment", ca=ca, registry=registry) as client:
                assert client.peer_roles == {"payment"}
                reply = json.loads(await client.call("charge", BODY))
                assert reply == {"caller": "user-api", "roles": ["payment", "user-info"],
                                 "body": BODY.decode()}
                with pytest.raises(Forbidden):
                    await client.call("refund")
                many = await asyncio.gather(*(client.call("charge", b"%d" % i)
                                              for i in range(20)))
                assert [json.loads(m)["body"] for m in many] == [str(i) for i in range(20)]
            async with jwt.connect("127.0.0.1", server.port, identity=ids["suggestion"],
                                   audience="payment", ca=ca) as breached:
                with pytest.raises(Forbidden):
                    await breached.call("charge", BODY)
            # Forged signature and replay, over the wire: refused, named, no secrets.
            forged = ServiceIdentity("user-api", ids["suggestion"].private_key)
            async with jwt.connect("127.0.0.1", server.port, identity=forged,
                                   audience="payment", ca=ca) as attacker:
                with pytest.raises(Forbidden, match="TokenSignatureInvalid|signature"):
                    await attacker.call("charge", BODY)
            replayer = FixedTokenSigner(ids["user-api"])
            async with jwt.connect("127.0.0.1", server.port, identity=ids["user-api"],
                                   audience="payment", ca=ca, signer=replayer) as client:
                await client.call("charge", BODY)
                with pytest.raises(Forbidden, match="already used") as info:
                    await client.call("charge", BODY)
                assert replayer._token not in str(info.value)
            assert server.stats.refused == 2

    run(main())


def test_async_notification_handlers_see_the_verified_request(
        ids: dict[str, ServiceIdentity], registry: KeyRegistry, ca: pki.Issued) -> None:
    svc = Service("payment")
    seen: list[str] = []

    @svc.operation("audit", roles=["payment"])
    async def audit(call: CallContext, body: bytes) -> None:
        await asyncio.sleep(0)
        seen.append(jwt.request_context().caller)

    @svc.operation("count", roles=["payment"])
    def count(call: CallContext, body: bytes) -> bytes:
        return str(len(seen)).encode()

    async def main() -> None:
        async with jwt.serve(svc, cert=pki.issue(ca, "payment"), registry=registry) as server, \
                jwt.connect("127.0.0.1", server.port, identity=ids["user-api"],
                            audience="payment", ca=ca) as client:
            await client.send_many("audit", [b"a", b"b"])
            await client.notify("audit", b"c")
            assert await client.call("count") == b"3"  # notifications run in order, inline

    run(main())
    assert seen == ["user-api"] * 3


def test_transport_authenticates_the_audience(ids: dict[str, ServiceIdentity],
                                              registry: KeyRegistry, ca: pki.Issued) -> None:
    impostor = pki.issue(ca, "suggestion")  # a valid certificate, wrong name

    async def main() -> None:
        async with jwt.serve(payment_service(), cert=impostor, registry=registry,
                             audience="payment") as server:
            with pytest.raises(jwt.TLSCertificateRejected):
                await jwt.connect("127.0.0.1", server.port, identity=ids["user-api"],
                                  audience="payment", ca=ca)

    run(main())


# --- end-user context ---------------------------------------------------------------------


def chain_services(ids: dict[str, ServiceIdentity], registry: KeyRegistry, ca: pki.Issued,
                   sts: jwt.SecurityTokenService, mode: str,
                   inventory_port: list[int]) -> tuple[Service, Service]:
    """orders.place (role user-info... here: callers with any role) calls
    inventory.reserve, passing the user context per ``mode``: "forward"
    (unchanged), "exchange" (new token per hop), "leak" (forward a per-hop
    token unchanged: must be refused by inventory)."""
    orders = Service("orders")

    @orders.operation("place", roles=["user-info", "payment"])
    async def place(call: CallContext, body: bytes) -> bytes:
        user = jwt.request_context().user
        assert user is not None
        token = user.token
        if mode == "exchange":
            token = sts.exchange(user.token, actor="orders", audience="inventory")
        async with jwt.connect("127.0.0.1", inventory_port[0], identity=ids["orders"],
                               audience="inventory", ca=ca) as inv:
            return await inv.call("reserve", body, user_token=token)

    inventory = Service("inventory")

    @inventory.operation("reserve", roles=["orders"])
    def reserve(call: CallContext, body: bytes) -> bytes:
        user = jwt.request_context().user
        assert user is not None
        return json.dumps({"user": user.user, "scope": sorted(user.scope),
                           "actors": list(user.actors), "audience": user.audience}).encode()

    return orders, inventory


def run_chain(ids: dict[str, ServiceIdentity], registry: KeyRegistry, ca: pki.Issued,
              sts: jwt.SecurityTokenService, mode: str, user_token: str,
              per_hop: bool) -> dict[str, Any]:
    ports: list[int] = []
    orders, inventory = chain_services(ids, registry, ca, sts, mode, ports)

    async def main() -> dict[str, Any]:
        async with jwt.serve(inventory, cert=pki.issue(ca, "inventory"), registry=registry,
                             require_user=True, require_user_audience=per_hop) as inv, \
                jwt.serve(orders, cert=pki.issue(ca, "orders"), registry=registry,
                          require_user=True, require_user_audience=per_hop) as srv:
            ports.append(inv.port)
            async with jwt.connect("127.0.0.1", srv.port, identity=ids["user-api"],
                                   audience="orders", ca=ca) as client:
                # Without a user token the services refuse.
                with pytest.raises(Forbidden, match="end-user"):
                    await client.call("place", b"book")
                seen: dict[str, Any] = json.loads(
                    await client.call("place", b"book", user_token=user_token))
                return seen

    result: dict[str, Any] = run(main())
    return result


def test_user_context_forwarded_unchanged(ids: dict[str, ServiceIdentity],
                                          registry: KeyRegistry, ca: pki.Issued,
                                          sts: jwt.SecurityTokenService) -> None:
    token = sts.issue("alice", ["buy", "read"])
    seen = run_chain(ids, registry, ca, sts, "forward", token, per_hop=False)
    assert seen == {"user": "alice", "scope": ["buy", "read"], "actors": [], "audience": None}


def test_user_context_exchanged_per_hop(ids: dict[str, ServiceIdentity],
                                        registry: KeyRegistry, ca: pki.Issued,
                                        sts: jwt.SecurityTokenService) -> None:
    # The gateway (user-api) holds a token for itself and exchanges it for orders.
    mine = sts.issue("bob", ["buy"], audience="user-api")
    for_orders = sts.exchange(mine, actor="user-api", audience="orders")
    before = sts.exchanges
    seen = run_chain(ids, registry, ca, sts, "exchange", for_orders, per_hop=True)
    assert seen == {"user": "bob", "scope": ["buy"], "actors": ["orders", "user-api"],
                    "audience": "inventory"}
    assert sts.exchanges == before + 1  # orders exchanged once for inventory


def test_per_hop_receivers_refuse_forwarded_or_misbound_tokens(
        ids: dict[str, ServiceIdentity], registry: KeyRegistry, ca: pki.Issued,
        sts: jwt.SecurityTokenService) -> None:
    mine = sts.issue("bob", ["buy"], audience="user-api")
    for_orders = sts.exchange(mine, actor="user-api", audience="orders")
    # orders forwards its own (orders-bound) token to inventory: refused there.
    with pytest.raises(RemoteCallError):
        run_chain(ids, registry, ca, sts, "leak", for_orders, per_hop=True)
    # An unbound (forwardable) token is refused by per-hop receivers.
    with pytest.raises(Forbidden, match="exchanged for it"):
        run_chain(ids, registry, ca, sts, "exchange", sts.issue("bob"), per_hop=True)


def test_user_token_checks(ids: dict[str, ServiceIdentity], registry: KeyRegistry,
                           sts: jwt.SecurityTokenService) -> None:
    inventory = TokenVerifier("inventory", registry, require_user_audience=True)
    mine = sts.issue("carol", ["buy", "read"], audience="user-api")
    for_orders = sts.exchange(mine, actor="user-api", audience="orders")
    for_inventory = sts.exchange(for_orders, actor="orders", audience="inventory")
    ok = inventory.verify_user_token(for_inventory, caller="orders")
    assert ok.actors == ("orders", "user-api")
    # Bound to another service: refused even where unbound tokens are fine.
    lenient = TokenVerifier("inventory", registry)
    with pytest.raises(jwt.UserTokenRejected, match="another audience"):
        lenient.verify_user_token(sts.issue("carol", audience="orders"), caller="user-api")
    with pytest.raises(jwt.UserTokenRejected, match="another audience"):
        inventory.verify_user_token(for_orders, caller="user-api")
    # Stolen by another service: the act chain names orders, not suggestion.
    with pytest.raises(jwt.UserTokenRejected, match="another service"):
        inventory.verify_user_token(for_inventory, caller="suggestion")
    # A token signed by a service key instead of the STS.
    fake = pyjwt.encode({"iss": "orders", "sub": "carol", "iat": int(time.time()),
                         "exp": int(time.time()) + 60}, ids["orders"].private_key,
                        algorithm=ids["orders"].algorithm)
    with pytest.raises(jwt.UserTokenRejected):
        inventory.verify_user_token(fake, caller="orders")
    # A long user session is fine (the lifetime bound is for service tokens).
    session = jwt.SecurityTokenService(sts.identity, lifetime=8 * 3600)
    assert TokenVerifier("inventory", registry).verify_user_token(
        session.issue("carol"), caller="orders").user == "carol"
    # Expired user token.
    old = jwt.SecurityTokenService(sts.identity, clock=lambda: time.time() - 1000)
    with pytest.raises(jwt.UserTokenRejected, match="expired"):
        TokenVerifier("inventory", registry).verify_user_token(old.issue("carol"),
                                                               caller="orders")
    # The STS refuses to widen scope or to exchange a token bound elsewhere.
    with pytest.raises(jwt.UserTokenRejected, match="widen"):
        sts.exchange(for_orders, actor="orders", audience="inventory", scope=["admin"])
    with pytest.raises(jwt.UserTokenRejected, match="bound to another"):
        sts.exchange(for_orders, actor="suggestion", audience="inventory")
    narrowed = sts.exchange(for_orders, actor="orders", audience="inventory", scope=["read"])
    assert inventory.verify_user_token(narrowed, caller="orders").scope == {"read"}


def test_sts_exchange_over_the_network(ids: dict[str, ServiceIdentity],
                                       registry: KeyRegistry, ca: pki.Issued,
                                       sts: jwt.SecurityTokenService) -> None:
    mine = sts.issue("dave", ["buy"], audience="orders")

    async def main() -> None:
        async with jwt.serve(sts.as_service(), cert=pki.issue(ca, "sts"),
                             registry=registry) as server:
            async with jwt.connect("127.0.0.1", server.port, identity=ids["orders"],
                                   audience="sts", ca=ca) as client:
                token = await jwt.exchange_token(client, mine, "inventory")
                user = TokenVerifier("inventory", registry).verify_user_token(
                    token, caller="orders")
                assert user.actors == ("orders",) and user.user == "dave"
            # suggestion cannot exchange a token bound to orders in its own name.
            async with jwt.connect("127.0.0.1", server.port, identity=ids["suggestion"],
                                   audience="sts", ca=ca) as thief:
                with pytest.raises(RemoteCallError, match="UserTokenRejected"):
                    await jwt.exchange_token(thief, mine, "inventory")

    run(main())
