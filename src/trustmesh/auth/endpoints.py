"""The endpoints that answer about a token: introspection (RFC 7662), revocation
(RFC 7009) and userinfo (OIDC Core §5.3).

Introspection and revocation read the token they are asked about before Authlib runs
(:mod:`trustmesh.auth.core`); revocation revokes what Authlib decided only once the
request stands — after its client assertion is recorded, and only on a 200.
"""

from __future__ import annotations

from typing import Any, ClassVar

from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from trustmesh.auth.core import (
    CoreRequest,
    OAuthClient,
    Outcome,
    RefreshRecord,
    Stages,
    TokenRecord,
)
from trustmesh.auth.db import User
from trustmesh.auth.methods import AUTH_METHODS
from trustmesh.auth.revocations import LiveToken
from trustmesh.auth.service import AuthService
from trustmesh.errors import InvalidTokenError

__all__ = ["Introspection", "Revocation", "userinfo"]

#: What introspection tells about an active token (RFC 7662 §2.2, and the user's roles,
#: methods and sign-in time, which the gateway's policies decide on).
_INTROSPECTED = (
    "scope",
    "client_id",
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "jti",
    "cnf",
    "act",
    "roles",
    "amr",
    "auth_time",
    "preferred_username",
)


class Introspection(Stages, IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    async def prefetch(self, request: CoreRequest) -> Outcome | None:
        """The clients, and the access token asked about (this server's only)."""
        await super().prefetch(request)
        token = request.form.get("token")
        if token:
            request.token = await self.server.access_token(token, gateway=False)
        return None

    def authenticate_token(self, request: CoreRequest, client: OAuthClient) -> TokenRecord | None:
        self.check_params(request, client)
        token = request.token
        if token and self.check_permission(token, client, request):
            return token
        return None

    def check_permission(self, token: TokenRecord, client: OAuthClient, request: Any) -> bool:
        """A client may introspect the tokens issued to it and those addressed to it."""
        if token.check_client(client):
            return True
        aud = token.claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        return client.record.spiffe_id is not None and client.record.spiffe_id in audiences

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        claims = token.claims
        body = {"active": True, "token_type": "Bearer"}
        for name in _INTROSPECTED:
            if name in claims:
                body[name] = claims[name]
        return body


class Revocation(Stages, RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: access and refresh tokens, each only by the client it was issued to; an
    unknown token is no error (§2.2). ``token_type_hint`` only orders the lookups (§2.1):
    a token is found whatever the hint says, and an unknown hint is ignored."""

    # a public client revokes its own tokens by its client_id (RFC 7009 §2.1, §5)
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [*AUTH_METHODS, "none"]
    SUPPORTED_TOKEN_TYPES = ("access_token", "refresh_token")

    async def prefetch(self, request: CoreRequest) -> Outcome | None:
        """The clients, and the token to revoke: an access token or a refresh token; the
        hint only says which to look for first (RFC 7009 §2.1)."""
        await super().prefetch(request)
        token = request.form.get("token")
        if not token:
            return None
        kinds = ["access_token", "refresh_token"]
        if request.form.get("token_type_hint") == "refresh_token":
            kinds.reverse()
        for kind in kinds:
            if kind == "refresh_token":
                family = await self.server.service.store.family_of(token)
                if family is not None:
                    request.refresh_token = RefreshRecord(family)
                    return None
            else:
                request.token = await self.server.access_token(token, gateway=False)
                if request.token is not None:
                    return None
        return None

    def check_params(self, request: Any, client: Any) -> None:
        """``token`` is required; a hint is never a reason to refuse, not even an unknown
        one (RFC 7009 §2.1: it only helps the server find the token)."""
        if "token" not in request.form:
            raise InvalidRequestError(description="token is required")

    def authenticate_token(
        self, request: CoreRequest, client: OAuthClient
    ) -> TokenRecord | RefreshRecord | None:
        self.check_params(request, client)
        token = request.token or request.refresh_token
        if token and not token.check_client(client):
            raise InvalidGrantError()
        return token

    def revoke_token(self, token: TokenRecord | RefreshRecord, request: CoreRequest) -> None:
        request.to_revoke.append(token)

    async def commit(self, request: CoreRequest, outcome: Outcome) -> Outcome:
        """What Authlib decided to revoke, only if the request stands: its client
        assertion was not replayed, and the answer is a 200."""
        outcome = await super().commit(request, outcome)
        if outcome[0] != 200:
            return outcome
        revocations, peer = self.server.service.revocations, request.peer_spiffe_id
        for record in request.to_revoke:
            if isinstance(record, RefreshRecord):  # its family, and what it issued
                family_id = record.family.family_id
                await revocations.family(family_id, "refresh-token-revoked", peer_spiffe_id=peer)
                continue
            claims = record.claims
            revoked = LiveToken(
                claims["jti"], claims["client_id"], str(claims.get("sub", "")), int(claims["exp"])
            )
            await revocations.token(revoked, "revoked", peer_spiffe_id=peer)
        return outcome


async def userinfo(service: AuthService, token: str, thumbprint: str | None) -> User | None:
    """OIDC Core §5.3: the user behind an access token — a certificate-bound one only
    over the connection it is bound to (``thumbprint``: that connection's certificate);
    None if the token does not verify, is bound elsewhere or revoked, or its user is gone
    or locked."""
    try:
        claims = service.verify_own(token)
    except InvalidTokenError:
        return None
    cnf = claims.get("cnf")  # a bound token only over the connection it is bound to
    bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    user = await service.store.get_user_by_id(str(claims["sub"]))
    if (
        (cnf is not None and (bound is None or bound != thumbprint))
        or await service.revocations.is_revoked(claims)
        or user is None
        or user.locked
    ):
        return None
    return user
