"""The identity provider's admin API (``/admin/v1``): clients and signing keys.

Only the operator may use it: the SPIFFE ID ``spiffe://<td>/trustmesh/operator`` in the
caller's verified certificate (the CLI gets that identity from a one-time join token, an
act that needs the state directory). Every request, allowed or refused, is an event.
Admin users with MFA arrive with the user side of the provider.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.auth.db import Client
from trustmesh.auth.keys import KeyState
from trustmesh.auth.service import AuthService, hash_secret, new_secret
from trustmesh.errors import ConflictError, NotFoundError, TrustmeshError, UsageError
from trustmesh.identity.spiffeid import require_workload_id
from trustmesh.reasons import Reason

METHODS = ("private_key_jwt", "client_secret_basic", "tls_client_auth")
MAX_BODY = 256 * 1024
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_JWK_KTYS = {"EC", "RSA", "OKP"}
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def new_client(service: AuthService, body: object) -> tuple[Client, str | None]:
    """A client from an admin request body, checked; and its secret, if one is made."""
    if not isinstance(body, dict):
        raise UsageError("the body must be a JSON object")
    unknown = set(body) - {"client_id", "method", "jwks", "spiffe_id", "audiences", "scopes"}
    if unknown:
        raise UsageError(f"unknown field {sorted(unknown)[0]!r}")
    config = service.config
    client_id = body.get("client_id")
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise UsageError("client_id: expected 1-128 letters, digits, '.', '_', ':' or '-'")
    if client_id in config.services:
        raise UsageError(f"client_id {client_id!r}: declared services are clients already")
    method = body.get("method", "private_key_jwt")
    if method not in METHODS:
        raise UsageError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    jwks, spiffe_id = body.get("jwks"), body.get("spiffe_id")
    if (method == "private_key_jwt") != (jwks is not None):
        raise UsageError("jwks is required with private_key_jwt, and only with it")
    if (method == "tls_client_auth") != (spiffe_id is not None):
        raise UsageError("spiffe_id is required with tls_client_auth, and only with it")
    audiences = body.get("audiences")
    if (
        not isinstance(audiences, list)
        or not audiences
        or not all(isinstance(a, str) for a in audiences)
    ):
        raise UsageError("audiences: name at least one service the client may get tokens for")
    scopes = body.get("scopes", [])
    if not isinstance(scopes, list) or not all(
        isinstance(s, str) and s and s.isprintable() and not set(s) & set(' "\\') for s in scopes
    ):
        raise UsageError("scopes: printable words without spaces, quotes or backslashes")
    secret = new_secret() if method == "client_secret_basic" else None
    client = Client(
        client_id=client_id,
        auth_method=method,
        spiffe_id=require_workload_id(spiffe_id, config.trust_domain)
        if isinstance(spiffe_id, str)
        else None,
        secret_hash=hash_secret(secret) if secret else None,
        jwks=_public_jwks(jwks) if jwks is not None else None,
        scopes=tuple(scopes),
        audiences=tuple(dict.fromkeys(_audience(service, a) for a in audiences)),
        created_at=int(time.time()),
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


def admin_routes(service: AuthService) -> list[Route]:
    operator = service.config.component_spiffe_id("operator")

    def guarded(action: str, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            tls = (request.scope.get("extensions") or {}).get("tls") or {}
            peer = tls.get("spiffe_id")
            if peer != operator:
                service.emit(
                    Reason.ADMIN_DENIED,
                    f"admin {action} refused: not the operator",
                    decision=events.Decision.DENY,
                    peer_spiffe_id=peer,
                    attributes={"action": action},
                )
                return _error(403, "forbidden", "the admin API is for the operator only")
            try:
                return await handler(request)
            except ConflictError as exc:
                return _error(409, "conflict", exc.detail)
            except NotFoundError as exc:
                return _error(404, "not_found", exc.detail)
            except UsageError as exc:
                return _error(400, "invalid_request", exc.detail)
            except TrustmeshError as exc:
                return _error(exc.status, exc.code, exc.detail)

        return endpoint

    async def list_clients(_: Request) -> Response:
        await service.store.sync_managed_clients(service.managed_clients())
        return JSONResponse([client_doc(c) for c in await service.store.list_clients()])

    async def add_client(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise UsageError(f"the body must be at most {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            raise UsageError("the body is not JSON") from None
        client, secret = new_client(service, body)
        await service.store.add_client(client)
        service.emit(
            Reason.CLIENT_CREATED,
            f"OAuth client created ({client.auth_method})",
            client_id=client.client_id,
            peer_spiffe_id=operator,
            attributes={"audiences": " ".join(client.audiences)[:512]},
        )
        doc = client_doc(client)
        if secret is not None:
            doc["client_secret"] = secret  # shown once; only the hash is stored
        return JSONResponse(doc, status_code=201, headers={"Cache-Control": "no-store"})

    async def remove_client(request: Request) -> Response:
        client_id = request.path_params["client_id"]
        await service.store.remove_client(client_id)
        service.emit(
            Reason.CLIENT_REMOVED,
            "OAuth client removed",
            client_id=client_id[:128],
            peer_spiffe_id=operator,
        )
        return Response(status_code=204)

    async def list_keys(_: Request) -> Response:
        states = [k.state for k in await service.store.keys()]
        return JSONResponse(key_docs(states, int(service.clock())))

    async def rotate_keys(_: Request) -> Response:
        await service.tick(rotate=True)
        states = [k.state for k in await service.store.keys()]
        return JSONResponse(key_docs(states, int(service.clock())))

    return [
        Route("/admin/v1/clients", guarded("list-clients", list_clients), methods=["GET"]),
        Route("/admin/v1/clients", guarded("add-client", add_client), methods=["POST"]),
        Route(
            "/admin/v1/clients/{client_id}",
            guarded("remove-client", remove_client),
            methods=["DELETE"],
        ),
        Route("/admin/v1/keys", guarded("list-keys", list_keys), methods=["GET"]),
        Route("/admin/v1/keys/rotate", guarded("rotate-keys", rotate_keys), methods=["POST"]),
    ]
