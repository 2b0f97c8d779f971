"""The identity provider's admin API (``/admin/v1``): clients, users and signing keys.

Two kinds of caller may use it:

- the **operator**: the SPIFFE ID ``spiffe://<td>/trustmesh/operator`` in the caller's
  verified certificate (the CLI gets that identity from a one-time join token, an act
  that needs the state directory);
- an **admin user**: a bearer access token from this provider, addressed to the provider
  itself (``aud`` holds ``spiffe://<td>/trustmesh/auth``), for a user who still exists,
  is not locked and has the ``admin`` role, issued after a login with a one-time code
  (``amr`` holds ``otp``), not revoked, and — if certificate-bound — presented over
  the connection it is bound to. A refreshed token carries no ``amr``: admin actions
  need a fresh login with MFA.

The audit collector (``spiffe://<td>/trustmesh/audit``) may lock and unlock a user and
revoke a subject's tokens (``POST /admin/v1/revocations`` {"subject"}) — its automated
responses — and nothing else. Anyone else gets ``403`` (``401`` for a token that does
not verify). Every request,
allowed or refused, is an event naming who made it. A POST's body is one of
:mod:`trustmesh.auth.models`: an unknown field or a wrong type is a ``400`` and changes
nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.auth import pkce
from trustmesh.auth.db import Client, User
from trustmesh.auth.keys import KeyState
from trustmesh.auth.lockout import normalize_login
from trustmesh.auth.methods import CLIENT_METHODS, PUBLIC_METHOD
from trustmesh.auth.models import (
    NewClient,
    NewPassword,
    NewUser,
    NoFields,
    SubjectRevocation,
    parse_body,
)
from trustmesh.auth.service import AuthService, hash_secret, new_secret
from trustmesh.errors import (
    InvalidTokenError,
    NotFoundError,
    TrustmeshError,
    UsageError,
)
from trustmesh.platform.admin import RESPONDER, Actor, Refused, failure_response
from trustmesh.reasons import Activity, Code, Reason
from trustmesh.sdk.tokens import bearer_token
from trustmesh.spiffeid import require_workload_id

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_JWK_KTYS = {"EC", "RSA", "OKP"}
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")

Handler = Callable[[Request], Awaitable[Response]]
#: What the audit collector may ask of this API (its automated responses): nothing else.
RESPONSE_ACTIONS = frozenset({"lock-user", "unlock-user", "revoke-subject"})


def new_client(service: AuthService, body: NewClient) -> tuple[Client, str | None]:
    """A client from an admin request body, checked; and its secret, if one is made."""
    config = service.config
    client_id, method = body.client_id, body.method
    if not _CLIENT_ID.fullmatch(client_id):
        raise UsageError("client_id: expected 1-128 letters, digits, '.', '_', ':' or '-'")
    if client_id in config.services:
        raise UsageError(f"client_id {client_id!r}: declared services are clients already")
    if method not in CLIENT_METHODS:
        raise UsageError(f"method {method!r}: expected one of {', '.join(CLIENT_METHODS)}")
    if (method == "private_key_jwt") != (body.jwks is not None):
        raise UsageError("jwks is required with private_key_jwt, and only with it")
    if (method == "tls_client_auth") != (body.spiffe_id is not None):
        raise UsageError("spiffe_id is required with tls_client_auth, and only with it")
    if not body.audiences:
        raise UsageError("audiences: name at least one service the client may get tokens for")
    if not all(s and s.isprintable() and not set(s) & set(' "\\') for s in body.scopes):
        raise UsageError("scopes: printable words without spaces, quotes or backslashes")
    for uri in body.redirect_uris:
        pkce.check_registered_redirect_uri(uri)
    if method == PUBLIC_METHOD and not body.redirect_uris:
        raise UsageError("a public client (method none) needs at least one redirect URI")
    secret = new_secret() if method == "client_secret_basic" else None
    client = Client(
        client_id=client_id,
        auth_method=method,
        spiffe_id=require_workload_id(body.spiffe_id, config.trust_domain)
        if body.spiffe_id is not None
        else None,
        secret_hash=hash_secret(secret) if secret else None,
        jwks=_public_jwks(body.jwks) if body.jwks is not None else None,
        scopes=tuple(body.scopes),
        audiences=tuple(dict.fromkeys(_audience(service, a) for a in body.audiences)),
        created_at=int(time.time()),
        redirect_uris=tuple(body.redirect_uris),
    )
    return client, secret


def _audience(service: AuthService, value: str) -> str:
    config = service.config
    if value in config.services:
        return config.spiffe_id(value)
    if value.startswith("spiffe://"):
        return require_workload_id(value, config.trust_domain)
    raise UsageError(f"audience {value!r}: expected a declared service or a SPIFFE ID")


def _public_jwks(doc: object) -> dict[str, Any]:
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise UsageError("jwks: expected a JWK Set with at least one key")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in _JWK_KTYS:
            raise UsageError("jwks: every key needs kty EC, RSA or OKP")
        if any(member in key for member in _PRIVATE_JWK_MEMBERS):
            raise UsageError("jwks: holds private key material; give public keys only")
    return {"keys": keys}


def client_doc(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "auth_method": client.auth_method,
        "spiffe_id": client.spiffe_id,
        "audiences": list(client.audiences),
        "scopes": list(client.scopes),
        "managed": client.managed,
        "redirect_uris": list(client.redirect_uris),
    }


def key_docs(states: list[KeyState], now: int) -> list[dict[str, object]]:
    def iso(ts: int | None) -> str | None:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts is not None else None

    return [
        {
            "kid": s.kid,
            "status": s.status(now),
            "signs_from": iso(s.activate_at),
            "retired_at": iso(s.retire_at),
            "removed_at": iso(s.remove_at),
        }
        for s in sorted(states, key=lambda s: (s.created_at, s.activate_at))
    ]


_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,127}")


def _seal_context(user_id: str) -> bytes:
    return b"trustmesh/auth/totp/" + user_id.encode()


def enroll_totp(service: AuthService, user_id: str, username: str) -> tuple[bytes, str]:
    """A new TOTP secret, sealed for storage, and the otpauth URI to show once."""
    secret = crypto.new_totp_secret()
    sealed = crypto.seal(secret, service.seal_key, context=_seal_context(user_id))
    return sealed, crypto.totp_uri(secret, username, f"trustmesh {service.config.trust_domain}")


def new_user(service: AuthService, body: NewUser) -> tuple[User, str | None, str | None]:
    """A user from an admin request, checked; its generated password and otpauth URI (each
    returned once) where made. Admins are enrolled in TOTP from the start (MFA required)."""
    username = normalize_login(body.username)
    if not _USERNAME.fullmatch(username):
        raise UsageError("username: 1-128 lowercase letters, digits or . _ @ + -")
    known = ("admin", *(r for r in service.config.auth.roles if r != "admin"))
    # unset: the first role the declaration lists (auth.roles), never admin by default
    default = [r for r in service.config.auth.roles if r != "admin"][:1] or ["admin"]
    roles = body.roles if "roles" in body.model_fields_set else default
    if not roles or any(r not in known for r in roles):
        raise UsageError(f"roles: one or more of {', '.join(known)} (auth.roles)")
    password, generated = chosen_password(body.password)
    password_hash = crypto.hash_password(password)
    user_id = uuid.uuid4().hex
    mfa = body.mfa or "admin" in roles
    sealed, uri = enroll_totp(service, user_id, username) if mfa else (None, None)
    user = User(
        user_id=user_id,
        username=username,
        password_hash=password_hash,
        roles=tuple(dict.fromkeys(roles)),
        totp_sealed=sealed,
        created_at=int(time.time()),
    )
    return user, generated, uri


def chosen_password(value: str | None) -> tuple[str, str | None]:
    """The password a request sets: ``value``, or a generated one when it is unset; and
    the generated one, to show once."""
    if value is None:
        generated = new_secret()
        return generated, generated
    return value, None


def user_doc(user: User) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "username": user.username,
        "roles": list(user.roles),
        "mfa": user.mfa_enrolled,
        "locked": user.locked,
    }


async def admin_user(service: AuthService, request: Request, tls: dict[str, Any]) -> Actor:
    """The admin user behind the request's bearer token, or :class:`Refused`."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Refused(403, "forbidden", "neither the operator nor an admin user's token")
    try:
        claims = service.verify_own(token)
    except InvalidTokenError as exc:
        raise Refused(401, "invalid_token", f"token refused: {exc.detail}") from None
    sub = str(claims.get("sub", ""))
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if service.config.component_spiffe_id("auth") not in audiences:
        raise Refused(403, "forbidden", "the token is not addressed to the provider", sub)
    cnf = claims.get("cnf")
    if cnf is not None and (
        not isinstance(cnf, dict) or cnf.get("x5t#S256") != tls.get("client_cert_x5t_s256")
    ):
        raise Refused(401, "invalid_token", "the token is bound to another certificate", sub)
    if await service.revocations.is_revoked(claims):
        raise Refused(401, "invalid_token", "the token is revoked", sub)
    user = await service.store.get_user_by_id(sub)
    if user is None or user.locked or "admin" not in user.roles:
        raise Refused(403, "forbidden", "not an admin user", sub)
    amr = claims.get("amr")
    if not isinstance(amr, list) or "otp" not in amr:
        raise Refused(403, "mfa_required", "admin actions need a login with a one-time code", sub)
    return Actor.user(tls.get("spiffe_id"), user.username)


class AdminAPI:
    """The admin API's routes: each guarded (the operator or an admin user; a refusal
    is an event), its body parsed before anything is read or changed, a read or a
    change an event naming who made it."""

    def __init__(self, service: AuthService) -> None:
        self.service = service
        self.operator = service.config.component_spiffe_id("operator")
        self.responder = service.config.component_spiffe_id("audit")

    def routes(self) -> list[Route]:
        guarded = self._guarded
        user = "/admin/v1/users/{username}"
        return [
            Route("/admin/v1/users", guarded("list-users", self.list_users), methods=["GET"]),
            Route("/admin/v1/users", guarded("add-user", self.add_user), methods=["POST"]),
            Route(f"{user}/lock", guarded("lock-user", self.lock), methods=["POST"]),
            Route(f"{user}/unlock", guarded("unlock-user", self.unlock), methods=["POST"]),
            Route(f"{user}/reset-mfa", guarded("reset-mfa", self.reset_mfa), methods=["POST"]),
            Route(f"{user}/password", guarded("set-password", self.set_password), methods=["POST"]),
            Route("/admin/v1/clients", guarded("list-clients", self.list_clients), methods=["GET"]),
            Route("/admin/v1/clients", guarded("add-client", self.add_client), methods=["POST"]),
            Route(
                "/admin/v1/clients/{client_id}",
                guarded("remove-client", self.remove_client),
                methods=["DELETE"],
            ),
            Route("/admin/v1/keys", guarded("list-keys", self.list_keys), methods=["GET"]),
            Route(
                "/admin/v1/keys/rotate", guarded("rotate-keys", self.rotate_keys), methods=["POST"]
            ),
            Route(
                "/admin/v1/revocations",
                guarded("revoke-subject", self.revoke_subject),
                methods=["POST"],
            ),
        ]

    def _guarded(self, action: str, handler: Handler) -> Handler:
        service = self.service

        async def endpoint(request: Request) -> Response:
            tls = (request.scope.get("extensions") or {}).get("tls") or {}
            peer = tls.get("spiffe_id")
            try:
                actor = await self._actor(action, request, tls)
            except Refused as refused:
                service.emit(
                    Reason.ADMIN_DENIED,
                    f"admin {action} refused: {refused.why}",
                    decision=events.Decision.DENY,
                    peer_spiffe_id=peer,
                    sub=refused.sub,
                    attributes={"action": action},
                )
                return refused.response()
            request.state.actor = actor
            try:
                response = await handler(request)
            except TrustmeshError as exc:
                return failure_response(exc)
            if request.method == "GET":  # a change emits its own event; a read, this one
                service.emit(
                    Reason.ADMIN_READ,
                    f"admin {action}",
                    peer_spiffe_id=peer,
                    attributes={"action": action, "by": actor.name},
                )
            return response

        return endpoint

    async def _actor(self, action: str, request: Request, tls: dict[str, Any]) -> Actor:
        """The operator; the audit collector, for what an automated response does and
        nothing else; or an admin user (:func:`admin_user`)."""
        peer = tls.get("spiffe_id")
        if peer == self.operator:
            return Actor(peer)
        if peer == self.responder:
            if action not in RESPONSE_ACTIONS:
                raise Refused(403, "forbidden", "the audit collector may only take responses")
            return Actor(peer, RESPONDER)
        return await admin_user(self.service, request, tls)

    def _emit(self, request: Request, reason: Code, message: str, **fields: Any) -> None:
        actor: Actor = request.state.actor
        attributes = {**fields.pop("attributes", {}), "by": actor.name}
        self.service.emit(
            reason, message, peer_spiffe_id=actor.peer_spiffe_id, attributes=attributes, **fields
        )

    # -- clients -----------------------------------------------------------------------------
    async def list_clients(self, _: Request) -> Response:
        store = self.service.store
        await store.sync_managed_clients(self.service.managed_clients())
        return JSONResponse([client_doc(c) for c in await store.list_clients()])

    async def add_client(self, request: Request) -> Response:
        body = parse_body(NewClient, await request.body())
        client, secret = new_client(self.service, body)
        await self.service.store.add_client(client)
        self._emit(
            request,
            Activity.CLIENT_CREATED,
            f"OAuth client created ({client.auth_method})",
            client_id=client.client_id,
            attributes={"audiences": " ".join(client.audiences)[:512]},
        )
        doc = client_doc(client)
        if secret is not None:
            doc["client_secret"] = secret  # shown once; only the hash is stored
        return JSONResponse(doc, status_code=201, headers={"Cache-Control": "no-store"})

    async def remove_client(self, request: Request) -> Response:
        client_id = request.path_params["client_id"]
        await self.service.store.remove_client(client_id)
        self._emit(
            request, Activity.CLIENT_REMOVED, "OAuth client removed", client_id=client_id[:128]
        )
        return Response(status_code=204)

    # -- keys --------------------------------------------------------------------------------
    async def list_keys(self, _: Request) -> Response:
        states = [k.state for k in await self.service.store.keys()]
        return JSONResponse(key_docs(states, int(self.service.clock())))

    async def rotate_keys(self, request: Request) -> Response:
        parse_body(NoFields, await request.body(), optional=True)
        await self.service.tick(rotate=True)
        self._emit(request, Activity.KEYS_ROTATED, "signing-key rotation requested")
        states = [k.state for k in await self.service.store.keys()]
        return JSONResponse(key_docs(states, int(self.service.clock())))

    # -- users -------------------------------------------------------------------------------
    def _user_event(self, request: Request, reason: Code, message: str, user: User) -> None:
        self._emit(
            request,
            reason,
            message,
            sub=user.user_id,
            attributes={"username": user.username, "roles": " ".join(user.roles)},
        )

    async def list_users(self, _: Request) -> Response:
        return JSONResponse([user_doc(u) for u in await self.service.store.list_users()])

    async def add_user(self, request: Request) -> Response:
        body = parse_body(NewUser, await request.body())
        user, password, uri = new_user(self.service, body)
        await self.service.store.add_user(user)
        self._user_event(request, Activity.USER_CREATED, "user created", user)
        doc = user_doc(user)
        if password is not None:
            doc["password"] = password  # generated: shown once, stored only as argon2id
        if uri is not None:
            doc["totp_uri"] = uri  # shown once; the secret is stored sealed
        return JSONResponse(doc, status_code=201, headers={"Cache-Control": "no-store"})

    async def _revoke_tokens(self, request: Request, user: User, cause: Activity) -> None:
        """Every token the user holds stops working (see trustmesh.auth.revocations)."""
        actor: Actor = request.state.actor
        await self.service.revocations.subject(user.user_id, cause, attributes={"by": actor.name})

    async def revoke_subject(self, request: Request) -> Response:
        body = parse_body(SubjectRevocation, await request.body())
        actor: Actor = request.state.actor
        revoked = await self.service.revocations.subject(
            body.subject, body.cause, attributes={"by": actor.name}
        )
        return JSONResponse({"subject": body.subject, "before": revoked.before})

    async def _set_lock(self, request: Request, locked: bool) -> Response:
        parse_body(NoFields, await request.body(), optional=True)
        user = await self.service.store.update_user(
            normalize_login(request.path_params["username"]), locked=locked
        )
        self._user_event(
            request,
            Activity.USER_LOCKED if locked else Activity.USER_UNLOCKED,
            "user locked" if locked else "user unlocked",
            user,
        )
        if locked:
            await self._revoke_tokens(request, user, Activity.USER_LOCKED)
        return JSONResponse(user_doc(user))

    async def lock(self, request: Request) -> Response:
        return await self._set_lock(request, True)

    async def unlock(self, request: Request) -> Response:
        return await self._set_lock(request, False)

    async def reset_mfa(self, request: Request) -> Response:
        parse_body(NoFields, await request.body(), optional=True)
        username = normalize_login(request.path_params["username"])
        existing = await self.service.store.get_user(username)
        if existing is None:
            raise NotFoundError(f"no user {username!r}")
        sealed, uri = enroll_totp(self.service, existing.user_id, existing.username)
        user = await self.service.store.update_user(
            username, totp_sealed=sealed, totp_last_step=None
        )
        self._user_event(
            request, Activity.MFA_RESET, "MFA reset: a new TOTP secret was enrolled", user
        )
        await self._revoke_tokens(request, user, Activity.MFA_RESET)
        doc = user_doc(user)
        doc["totp_uri"] = uri
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})

    async def set_password(self, request: Request) -> Response:
        """A new password (argon2id) — the one in the body, or a generated one shown
        once; every token the user holds is revoked."""
        username = normalize_login(request.path_params["username"])
        body = parse_body(NewPassword, await request.body())
        password, generated = chosen_password(body.password)
        password_hash = await asyncio.to_thread(crypto.hash_password, password)
        user = await self.service.store.update_user(username, password_hash=password_hash)
        self._user_event(request, Activity.PASSWORD_CHANGED, "password changed", user)
        await self._revoke_tokens(request, user, Activity.PASSWORD_CHANGED)
        doc = user_doc(user)
        if generated is not None:
            doc["password"] = generated  # shown once, stored only as argon2id
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})
