"""``rolewire demo webshop``: the paper's evaluation scene (section 6).

Five asyncio services on loopback ports — user API, suggestion, payment,
shipping, warehouse — secured by four roles (the paper's Figure 4):

=================  ===========  ==========================================
role               secret kind  who holds it
=================  ===========  ==========================================
``user-info``      key          user API, suggestion, shipping
``payment``        certificate  user API, payment (each its own certificate
                                from the payment-role CA)
``approval``       password     payment, shipping
``shipping``       key          shipping, warehouse
=================  ===========  ==========================================

Every secret is generated in a temporary directory, each service reads its
own TOML config (rolewire.config) from there, then one purchase runs end to
end: user API → payment (``payment``) → shipping (``approval``) → warehouse
(``shipping``), with shipping asking the user API for the address
(``user-info``) and the user API asking suggestion for recommendations
(``user-info``).

The customer's identity travels with the purchase (issue 18, end-user
context): an identity provider signs alice's token (Ed25519, JWKS file in the
temporary directory); the customer sends it in the call metadata, and before
every hop a service exchanges the token it received for one bound to the
next service (the thesis's per-hop variant, RFC 8693 ``act`` chain), so
payment charges, shipping ships and the warehouse picks *for alice*, each
knowing the path the order took.

Then the demo plays an attacker who took over the suggestion service: it has
suggestion's secrets (the ``user-info`` key) and nothing else, and tries to
call payment, shipping and warehouse; then, as a ``user-info`` holder, to
read a customer's profile from the user API with a forged token for another
customer and with alice's context it captured (exchanged for suggestion, so
bound to it). Every attempt must be denied — by the handshake (no shared
role) or by the callee's authorization (Forbidden).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolewire import pki
from rolewire.config import ServiceConfig, load_config
from rolewire.enduser import (
    EndUserVerifier,
    Issuer,
    TokenService,
    current_end_user,
    require_claim,
    token_metadata,
)
from rolewire.errors import Forbidden, HandshakeError, RolewireError
from rolewire.handshake import HandshakeConfig
from rolewire.roles import PasswordRateLimiter
from rolewire.services import CallContext, Service

__all__ = ["SERVICES", "WebshopReport", "run", "write_secrets"]

SERVICES = ("user-api", "suggestion", "payment", "shipping", "warehouse")
#: The identity provider / STS of the shop, and the audience of the tokens
#: it issues to customers (accepted by the user API only).
IDP = "https://idp.webshop.test"
SHOP_AUDIENCE = "webshop"
APPROVAL_ENV = "ROLEWIRE_DEMO_APPROVAL_PASSWORD"

# Which roles each service holds, as TOML [[role]] tables (paths relative to
# the service's config file in <tmp>/<service>/service.toml).
_ROLES = {
    "user-api": [
        ("user-info", "key", {"key_file": "../secrets/user-info.key"}),
        ("payment", "certificate", {"anchor": "../pki/payment-ca.pem",
                                    "cert": "../pki/user-api.pem",
                                    "key": "../pki/user-api.key"}),
    ],
    "suggestion": [
        ("user-info", "key", {"key_file": "../secrets/user-info.key"}),
    ],
    "payment": [
        ("payment", "certificate", {"anchor": "../pki/payment-ca.pem",
                                    "cert": "../pki/payment.pem",
                                    "key": "../pki/payment.key"}),
        ("approval", "password", {"password_env": APPROVAL_ENV}),
    ],
    "shipping": [
        ("user-info", "key", {"key_file": "../secrets/user-info.key"}),
        ("approval", "password", {"password_env": APPROVAL_ENV}),
        ("shipping", "key", {"key_file": "../secrets/shipping.key"}),
    ],
    "warehouse": [
        ("shipping", "key", {"key_file": "../secrets/shipping.key"}),
    ],
}

# Who may call what (the [access] table of each config).
_ACCESS: dict[str, dict[str, str | list[str]]] = {
    "user-api": {"purchase": "unrestricted", "profile": ["user-info"]},
    "suggestion": {"suggest": ["user-info"]},
    "payment": {"charge": ["payment"]},
    "shipping": {"ship": ["approval"], "track": ["user-info"]},
    "warehouse": {"pick": ["shipping"]},
}


def write_secrets(base: Path) -> dict[str, Path]:
    """Creates throwaway secrets and one TOML config per service under
    ``base``; returns ``{service: config path}``. The approval password goes
    into the environment variable the configs name (never into a file)."""
    secrets_dir, pki_dir = base / "secrets", base / "pki"
    secrets_dir.mkdir(mode=0o700)
    pki_dir.mkdir(mode=0o700)
    for name in ("user-info", "shipping"):
        pki.write_secret_file(secrets_dir / f"{name}.key",
                              base64.b64encode(os.urandom(32)) + b"\n")
    ca = pki.create_ca("webshop payment-role CA")
    (pki_dir / "payment-ca.pem").write_bytes(ca.certificate_pem())
    for holder in ("user-api", "payment"):
        pki.issue(ca, holder).save(pki_dir / f"{holder}.pem", pki_dir / f"{holder}.key")
    os.environ[APPROVAL_ENV] = base64.b64encode(os.urandom(12)).decode()
    paths = {}
    for service in SERVICES:
        directory = base / service
        directory.mkdir()
        lines = [f'[service]\nname = "{service}"\nlisten = "127.0.0.1:0"\n']
        for name, kind, sources in _ROLES[service]:
            lines.append(f'[[role]]\nname = "{name}"\nkind = "{kind}"')
            lines.extend(f'{k} = "{v}"' for k, v in sources.items())
            lines.append("")
        lines.append("[access]")
        for op, who in _ACCESS[service].items():
            lines.append(f"{op} = {json.dumps(who)}")
        path = directory / "service.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[service] = path
    return paths


@dataclass
class CallRecord:
    caller: str
    callee: str
    operation: str
    result: str
    detail: str = ""


@dataclass
class WebshopReport:
    purchase: str = "failed"
    purchase_detail: str = ""
    calls: list[CallRecord] = field(default_factory=list)
    breach: list[dict[str, str]] = field(default_factory=list)
    #: Over NATS: what a wiretap on every subject saw ({"packets": n,
    #: "plaintext_seen": bool}); None over TCP.
    wiretap: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.purchase == "ok" and bool(self.breach) and all(
            b["result"] == "denied" for b in self.breach) and not (
            self.wiretap and self.wiretap["plaintext_seen"])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"purchase": self.purchase, "breach": self.breach}
        if self.wiretap is not None:
            out["wiretap"] = self.wiretap
        return out


class _Node:
    """One running service: its config, roles, server and outgoing channels."""

    def __init__(self, config: ServiceConfig, report: WebshopReport,
                 limiter: PasswordRateLimiter, sts: TokenService, idp: Issuer) -> None:
        self.name = config.name
        self.config = config
        self.report = report
        roles = config.load_roles()
        for role in roles:
            if hasattr(role, "limiter"):
                role.limiter = limiter
        # The user API is the shop's front door: it accepts callers without a
        # role (its `purchase` is unrestricted); everyone else requires one.
        self.handshake = HandshakeConfig(roles=roles,
                                         allow_anonymous=self.name == "user-api")
        # End users: the front door accepts the IdP's customer tokens; every
        # other service only tokens exchanged for it (bound to it, per hop).
        front = self.name == "user-api"
        self.service = Service(self.name, end_users=EndUserVerifier(
            self.name, [idp], accept_audiences=[SHOP_AUDIENCE] if front else [],
            require_exchanged=not front))
        self.sts = sts
        self.sts_check = EndUserVerifier("sts", [idp])
        self.server: Any = None
        self.port = 0
        self.channels: dict[str, Any] = {}
        self.transport: _Transport = _TCP({})

    async def call(self, peer: str, operation: str, body: bytes = b"") -> bytes:
        channel = self.channels.get(peer)
        if channel is None:
            channel = await self.transport.connect(peer, self.handshake)
            self.channels[peer] = channel
        metadata = None
        user = current_end_user()
        if user is not None:
            # Per hop: exchange the customer's token for one bound to `peer`.
            metadata = token_metadata(self.sts.exchange(
                user.token, actor=self.name, actor_roles=(), audience=peer,
                verifier=self.sts_check))
        try:
            result: bytes = await channel.call(operation, body, metadata=metadata)
        except RolewireError as exc:
            self.report.calls.append(CallRecord(self.name, peer, operation, "error",
                                                type(exc).__name__))
            raise
        self.report.calls.append(CallRecord(self.name, peer, operation, "ok"))
        return result

    async def close(self) -> None:
        for channel in self.channels.values():
            with contextlib.suppress(Exception):
                await channel.close()


class _Transport:
    """How the scene's services are reached: TCP ports, or NATS subjects."""

    name = ""

    async def serve(self, name: str, node: _Node) -> str:
        """Start ``node``'s service; returns where it listens (for the log)."""
        raise NotImplementedError

    async def connect(self, name: str, config: HandshakeConfig) -> Any:
        """A channel to the service ``name`` (``call``/``close``)."""
        raise NotImplementedError

    async def close(self) -> None: ...


class _TCP(_Transport):
    name = "tcp"

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.servers: list[Any] = []

    async def serve(self, name: str, node: _Node) -> str:
        from rolewire import aio

        server = await aio.serve(node.service, node.handshake, host="127.0.0.1", port=0)
        self.servers.append(server)
        self.ports[name] = node.port = server.port
        return f"127.0.0.1:{server.port}"

    async def connect(self, name: str, config: HandshakeConfig) -> Any:
        from rolewire import aio

        return await aio.connect("127.0.0.1", self.ports[name], config)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


class _NATS(_Transport):
    """Every service on ``webshop.<name>`` through one nats-server (started
    here unless ``url`` names one), payment with two instances in its queue
    group, and a wiretap subscribed to every subject."""

    name = "nats"

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.broker: Any = None
        self.clients: list[Any] = []
        self.instances: list[Any] = []
        self.wiretap: list[bytes] = []

    async def start(self) -> None:
        from rolewire.nats import NatsServer

        if self.url is None:
            self.broker = NatsServer().start()
            self.url = self.broker.url
        tap = await self._client()

        async def keep(msg: Any) -> None:
            self.wiretap.append(bytes(msg.data))

        await tap.subscribe(">", cb=keep)
        await tap.flush()

    async def _client(self) -> Any:
        import nats

        assert self.url is not None  # (set by start(), which runs first)
        client = await nats.connect(self.url)
        self.clients.append(client)
        return client

    async def serve(self, name: str, node: _Node) -> str:
        from rolewire.nats import serve_nats

        copies = 2 if name == "payment" else 1  # a queue group of two
        for _ in range(copies):
            self.instances.append(await serve_nats(node.service, node.handshake,
                                                   await self._client(), f"webshop.{name}"))
        return f"webshop.{name}" + (f" ({copies} instances)" if copies > 1 else "")

    async def connect(self, name: str, config: HandshakeConfig) -> Any:
        from rolewire.nats import connect_nats

        return await connect_nats(await self._client(), f"webshop.{name}", config)

    def plaintext_seen(self, needles: list[bytes]) -> bool:
        return any(needle in packet for packet in self.wiretap for needle in needles)

    async def close(self) -> None:
        for instance in self.instances:
            with contextlib.suppress(Exception):
                await instance.close()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()
        if self.broker is not None:
            self.broker.stop()


#: End-user tokens the services received, by service (the breach replays the
#: one the compromised suggestion service saw).
captured_tokens: dict[str, str] = {}


def _define_operations(nodes: dict[str, _Node]) -> None:
    user_api, suggestion, payment = nodes["user-api"], nodes["suggestion"], nodes["payment"]
    shipping, warehouse = nodes["shipping"], nodes["warehouse"]
    users = {"alice": {"address": "1 Loopback Lane, 127.0.0.1", "likes": "tea"}}
    stock = {"teapot": 3}

    # What each operation needs of the end user (None: nothing).
    wants = {"purchase": require_claim("scope", "orders:write"),
             "profile": require_claim("scope", "profile:read"),
             "charge": require_claim("scope", "orders:write"),
             "ship": require_claim("scope", "orders:write"),
             "pick": require_claim()}

    def add(node: _Node, op: str, handler: Callable[..., Any]) -> None:
        access = node.config.access[op]
        node.service.add(op, handler, roles=access, user=wants.get(op))

    def customer(ctx: CallContext, claimed: str) -> str:
        """The verified end user; an order or lookup for anyone else is refused."""
        assert ctx.end_user is not None  # the operation requires one
        if claimed != ctx.end_user.subject:
            raise PermissionError("request for another customer than the end user")
        return ctx.end_user.subject

    async def purchase(ctx: CallContext, body: bytes) -> bytes:
        order = json.loads(body)
        user = customer(ctx, order["user"])
        tips = json.loads(await user_api.call("suggestion", "suggest",
                                              json.dumps({"user": user}).encode()))
        receipt = json.loads(await user_api.call("payment", "charge", body))
        return json.dumps({"status": "ok", "receipt": receipt, "suggestions": tips}).encode()

    async def profile(ctx: CallContext, body: bytes) -> bytes:
        return json.dumps(users[customer(ctx, json.loads(body)["user"])]).encode()

    async def suggest(ctx: CallContext, body: bytes) -> bytes:
        user = json.loads(body)["user"]
        if ctx.end_user is not None:
            captured_tokens["suggestion"] = ctx.end_user.token
        likes = json.loads(await suggestion.call("user-api", "profile",
                                                 json.dumps({"user": user}).encode()))["likes"]
        return json.dumps([f"{likes} cosy", f"{likes} strainer"]).encode()

    async def charge(ctx: CallContext, body: bytes) -> bytes:
        order = json.loads(body)
        customer(ctx, order["user"])
        shipment = json.loads(await payment.call("shipping", "ship", body))
        return json.dumps({"charged": order["amount"], "shipment": shipment}).encode()

    async def ship(ctx: CallContext, body: bytes) -> bytes:
        order = json.loads(body)
        address = json.loads(await shipping.call("user-api", "profile",
                                                 json.dumps({"user": order["user"]}).encode())
                             )["address"]
        picked = json.loads(await shipping.call("warehouse", "pick", body))
        return json.dumps({"to": address, "parcel": picked["parcel"], "for": picked["for"],
                           "via": picked["via"]}).encode()

    async def track(ctx: CallContext, body: bytes) -> bytes:
        return b'{"status": "in transit"}'

    async def pick(ctx: CallContext, body: bytes) -> bytes:
        item = json.loads(body)["item"]
        if stock.get(item, 0) <= 0:
            raise LookupError("out of stock")
        stock[item] -= 1
        assert ctx.end_user is not None
        return json.dumps({"parcel": f"parcel-{item}-{stock[item]}",
                           "for": ctx.end_user.subject,
                           "via": list(ctx.end_user.path)}).encode()

    for node, op, handler in ((user_api, "purchase", purchase), (user_api, "profile", profile),
                              (suggestion, "suggest", suggest), (payment, "charge", charge),
                              (shipping, "ship", ship), (shipping, "track", track),
                              (warehouse, "pick", pick)):
        add(node, op, handler)


async def _run(base: Path, say: Callable[[str], None], transport: _Transport) -> WebshopReport:
    report = WebshopReport()
    say("generating throwaway secrets and configs")
    paths = write_secrets(base)
    limiter = PasswordRateLimiter()
    # The identity provider (also the STS that exchanges tokens per hop);
    # services trust its public JWKS file only.
    sts = TokenService.generate(IDP, "EdDSA", lifetime=300)
    sts.save_jwks(base / "idp-jwks.json")
    idp = Issuer.from_jwks_file(IDP, base / "idp-jwks.json")
    nodes = {name: _Node(load_config(path), report, limiter, sts, idp)
             for name, path in paths.items()}
    _define_operations(nodes)
    try:
        if isinstance(transport, _NATS):
            await transport.start()
            say(f"NATS broker at {transport.url}, wiretap on '>'")
        for name, node in nodes.items():
            node.transport = transport
            say(f"started {name} on {await transport.serve(name, node)}")

        # --- one purchase, end to end ------------------------------------
        say("running one purchase")
        customer = HandshakeConfig(roles=[], allow_anonymous=True)
        order = {"user": "alice", "item": "teapot", "amount": "19.90 EUR"}
        alice = sts.issue("alice", audience=SHOP_AUDIENCE, scope=["orders:write", "profile:read"])
        try:
            channel = await transport.connect("user-api", customer)
            async with channel:
                result = json.loads(await channel.call("purchase", json.dumps(order).encode(),
                                                       metadata=token_metadata(alice)))
            report.calls.append(CallRecord("customer", "user-api", "purchase", "ok"))
            report.purchase = "ok" if result.get("status") == "ok" else "failed"
            report.purchase_detail = json.dumps(result)
        except RolewireError as exc:
            report.purchase_detail = f"{type(exc).__name__}: {exc}"

        # --- the breach: suggestion's secrets, nothing more ---------------
        say("attacker with the suggestion service's secrets")
        stolen = HandshakeConfig(roles=load_config(paths["suggestion"]).load_roles())
        attempts = (("payment", "charge", order), ("shipping", "ship", order),
                    ("warehouse", "pick", {"item": "teapot"}))
        for target, op, body in attempts:
            entry = {"from": "suggestion", "to": target, "operation": op}
            try:
                channel = await transport.connect(target, stolen)
                async with channel:
                    await channel.call(op, json.dumps(body).encode())
                entry.update(result="ALLOWED", detail="the call succeeded")
            except Forbidden as exc:
                entry.update(result="denied", detail=f"Forbidden: {exc}")
            except HandshakeError as exc:
                entry.update(result="denied", detail=f"handshake refused: {exc}")
            except RolewireError as exc:
                entry.update(result="error", detail=f"{type(exc).__name__}: {exc}")
            report.breach.append(entry)

        # --- ... and customers' contexts: forged, and replayed -------------
        forger = TokenService.generate(IDP, "EdDSA", kid=sts.kid)  # not the IdP's key
        forged = forger.issue("bob", audience=SHOP_AUDIENCE, scope=["profile:read"])
        captured = captured_tokens.get("suggestion")  # alice's, exchanged for suggestion
        for label, token, who in (("forged token for bob", forged, "bob"),
                                  ("alice's captured context", captured, "alice")):
            entry = {"from": "suggestion", "to": "user-api", "operation": "profile"}
            try:
                if token is None:
                    raise RolewireError("no context was captured")
                channel = await transport.connect("user-api", stolen)
                async with channel:
                    await channel.call("profile", json.dumps({"user": who}).encode(),
                                       metadata=token_metadata(token))
                entry.update(result="ALLOWED", detail=f"{label}: the call succeeded")
            except Forbidden as exc:
                entry.update(result="denied", detail=f"Forbidden ({label}): {exc}")
            except RolewireError as exc:
                entry.update(result="error", detail=f"{type(exc).__name__}: {exc}")
            report.breach.append(entry)
        if isinstance(transport, _NATS):
            # What the broker saw: the customer's data must not be in it.
            seen = transport.plaintext_seen([b"alice", b"teapot", b"Loopback Lane",
                                             b"19.90", b"purchase", b"charge"])
            report.wiretap = {"packets": len(transport.wiretap), "plaintext_seen": seen}
    finally:
        for node in nodes.values():
            await node.close()
        await transport.close()
        os.environ.pop(APPROVAL_ENV, None)
    return report


def run(say: Callable[[str], None] | None = None, *, transport: str = "tcp",
        nats_url: str | None = None) -> WebshopReport:
    """Runs the whole scene in a temporary directory (removed afterwards).
    ``transport``: ``"tcp"`` (loopback ports) or ``"nats"`` (subjects on the
    nats-server at ``nats_url``, or one started for the scene; needs
    ``rolewire[nats]``)."""
    if transport not in ("tcp", "nats"):
        raise ValueError("transport must be 'tcp' or 'nats'")
    scene: _Transport = _TCP({}) if transport == "tcp" else _NATS(nats_url)
    with tempfile.TemporaryDirectory(prefix="rolewire-webshop-") as tmp:
        return asyncio.run(_run(Path(tmp), say or (lambda _m: None), scene))


def render(report: WebshopReport) -> str:
    """A readable report of every call and its outcome."""
    lines = ["rolewire web shop (paper, section 6): 5 services, 4 roles", ""]
    lines.append("Purchase (customer -> user-api -> payment -> shipping -> warehouse):")
    for call in report.calls:
        detail = f"  ({call.detail})" if call.detail else ""
        lines.append(f"  {call.caller:>10} -> {call.callee:<10} {call.operation:<9} "
                     f"{call.result}{detail}")
    lines.append(f"  purchase: {report.purchase.upper()}")
    lines.append("")
    lines.append("Breach: an attacker holding the suggestion service's secrets calls ...")
    for b in report.breach:
        lines.append(f"  suggestion -> {b['to']:<10} {b['operation']:<7} "
                     f"{b['result'].upper():<8} {b.get('detail', '')}")
    if report.wiretap is not None:
        lines.append("")
        seen = "PLAINTEXT SEEN" if report.wiretap["plaintext_seen"] else "no plaintext"
        lines.append(f"Wiretap on every NATS subject: {report.wiretap['packets']} packets, "
                     f"{seen}")
    lines.append("")
    verdict = ("OK: the purchase succeeded and every escalation was denied" if report.ok
               else "FAILED: see above")
    lines.append(verdict)
    return textwrap.dedent("\n".join(lines))
