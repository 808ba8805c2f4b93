"""End-user context (issue 18 §1): token verification against JWKS issuers,
both nesting variants, propagation through a chain of real rolewire
services, operation requirements, the per-connection cache, and every way
to forge, replay, strip or swap a context."""

from __future__ import annotations

import asyncio
import json
import os

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from rolewire.aio import connect, serve
from rolewire.callstate import ConnectionState
from rolewire.enduser import (
    EndUserAudienceMismatch,
    EndUserClaimMissing,
    EndUserContextMismatch,
    EndUserRequired,
    EndUserScopeWidened,
    EndUserTokenExpired,
    EndUserTokenInvalid,
    EndUserTokenNotYetValid,
    EndUserUnknownIssuer,
    EndUserVerifier,
    Hop,
    Issuer,
    TokenService,
    acting_for,
    current_end_user,
    propagation_metadata,
    require_claim,
    token_metadata,
)
from rolewire.errors import ConfigurationError, Forbidden
from rolewire.handshake import HandshakeConfig
from rolewire.roles.key import KeyRole
from rolewire.rpc import CallMessage, MessageType
from rolewire.services import UNRESTRICTED, Service


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["EdDSA", "ES256", "RS256"])
def idp(request):
    return TokenService.generate("https://idp.test", request.param, clock=Clock())


def verifier_for(idp, audience="payment", **kw):
    return EndUserVerifier(audience, [idp.issuer_config()], clock=idp.clock, **kw)


def test_valid_token_each_algorithm(idp):
    token = idp.issue("alice", audience="payment", scope=["orders:write"])
    user = verifier_for(idp).verify(token)
    assert (user.subject, user.issuer, user.exchanged) == ("alice", "https://idp.test", False)
    assert user.has("scope", "orders:write") and not user.has("scope", "admin")
    assert user.chain == () and len(user.digest) == 32


def test_jwks_file(tmp_path, idp):
    idp.save_jwks(tmp_path / "jwks.json")
    issuer = Issuer.from_jwks_file("https://idp.test", tmp_path / "jwks.json")
    v = EndUserVerifier("payment", [issuer], clock=idp.clock)
    assert v.verify(idp.issue("bob", audience="payment")).subject == "bob"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigurationError):
        Issuer.from_jwks_file("x", tmp_path / "bad.json")


def test_forged_token_signed_by_another_key(idp):
    forger = TokenService.generate("https://idp.test", idp.algorithm, kid=idp.kid,
                                   clock=idp.clock)
    with pytest.raises(EndUserTokenInvalid):
        verifier_for(idp).verify(forger.issue("alice", audience="payment"))


def test_altered_claims_fail_the_signature(idp):
    token = idp.issue("alice", audience="payment")
    head, body, sig = token.split(".")
    claims = json.loads(pyjwt.utils.base64url_decode(body))
    claims["sub"] = "mallory"
    forged_body = pyjwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    with pytest.raises(EndUserTokenInvalid):
        verifier_for(idp).verify(f"{head}.{forged_body}.{sig}")


def test_algorithm_confusion_and_none_refused():
    idp = TokenService.generate("https://idp.test", "EdDSA", clock=Clock())
    v = verifier_for(idp)
    unsigned = pyjwt.encode({"iss": idp.issuer, "sub": "a", "aud": "payment",
                             "exp": idp.clock() + 60}, None, algorithm="none",
                            headers={"kid": idp.kid})
    hs = pyjwt.encode({"iss": idp.issuer, "sub": "a", "aud": "payment",
                       "exp": idp.clock() + 60}, b"k" * 32, algorithm="HS256",
                      headers={"kid": idp.kid})
    for token in (unsigned, hs, "not.a.jwt", "x" * 9000, ""):
        with pytest.raises(EndUserTokenInvalid):
            v.verify(token)


def test_expired_not_yet_valid_and_clock_skew(idp):
    v = verifier_for(idp, clock_skew=30)
    token = idp.issue("alice", audience="payment", lifetime=60)
    idp.clock.now += 60 + 29
    assert v.verify(token).subject == "alice"  # within the skew
    idp.clock.now += 2
    with pytest.raises(EndUserTokenExpired):
        v.verify(token)
    future = idp.issue("alice", audience="payment", nbf=int(idp.clock.now) + 120)
    with pytest.raises(EndUserTokenNotYetValid):
        v.verify(future)
    idp.clock.now += 100
    assert v.verify(future).subject == "alice"  # nbf - now = 20 < skew


def test_wrong_audience_and_wrong_issuer(idp):
    v = verifier_for(idp)
    with pytest.raises(EndUserAudienceMismatch):
        v.verify(idp.issue("alice", audience="shipping"))
    assert verifier_for(idp, accept_audiences=["webshop"]).verify(
        idp.issue("alice", audience="webshop")).subject == "alice"
    other = TokenService.generate("https://other.test", idp.algorithm, clock=idp.clock)
    with pytest.raises(EndUserUnknownIssuer):
        v.verify(other.issue("alice", audience="payment"))
    missing_aud = pyjwt.encode({"iss": idp.issuer, "sub": "a", "exp": idp.clock() + 60},
                               idp.key, algorithm=idp.algorithm, headers={"kid": idp.kid})
    with pytest.raises(EndUserTokenInvalid):
        v.verify(missing_aud)


def test_per_hop_exchange_variant_b():
    sts = TokenService.generate("https://sts.test", clock=Clock())
    first = sts.issue("alice", audience="sts", scope=["orders:write", "profile"])
    at_sts = EndUserVerifier("sts", [sts.issuer_config()], clock=sts.clock)
    at_sts_for_hop = at_sts
    to_payment = sts.exchange(first, actor="user-api", actor_roles=["payment"],
                              audience="payment", verifier=at_sts)
    payment = EndUserVerifier("payment", [sts.issuer_config()], clock=sts.clock,
                              require_exchanged=True)
    user = payment.verify(to_payment, peer_roles=frozenset({"payment"}))
    assert user.exchanged and user.path == ("user-api",) and user.chain[0].verified
    # the next hop: payment exchanges what it got for shipping
    to_shipping = sts.exchange(to_payment, actor="payment", actor_roles=["approval"],
                               audience="shipping", verifier=at_sts_for_hop,
                               scope=["orders:write"])
    shipping = EndUserVerifier("shipping", [sts.issuer_config()], clock=sts.clock)
    hop2 = shipping.verify(to_shipping, peer_roles=frozenset({"approval", "user-info"}))
    assert hop2.path == ("payment", "user-api") and hop2.scope == {"orders:write"}
    assert sts.exchanges == 2
    # replayed by a caller that did not prove the roles the STS saw
    with pytest.raises(EndUserContextMismatch):
        shipping.verify(to_shipping, peer_roles=frozenset({"user-info"}))
    # replayed to another audience
    with pytest.raises(EndUserAudienceMismatch):
        payment_forwarding = EndUserVerifier("warehouse", [sts.issuer_config()],
                                             clock=sts.clock, accept_audiences=["shipping"])
        payment_forwarding.verify(to_shipping, peer_roles=frozenset({"approval"}))
    # a forwarded token where only exchanged ones are accepted
    with pytest.raises(EndUserContextMismatch):
        payment.verify(sts.issue("alice", audience="payment"))
    with pytest.raises(EndUserScopeWidened):
        sts.exchange(to_shipping, actor="shipping", actor_roles=[], audience="warehouse",
                     verifier=at_sts, scope=["orders:write", "admin"])
    with pytest.raises(EndUserContextMismatch):  # only the bound service may exchange it
        sts.exchange(to_shipping, actor="suggestion", actor_roles=[], audience="warehouse",
                     verifier=at_sts)


def test_cache_per_connection_until_expiry(idp):
    v = verifier_for(idp)
    token = idp.issue("alice", audience="payment", lifetime=60)
    cache: dict = {}
    for _ in range(5):
        v.verify(token, cache=cache)
    assert v.verifications == 1
    other_connection: dict = {}
    v.verify(token, cache=other_connection)
    assert v.verifications == 2
    idp.clock.now += 60 + v.clock_skew + 1
    with pytest.raises(EndUserTokenExpired):
        v.verify(token, cache=cache)  # a cached entry dies with its token
    # bounded
    for i in range(100):
        v.verify(idp.issue(f"u{i}", audience="payment"), cache=cache)
    assert len(cache) <= 64


def test_requirements():
    user_req = require_claim("scope", "orders:write")
    with pytest.raises(EndUserRequired):
        user_req.check(None)
    idp = TokenService.generate("https://idp.test", clock=Clock())
    v = verifier_for(idp)
    with pytest.raises(EndUserClaimMissing):
        user_req.check(v.verify(idp.issue("a", audience="payment", scope=["read"])))
    user_req.check(v.verify(idp.issue("a", audience="payment", scope=["orders:write"])))
    require_claim().check(v.verify(idp.issue("a", audience="payment")))
    require_claim(tier="gold").check(v.verify(idp.issue("a", audience="payment", tier="gold")))
    with pytest.raises(ConfigurationError):
        Service("x").add("op", lambda c, b: b"", roles=UNRESTRICTED, user="scope")  # type: ignore


def test_propagation_metadata_records_each_hop():
    idp = TokenService.generate("https://idp.test", clock=Clock())
    v = verifier_for(idp, audience="b", accept_audiences=["shop"])
    token = idp.issue("alice", audience="shop")
    assert propagation_metadata({}) == {}
    first = v.verify(token)
    with acting_for(first, "a"):
        assert current_end_user() is first
        meta = propagation_metadata({"x": b"1"})
    assert current_end_user() is None
    assert json.loads(meta["rw-act"]) == {"sub": "a"} and meta["x"] == b"1"
    second = v.verify(token, peer_roles=frozenset({"ra"}), act=meta["rw-act"])
    assert second.chain == (Hop("a", frozenset({"ra"}), False),)
    with acting_for(second, "b"):
        meta2 = propagation_metadata({})
    assert json.loads(meta2["rw-act"]) == {"sub": "b", "act": {"sub": "a"}}
    # explicit rw-user wins (e.g. an exchanged token for the next hop)
    with acting_for(second, "b"):
        assert propagation_metadata(token_metadata("t.t.t")) == token_metadata("t.t.t")
    bad = dict(token_metadata(token))
    bad["rw-act"] = b"[1]"
    with pytest.raises(EndUserContextMismatch):
        v.from_metadata(bad)
    with pytest.raises(EndUserContextMismatch):
        v.from_metadata({"rw-act": b'{"sub":"a"}'})
    deep = {"sub": "s0"}
    for i in range(1, 20):
        deep = {"sub": f"s{i}", "act": deep}
    with pytest.raises(EndUserContextMismatch):
        v.verify(token, act=json.dumps(deep).encode())


def test_dispatch_refuses_with_typed_reason():
    idp = TokenService.generate("https://idp.test", clock=Clock())
    svc = Service("payment", end_users=verifier_for(idp))

    @svc.operation("charge", roles=UNRESTRICTED, user=require_claim("scope", "orders:write"))
    def charge(call, body):
        return call.end_user.subject.encode()

    def send(meta):
        return asyncio.run(svc.dispatch(CallMessage(MessageType.REQUEST, 1, "charge", b"", meta),
                                        frozenset(), "peer", state=ConnectionState()))

    ok = send(token_metadata(idp.issue("alice", audience="payment", scope=["orders:write"])))
    assert ok.type is MessageType.RESPONSE and ok.body == b"alice"
    for meta, reason in (({}, "requires an end-user context"),
                         (token_metadata(idp.issue("a", audience="payment")), "lacks"),
                         (token_metadata(idp.issue("a", audience="x", scope=["orders:write"])),
                          "another audience"),
                         ({"rw-user": b"\xff"}, "not ASCII")):
        reply = send(meta)
        assert reply.type is MessageType.ERROR and reason in reply.body.decode()


# --- a real chain: customer -> front -> middle -> back ------------------------------

K_FRONT, K_MIDDLE, K_BACK = os.urandom(32), os.urandom(32), os.urandom(32)


def test_chain_of_services_propagates_and_denies_stripping_and_swapping():
    idp = TokenService.generate("https://idp.test", clock=Clock(0))
    idp.clock.now = __import__("time").time()
    issuers = [idp.issuer_config()]
    front_cfg = HandshakeConfig(roles=[KeyRole("front", K_FRONT), KeyRole("middle", K_MIDDLE)],
                                allow_anonymous=True)
    middle_cfg = HandshakeConfig(roles=[KeyRole("middle", K_MIDDLE), KeyRole("back", K_BACK)])
    back_cfg = HandshakeConfig(roles=[KeyRole("back", K_BACK)])
    front = Service("front", end_users=EndUserVerifier("front", issuers,
                                                       accept_audiences=["shop"]))
    middle = Service("middle", end_users=EndUserVerifier("middle", issuers,
                                                         accept_audiences=["shop"]))
    back = Service("back", end_users=EndUserVerifier("back", issuers, accept_audiences=["shop"]))
    channels: dict[str, object] = {}
    seen: list = []

    @front.operation("buy", roles=UNRESTRICTED, user=require_claim("scope", "orders:write"))
    async def buy(call, body):
        return await channels["middle"].call("pay", body)

    @middle.operation("pay", roles=["middle"], user=require_claim("scope", "orders:write"))
    async def pay(call, body):
        task = asyncio.create_task(channels["back"].call("ship", body))  # context follows
        return await task

    @middle.operation("pay_stripped", roles=["middle"])
    async def pay_stripped(call, body):
        # a malicious intermediary drops the context
        try:
            with acting_for(None, "middle"):
                return await channels["back"].call("ship", body)
        except Forbidden as exc:
            return f"denied: {exc}".encode()

    @middle.operation("pay_swapped", roles=["middle"])
    async def pay_swapped(call, body):
        # ... or puts a token it saw earlier (another customer's) in its place
        try:
            return await channels["back"].call("ship", body,
                                               metadata=token_metadata(body.decode()))
        except Forbidden as exc:
            return f"denied: {exc}".encode()

    @back.operation("ship", roles=["back"], user=require_claim("scope", "orders:write"))
    def ship(call, body):
        seen.append(call.end_user)
        return call.end_user.subject.encode()

    async def main():
        async with serve(back, back_cfg, port=0) as b_srv, \
                serve(middle, middle_cfg, port=0) as m_srv, \
                serve(front, front_cfg, port=0) as f_srv:
            channels["back"] = await connect("127.0.0.1", b_srv.port, middle_cfg)
            channels["middle"] = await connect("127.0.0.1", m_srv.port, front_cfg)
            alice = idp.issue("alice", audience="shop", scope=["orders:write"])
            async with connect("127.0.0.1", f_srv.port,
                               HandshakeConfig(roles=[], allow_anonymous=True)) as customer:
                for _ in range(3):
                    assert await customer.call("buy", b"", metadata=token_metadata(alice)) \
                        == b"alice"
                with pytest.raises(Forbidden, match="requires an end-user context"):
                    await customer.call("buy", b"")
                reader_only = idp.issue("bob", audience="shop", scope=["read"])
                with pytest.raises(Forbidden, match="lacks scope=orders:write"):
                    await customer.call("buy", b"", metadata=token_metadata(reader_only))
                forged = TokenService.generate("https://idp.test", kid=idp.kid).issue(
                    "carol", audience="shop", scope=["orders:write"])
                with pytest.raises(Forbidden, match="signature"):
                    await customer.call("buy", b"", metadata=token_metadata(forged))
            middle_ch = channels["middle"]
            assert b"denied: call refused: this operation requires an end-user" \
                in await middle_ch.call("pay_stripped", b"")
            # swapping in another audience's token is refused; a token of the
            # same audience is the forwarded variant's known limit (docs)
            elsewhere = idp.issue("dave", audience="other-app", scope=["orders:write"])
            assert b"another audience" in await middle_ch.call("pay_swapped",
                                                                elsewhere.encode())
            for ch in channels.values():
                await ch.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert seen[0].subject == "alice"
    assert seen[0].path == ("middle", "front")
    assert seen[0].chain[0].roles == {"back"}  # what middle proved to back
    assert not seen[0].chain[1].verified
    # alice's token verified once per connection although three calls carried
    # it; the swapped token once more
    assert len(seen) == 3 and back.end_users.verifications == 2


def test_exchanged_token_bound_to_caller_over_aio():
    sts = TokenService.generate("https://sts.test")
    issuers = [sts.issuer_config()]
    cfg = HandshakeConfig(roles=[KeyRole("back", K_BACK)])
    back = Service("back", end_users=EndUserVerifier("back", issuers, require_exchanged=True))

    @back.operation("ship", roles=["back"], user=require_claim())
    def ship(call, body):
        return ",".join(call.end_user.path).encode()

    at_sts = EndUserVerifier("sts", issuers)
    token = sts.issue("alice", audience="sts")
    for_back = sts.exchange(token, actor="middle", actor_roles=["back"], audience="back",
                            verifier=at_sts)
    for_other = sts.exchange(token, actor="middle", actor_roles=["shipping"],
                             audience="back", verifier=at_sts)

    async def main():
        async with serve(back, cfg, port=0) as srv, connect("127.0.0.1", srv.port, cfg) as ch:
            assert await ch.call("ship", b"", metadata=token_metadata(for_back)) == b"middle"
            with pytest.raises(Forbidden, match="exchanged for another caller"):
                await ch.call("ship", b"", metadata=token_metadata(for_other))
            with pytest.raises(Forbidden, match="only end-user tokens exchanged"):
                await ch.call("ship", b"", metadata=token_metadata(
                    sts.issue("alice", audience="back")))

    asyncio.run(asyncio.wait_for(main(), 30))


def test_unused_key_types_refused():
    from cryptography.hazmat.primitives.asymmetric import ec
    with pytest.raises(ConfigurationError):
        TokenService("x", ec.generate_private_key(ec.SECP384R1()))
    assert TokenService("x", ed25519.Ed25519PrivateKey.generate()).algorithm == "EdDSA"
