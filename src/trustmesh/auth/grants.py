"""The workloads' grants: client credentials (RFC 6749 §4.4) and token exchange
(RFC 8693), each issuing a certificate-bound RFC 9068 access token for the audiences it
names (RFC 8707). Neither spends anything: client credentials reads only its clients
and writes only the assertion it authenticated with (the stages of
:class:`~trustmesh.auth.core.Stages`); token exchange reads its subject token too.
"""

from __future__ import annotations

from typing import Any, ClassVar

from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin

from trustmesh.auth.core import AudienceAndScope, CoreRequest, Outcome, Stages, TokenRecord
from trustmesh.auth.db import Client
from trustmesh.auth.methods import AUTH_METHODS
from trustmesh.sdk.oauth import ACCESS_TOKEN_TYPE_URN, TOKEN_EXCHANGE

__all__ = ["MAX_ACT_DEPTH", "ClientCredentials", "TokenExchange"]

MAX_ACT_DEPTH = 8


class ClientCredentials(AudienceAndScope, Stages, ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(description="client_credentials is not allowed")
        self.request.client = client
        self.check_audience_and_scope(client.record, client.record.audiences)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        record: Client = self.request.client.record
        scope = (self.request.payload.scope or "").split()
        issued = self.server.service.mint(
            client=record,
            subject=record.spiffe_id or record.client_id,
            audience=self.request.audiences,
            scope=scope,
            cnf_thumbprint=self.request.peer_thumbprint,
        )
        self.request.issued = issued
        body: dict[str, Any] = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.claims["exp"] - issued.claims["iat"],
        }
        if scope:
            body["scope"] = " ".join(scope)
        return 200, body, self.TOKEN_RESPONSE_HEADER


class TokenExchange(AudienceAndScope, Stages, BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """RFC 8693: a service trades an access token it received (addressed to it) for one
    addressed to the next service. The subject stays the original one; ``act`` records
    who acted, newest first (each nested ``act`` is the previous actor); scopes can only
    narrow; the new token lives no longer than the one it replaces."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    async def prefetch(self, request: CoreRequest) -> Outcome | None:
        """The clients, and the subject token: this server's access token, or one the
        gateway signed; its revocation looked up."""
        await super().prefetch(request)
        token = request.form.get("subject_token")
        if token:
            request.token = await self.server.access_token(token, gateway=True)
        return None

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(description="token exchange is not allowed")
        self.request.client = client
        self._check_form()
        subject = self.request.token
        if subject is None or subject.is_expired() or subject.is_revoked():
            raise InvalidGrantError(
                description="subject_token is not an active token of this server"
            )
        record: Client = client.record
        aud = subject.claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if record.spiffe_id is None or record.spiffe_id not in audiences:
            # only the service a token was addressed to may trade it
            raise InvalidGrantError(description="subject_token is not addressed to this client")
        act = subject.claims.get("act")
        depth = 0
        while isinstance(act, dict):
            depth, act = depth + 1, act.get("act")
        if depth >= MAX_ACT_DEPTH:
            raise InvalidGrantError(description="delegation chain too long")
        self.check_audience_and_scope(record, record.audiences, allow_extra_scope=True)
        granted = set(str(subject.claims.get("scope", "")).split())
        wanted = (self.request.payload.scope or "").split()
        widened = [s for s in wanted if s not in granted]
        if widened:
            raise InvalidScopeError(
                description=f"scope can only narrow: {widened[0]} was not granted"
            )

    def _check_form(self) -> None:
        form = self.request.form
        if not form.get("subject_token"):
            raise InvalidRequestError(description="subject_token is required")
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE_URN:
            raise InvalidRequestError(
                description=f"subject_token_type must be {ACCESS_TOKEN_TYPE_URN}"
            )
        if form.get("requested_token_type", ACCESS_TOKEN_TYPE_URN) != ACCESS_TOKEN_TYPE_URN:
            raise InvalidRequestError(description="only access tokens can be requested")
        if "actor_token" in form:
            raise InvalidRequestError(
                description="the actor is the authenticated client; no actor_token"
            )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        record: Client = self.request.client.record
        subject: TokenRecord | None = self.request.token
        assert subject is not None  # noqa: S101 - checked by validate_token_request
        claims = subject.claims
        wanted = (self.request.payload.scope or "").split()
        scope = wanted or str(claims.get("scope", "")).split()
        actor: dict[str, Any] = {"sub": record.spiffe_id or record.client_id}
        if isinstance(claims.get("act"), dict):
            actor["act"] = claims["act"]
        issued = self.server.service.mint(
            client=record,
            subject=str(claims["sub"]),
            audience=self.request.audiences,
            scope=scope,
            cnf_thumbprint=self.request.peer_thumbprint,
            extra={"act": actor},
            not_after=int(claims["exp"]),
        )
        self.request.issued = issued
        body: dict[str, Any] = {
            "access_token": issued.token,
            "issued_token_type": ACCESS_TOKEN_TYPE_URN,
            "token_type": "Bearer",
            "expires_in": issued.claims["exp"] - issued.claims["iat"],
        }
        if scope:
            body["scope"] = " ".join(scope)
        return 200, body, self.TOKEN_RESPONSE_HEADER
