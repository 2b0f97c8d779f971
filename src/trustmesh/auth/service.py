"""The identity provider's state and decisions: signing keys (rotated as a protocol),
clients (cached briefly), access tokens (RFC 9068, certificate-bound per RFC 8705), and
revocation. The HTTP side (:mod:`trustmesh.auth.app`) and the OAuth protocol machinery
(:mod:`trustmesh.auth.oauth`) sit on top of it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trustmesh import crypto, events
from trustmesh.auth import keys as keyplan
from trustmesh.auth.db import AuthStore, Client, StoredKey
from trustmesh.auth.revocations import Revocations
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import UnavailableError
from trustmesh.platform.guard import RefusalSummary
from trustmesh.platform.names import GATEWAY_CLIENT_ID
from trustmesh.reasons import Activity, Code, Reason
from trustmesh.sdk import store_tls

log = logging.getLogger("trustmesh.auth")

ALG = "ES256"
ACCESS_JWT_TYP = "at+jwt"
CLIENT_CACHE_SECONDS = 2.0
#: What an ID token carries (OIDC Core §2, §3.1.3.6), userinfo's claims (``sub``,
#: ``preferred_username``) among them: discovery's ``claims_supported``.
ID_TOKEN_CLAIMS = (
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "amr",
    "at_hash",
    "preferred_username",
    "roles",
)


def hash_secret(secret: str) -> str:
    """A client secret's stored form. Secrets are generated (256 random bits), so a fast
    hash is enough: there is nothing to guess."""
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


def check_secret(secret: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("sha256$"):
        return False
    return hmac.compare_digest(hash_secret(secret), stored)


def new_secret() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


@dataclass(frozen=True)
class AuthSettings:
    issuer: str
    token_ttl: int = 900  # RFC 9068 access tokens: 15 minutes by default
    publish_delay: int = 300  # a new key is in the JWKS this long before it signs
    rotate_every: int = 86_400
    leeway: int = 60  # how long a retired key stays published past its tokens' expiry
    #: How far past ``exp`` a token signed elsewhere (a gateway token, a client
    #: assertion) is still taken (``auth.token_leeway``); the provider's own tokens are
    #: checked against its own clock, with none.
    token_leeway: int = 5


@dataclass(frozen=True)
class Issued:
    token: str
    claims: dict[str, Any]


class KeyRing:
    """The signing keys in memory (private keys opened from their sealed form)."""

    def __init__(self) -> None:
        self.states: list[keyplan.KeyState] = []
        self.private: dict[str, crypto.PrivateKey] = {}
        self.public: dict[str, crypto.PublicKey] = {}
        self.jwks: bytes = b'{"keys":[]}'
        self.active: keyplan.KeyState | None = None

    def load(self, stored: Sequence[StoredKey], seal_key: crypto.SealKey, now: int) -> None:
        states, private, public, jwks = [], {}, {}, []
        for key in stored:
            if key.state.status(now) == "removed":
                continue
            states.append(key.state)
            if key.state.kid not in self.private:
                der = crypto.open_sealed(
                    key.sealed_private, seal_key, context=_seal_context(key.state.kid)
                )
                private[key.state.kid] = crypto.private_key_from_der(der)
            else:
                private[key.state.kid] = self.private[key.state.kid]
            public[key.state.kid] = private[key.state.kid].public_key()
            jwks.append(key.public_jwk)
        jwks.sort(key=lambda j: j["kid"])
        self.states, self.private, self.public = states, private, public
        self.jwks = json.dumps({"keys": jwks}, separators=(",", ":")).encode()
        self.active = keyplan.signer(states, now)


def _seal_context(kid: str) -> bytes:
    return b"trustmesh/auth/signing-key/" + kid.encode()


class AuthService:
    def __init__(
        self,
        config: TrustmeshConfig,
        store: AuthStore,
        seal_key: crypto.SealKey,
        settings: AuthSettings,
        sink: events.EventSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.seal_key = seal_key
        self.settings = settings
        self.sink = sink
        self.clock = clock
        self.ring = KeyRing()
        self.spiffe_id = config.component_spiffe_id("auth")
        self._clients: dict[str, tuple[float, Client | None]] = {}
        self._lock = asyncio.Lock()
        self._redis: Any = None
        # token decisions are OCSF Authentication (service ticket requests); key, client
        # and user changes Entity Management (events.shape_of)
        self.recorder = events.Recorder(
            sink, component="auth", spiffe_id=self.spiffe_id, default=_TICKET
        )
        self.revocations = Revocations(self)
        #: Who may read the revocation feed: the identities that verify tokens — the
        #: declared services, the gateway (when declared) and the identity service
        #: (its admin API takes admin users' tokens).
        self.feed_readers = frozenset(
            [
                *(config.spiffe_id(name) for name in config.services),
                config.component_spiffe_id("identity"),
                *([config.component_spiffe_id("gateway")] if config.gateway is not None else []),
            ]
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.create()
        await self.store.sync_managed_clients(self.managed_clients())
        await self.tick()

    def managed_clients(self) -> list[Client]:
        """One client per declared service: client_id = the service name, authenticated
        by its SVID (tls_client_auth), allowed to ask for tokens addressed to the
        services the declaration lets it call."""
        callees: dict[str, set[str]] = {}
        for call in self.config.calls:
            callees.setdefault(call.from_, set()).add(self.config.spiffe_id(call.to))
        clients = [
            Client(
                client_id=name,
                auth_method="tls_client_auth",
                spiffe_id=self.config.spiffe_id(name),
                audiences=tuple(sorted(callees.get(name, ()))),
                managed=True,
                created_at=int(self.clock()),
            )
            for name in self.config.services
        ]
        console = self.config.audit.console if self.config.audit is not None else None
        if console is not None:
            # the console (in the collector's process) signs admins in: code + PKCE, and
            # the collector's SVID at the token endpoint
            clients.append(
                Client(
                    client_id=console.client_id,
                    auth_method="tls_client_auth",
                    spiffe_id=self.config.component_spiffe_id("audit"),
                    # its access token is addressed to itself: it needs only the ID token
                    audiences=(self.config.component_spiffe_id("audit"),),
                    scopes=("openid",),
                    managed=True,
                    created_at=int(self.clock()),
                    redirect_uris=(console.redirect_uri,),
                )
            )
        if self.config.gateway is not None:
            # the gateway introspects the tokens addressed to it (RFC 7662); it asks for none
            clients.append(
                Client(
                    client_id=GATEWAY_CLIENT_ID,
                    auth_method="tls_client_auth",
                    spiffe_id=self.config.component_spiffe_id("gateway"),
                    audiences=(),
                    managed=True,
                    created_at=int(self.clock()),
                )
            )
        return clients

    async def tick(self, *, rotate: bool = False) -> list[keyplan.Action]:
        """Apply the key protocol at the current time; reload the ring."""
        async with self._lock:
            now = int(self.clock())
            stored = await self.store.keys()
            actions = keyplan.plan(
                [k.state for k in stored],
                now,
                keyplan.RotationSettings(
                    publish_delay=self.settings.publish_delay,
                    token_lifetime=self.settings.token_ttl,
                    rotate_every=self.settings.rotate_every,
                    leeway=self.settings.leeway,
                ),
                rotate=rotate,
            )
            for action in actions:
                await self._apply(action, now)
            if actions:
                stored = await self.store.keys()
            before = self.ring.active.kid if self.ring.active else None
            self.ring.load(stored, self.seal_key, now)
            after = self.ring.active.kid if self.ring.active else None
            if after != before and after is not None:
                self.emit(
                    Activity.KEY_ACTIVATED,
                    f"signing key {after} now signs",
                    attributes={"kid": after},
                )
            return actions

    async def _apply(self, action: keyplan.Action, now: int) -> None:
        if isinstance(action, keyplan.CreateKey):
            private = crypto.generate_key()
            kid = crypto.key_id(private.public_key())
            jwk = crypto.public_jwk(private.public_key())
            jwk.update(kid=kid, use="sig", alg=ALG)
            sealed = crypto.seal(
                crypto.private_key_to_der(private), self.seal_key, context=_seal_context(kid)
            )
            state = keyplan.KeyState(kid, now, action.activate_at)
            self.emit(
                Activity.KEY_CREATED,
                f"signing key {kid} published; signs from {keyplan.utc(action.activate_at).isoformat()}",
                attributes={"kid": kid},
            )
            await self.store.add_key(StoredKey(state, ALG, sealed, jwk))
        elif isinstance(action, keyplan.RetireKey):
            self.emit(
                Activity.KEY_RETIRED,
                f"signing key {action.kid} retired",
                attributes={"kid": action.kid},
            )
            await self.store.retire_key(action.kid, action.retire_at, action.remove_at)
        else:
            self.emit(
                Activity.KEY_REMOVED,
                f"signing key {action.kid} removed",
                attributes={"kid": action.kid},
            )
            await self.store.remove_key(action.kid)

    # -- clients ---------------------------------------------------------------------------
    async def client(self, client_id: str) -> Client | None:
        """A client record, cached for a moment (a removed client stops working within
        CLIENT_CACHE_SECONDS)."""
        now = time.monotonic()
        cached = self._clients.get(client_id)
        if cached is not None and now - cached[0] < CLIENT_CACHE_SECONDS:
            return cached[1]
        if len(client_id) > 128:
            return None
        found = await self.store.get_client(client_id)
        if len(self._clients) > 10_000:
            self._clients.clear()
        self._clients[client_id] = (now, found)
        return found

    # -- tokens ----------------------------------------------------------------------------
    def mint(
        self,
        *,
        client: Client,
        subject: str,
        audience: Sequence[str],
        scope: Sequence[str],
        cnf_thumbprint: str | None,
        extra: Mapping[str, Any] | None = None,
        not_after: int | None = None,
    ) -> Issued:
        """An RFC 9068 access token: only the claims the audience needs."""
        active = self.ring.active
        if active is None:
            raise UnavailableError(
                "no signing key is active", reason=Reason.SIGNING_KEY_UNAVAILABLE
            )
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": subject,
            "aud": audience[0] if len(audience) == 1 else list(audience),
            "exp": min(now + self.settings.token_ttl, not_after or now + self.settings.token_ttl),
            "iat": now,
            "jti": base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode(),
            "client_id": client.client_id,
        }
        if scope:
            claims["scope"] = " ".join(scope)
        if cnf_thumbprint is not None:
            claims["cnf"] = {"x5t#S256": cnf_thumbprint}
        if extra:
            claims.update(extra)
        token = crypto.sign_jwt(
            claims, self.ring.private[active.kid], kid=active.kid, typ=ACCESS_JWT_TYP
        )
        return Issued(token, claims)

    def id_token(
        self,
        *,
        client_id: str,
        subject: str,
        username: str,
        nonce: str | None,
        auth_time: int,
        amr: list[str],
        access_token: str,
        roles: list[str] | None = None,
    ) -> str:
        """An OIDC ID token (Core §2) for ``client_id``, with ``at_hash`` (§3.1.3.6) and
        the user's ``roles`` (RFC 9068 §2.2.3.1's claim: the console admits admins)."""
        active = self.ring.active
        if active is None:
            raise UnavailableError(
                "no signing key is active", reason=Reason.SIGNING_KEY_UNAVAILABLE
            )
        now = int(self.clock())
        digest = hashlib.sha256(access_token.encode("ascii")).digest()
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": subject,
            "aud": client_id,
            "exp": now + 300,
            "iat": now,
            "auth_time": auth_time,
            "amr": amr,
            "at_hash": base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode(),
            "preferred_username": username,
        }
        if roles is not None:
            claims["roles"] = roles
        if nonce:
            claims["nonce"] = nonce
        return crypto.sign_jwt(claims, self.ring.private[active.kid], kid=active.kid)

    @property
    def _own(self) -> crypto.Expect:
        """An access token of this server, for any audience (the caller checks it); its
        expiry exact (no leeway: this server's own clock issued it)."""
        return crypto.Expect(
            issuer=self.settings.issuer,
            typ=frozenset({ACCESS_JWT_TYP}),
            algorithms=(ALG,),
            required=("iss", "exp", "iat", "jti", "sub", "client_id"),
        )

    def verify_own(self, token: str) -> dict[str, Any]:
        """Claims of an access token this server issued and that has not expired (any
        audience); InvalidTokenError otherwise. Revocation is checked by the caller."""
        return crypto.verify_jwt(token, self.ring.public, self._own, now=self.clock())

    # -- revocation --------------------------------------------------------------------------
    async def publish(self, revocation: Mapping[str, str | int]) -> None:
        """Tell subscribed services of a revocation at once (Redis pub/sub, when
        configured): ``{"jti", "exp"}`` for a token, ``{"sub", "before", "exp"}`` for a
        subject. The feed they poll is the backstop, so a failure here loses nothing."""
        url = self.config.auth.redis
        if url is None:
            return
        import redis.asyncio as redis

        try:
            if self._redis is None:
                self._redis = store_tls.redis_client(url)
            await self._redis.publish(
                self.config.auth.revocation_channel, json.dumps(dict(revocation))
            )
        except (OSError, redis.RedisError) as exc:
            log.warning("revocation not published to Redis (%s); services will poll it", exc)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        await self.store.close()

    # -- events ----------------------------------------------------------------------------
    def emit(
        self,
        reason: Code,
        message: str,
        *,
        decision: events.Decision | None = None,
        attributes: Mapping[str, str | int | bool | None] | None = None,
        **fields: Any,
    ) -> None:
        """Record ``reason`` (an activity or an allow, unless ``decision`` says)."""
        self.recorder.record(reason, message, decision=decision, attributes=attributes, **fields)

    def listener_refused(self, summaries: list[RefusalSummary]) -> None:
        """What the public listener refused in the last interval, one event per reason."""
        for summary in summaries:
            self.emit(
                summary.reason,
                "refused at the public listener",
                decision=events.Decision.DENY,
                attributes=summary.attributes(),
            )

    def emit_issued(
        self, message: str, *, client_id: str, sub: str, peer_spiffe_id: str | None, jti: str
    ) -> None:
        """The token-issued event (the issuance hot path: one template per shape)."""
        self.recorder.record(
            Reason.TOKEN_ISSUED,
            message,
            client_id=client_id,
            sub=sub,
            peer_spiffe_id=peer_spiffe_id,
            jti=jti,
        )


_TICKET: events.Shape = (events.EventClass.AUTHENTICATION, 4, "Service Ticket Request")
