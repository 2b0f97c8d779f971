"""The users' grants: authorization code + PKCE (RFC 6749 §4.1, RFC 7636) with OIDC ID
tokens, and refresh tokens with rotation (RFC 6749 §6, OAuth 2.0 Security BCP §4.14).

Both spend something, so their stages (:mod:`trustmesh.auth.core`) do more:

- **prefetch**: the client authenticates first — a stolen refresh token without its
  client's credentials rotates nothing, a replayed assertion spends nothing; then the
  code is read (one used before revokes what it issued: RFC 6749 §4.1.2) or the refresh
  token rotated (one reused revokes its family), and the user's revocation state is read
  before the user, so a revocation after it shows once the token is issued.
- **commit**: the access token issued is recorded in its refresh family (a code starts
  one, and is spent only now: of concurrent uses one wins); a user revoked meanwhile or a
  code spent twice leaves nothing alive (400 ``invalid_grant``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidGrantError, UnauthorizedClientError
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin

from trustmesh import events
from trustmesh.auth import pkce
from trustmesh.auth.core import (
    AUTHORIZATION_CODE,
    OPENID,
    REFRESH_TOKEN,
    AudienceAndScope,
    CoreRequest,
    Outcome,
    Stages,
    replayed,
    spend_assertions,
)
from trustmesh.auth.db import User
from trustmesh.auth.flow_store import CodeRecord
from trustmesh.auth.methods import CLIENT_METHODS
from trustmesh.auth.revocations import LiveToken
from trustmesh.auth.service import AuthService, Issued
from trustmesh.reasons import Activity

__all__ = ["REFRESH_LIFETIME", "AuthorizationCode", "RefreshGrant"]

REFRESH_LIFETIME = 30 * 86400


def _live(issued: Issued) -> LiveToken:
    claims = issued.claims
    return LiveToken(claims["jti"], claims["client_id"], claims["sub"], claims["exp"])


def _check_user(user: User | None) -> User:
    """A code or refresh token is worth nothing once its user is gone or locked."""
    if user is None or user.locked:
        raise InvalidGrantError(description="the user is unknown or locked")
    return user


def _user_claims(user: User) -> dict[str, Any]:
    """RFC 9068 §2.2.3.1: the user's roles (and name), for the services' own checks."""
    return {"preferred_username": user.username, "roles": list(user.roles)}


class _UserGrant(AudienceAndScope, Stages, BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """What the code and refresh grants share (see the module docstring)."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(CLIENT_METHODS)

    @property
    def service(self) -> AuthService:
        return self.server.service

    async def prefetch(self, request: CoreRequest) -> Outcome | None:
        await super().prefetch(request)
        client_id = await self._authenticate_first(request)
        if request.new_assertions:  # spent, and found replayed
            return replayed(request)
        if client_id is not None:
            await self.spend(request, client_id)
        return None

    async def _authenticate_first(self, request: CoreRequest) -> str | None:
        """The client the request authenticates as, checked before the grant spends or
        revokes anything; None if it does not (the grant then answers its error). The
        assertion it authenticated with is recorded now: it stays in
        ``request.new_assertions`` only if it was used before."""
        try:
            client = self.server.authenticate_client(request, CLIENT_METHODS)
        except OAuth2Error:
            return None
        if not await spend_assertions(request, self.service.store):
            return None
        return str(client.get_client_id())

    async def spend(self, request: CoreRequest, client_id: str) -> None:
        """Read (and spend) what the grant presents, for the client it authenticated as."""
        raise NotImplementedError

    async def _read_user(self, request: CoreRequest, user_id: str) -> None:
        """The user's revocation state, then the user: a revocation after the read shows
        in ``revoked_since`` once the token is issued."""
        request.subject_state = await self.service.revocations.before_issuing(user_id)
        request.user = await self.service.store.get_user_by_id(user_id)

    async def _settle(
        self, request: CoreRequest, family_id: str, cause: str | None, outcome: Outcome
    ) -> Outcome:
        """Let the answer stand, unless ``cause`` or a revocation of the user since its
        state was read revokes the family and what it issued (400 ``invalid_grant``)."""
        revocations = self.service.revocations
        issued, state = request.issued, request.subject_state
        if (
            cause is None
            and issued is not None
            and state is not None
            and await revocations.revoked_since(str(issued.claims["sub"]), state)
        ):
            cause = "user-revoked"  # locked, MFA reset, password changed — just now
        if cause is None:
            return outcome
        await revocations.family(family_id, cause)
        request.issued = None
        why = "authorization code already used" if cause == "code-reused" else "grant revoked"
        return 400, {"error": "invalid_grant", "error_description": why}, outcome[2]


class AuthorizationCode(_UserGrant):
    GRANT_TYPE = AUTHORIZATION_CODE

    async def spend(self, request: CoreRequest, client_id: str) -> None:
        """The code's record, if it is this client's (another client's code is refused,
        and revokes nothing); a code used before revokes whatever it issued."""
        code = request.form.get("code", "")
        record = await self.server.flow.code(code) if code else None
        if record is not None and record.client_id != client_id:
            record = None
        request.code = record
        if record is None:
            return
        await self._read_user(request, record.user_id)
        if record.used_at is not None:
            await self._revoke_reused(record)

    async def _revoke_reused(self, record: CodeRecord) -> None:
        """A code used twice: whatever it issued is revoked (RFC 6749 §4.1.2)."""
        revocations = self.service.revocations
        if record.issued_jti and record.issued_exp:
            issued = LiveToken(
                record.issued_jti, record.client_id, record.user_id, record.issued_exp
            )
            await revocations.token(issued, "code-reused")
        if record.family_id:
            await revocations.family(record.family_id, "code-reused")
        self.service.emit(
            Activity.TOKEN_REVOKED,
            "authorization code reused: its tokens are revoked",
            decision=events.Decision.DENY,
            client_id=record.client_id,
            sub=record.user_id,
        )

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(description="authorization_code is not allowed")
        self.request.client = client
        record = self.request.code
        now = self.service.clock()
        if record is None or record.client_id != client.get_client_id():
            raise InvalidGrantError(description="invalid authorization code")
        if record.used_at is not None:
            raise InvalidGrantError(description="authorization code already used")
        if now >= record.expires_at:
            raise InvalidGrantError(description="authorization code expired")
        if self.request.form.get("redirect_uri") != record.redirect_uri:
            raise InvalidGrantError(
                description="redirect_uri does not match the authorization request"
            )
        if not pkce.verify_pkce(record.code_challenge, self.request.form.get("code_verifier")):
            raise InvalidGrantError(description="code_verifier does not match (PKCE)")
        _check_user(self.request.user)
        revoked = self.request.subject_state  # the user's tokens revoked since sign-in
        if revoked is not None and record.auth_time < revoked.before:
            raise InvalidGrantError(description="the sign-in was revoked since")
        self.check_audience_and_scope(
            client.record, client.record.audiences, allow_extra_scope=True
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        record = self.request.code
        assert record is not None  # noqa: S101 - validated
        return 200, self._user_tokens(record), self.TOKEN_RESPONSE_HEADER

    def _user_tokens(self, record: CodeRecord) -> dict[str, Any]:
        """An access token for the code's user (and an ID token if ``openid`` was asked
        for); the refresh token is added once the token is recorded (:meth:`commit`)."""
        request, service = self.request, self.service
        client = request.client.record
        issued = service.mint(
            client=client,
            subject=record.user_id,
            audience=request.audiences,
            scope=record.scope.split(),
            cnf_thumbprint=request.peer_thumbprint,
            # RFC 9068 §2.2.1: how the user logged in (the admin APIs ask for "otp")
            extra={
                **_user_claims(_check_user(request.user)),
                "auth_time": record.auth_time,
                "amr": list(record.amr),
            },
        )
        request.issued = issued
        body: dict[str, Any] = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.claims["exp"] - issued.claims["iat"],
            "scope": record.scope,
        }
        if OPENID in record.scope.split():
            body["id_token"] = service.id_token(
                client_id=client.client_id,
                subject=record.user_id,
                username=record.username,
                nonce=record.nonce,
                auth_time=record.auth_time,
                amr=list(record.amr),
                roles=list(_check_user(request.user).roles),
                access_token=issued.token,
            )
        return body

    async def commit(self, request: CoreRequest, outcome: Outcome) -> Outcome:
        """A new refresh family for the token issued, with it recorded; then the code is
        spent — a use that lost the race to another leaves nothing alive."""
        outcome = await super().commit(request, outcome)
        issued, record = request.issued, request.code
        if issued is None or request.user is None or record is None:
            return outcome
        claims = issued.claims
        now = int(self.service.clock())
        refresh, family = await self.service.store.start_refresh_family(
            claims["client_id"],
            claims["sub"],
            str(claims.get("scope", "")),
            now,
            REFRESH_LIFETIME,
            bound="cnf" in claims,  # refreshed only where its tokens can stay bound
        )
        outcome[1]["refresh_token"] = refresh
        await self.service.revocations.store.record_family_token(family.family_id, _live(issued))
        spent = await self.server.flow.spend_code(
            record.code_hash, now, claims["jti"], claims["exp"], family.family_id
        )
        return await self._settle(
            request, family.family_id, None if spent else "code-reused", outcome
        )


class RefreshGrant(_UserGrant):
    GRANT_TYPE = REFRESH_TOKEN

    async def spend(self, request: CoreRequest, client_id: str) -> None:
        """Rotate the refresh token (another client's is unknown to this one: refused,
        and it revokes nothing); a token reused revokes its family and every access
        token it issued (OAuth 2.0 Security BCP §4.14.2)."""
        token = request.form.get("refresh_token", "")
        if not token:
            return
        now = int(self.service.clock())
        request.rotation = rotation = await self.service.store.rotate_refresh(
            token, client_id, now, over_mtls=request.peer_thumbprint is not None
        )
        family = rotation.family
        if family is None:
            return
        await self._read_user(request, family.subject)
        if rotation.status == "reused":
            self.service.emit(
                Activity.TOKEN_REVOKED,
                "refresh token reused: the family is revoked",
                decision=events.Decision.DENY,
                client_id=client_id,
                sub=family.subject,
            )
            await self.service.revocations.family(family.family_id, "refresh-token-reused")

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        self.request.client = client
        rotation = self.request.rotation
        if rotation is not None and rotation.status == "needs-mtls":
            raise InvalidGrantError(
                description="this refresh token's tokens are certificate-bound: refresh over mTLS"
            )
        if rotation is None or rotation.status != "rotated" or rotation.family is None:
            status = rotation.status if rotation else "unknown"
            raise InvalidGrantError(description=f"refresh token {status}")
        if rotation.family.client_id != client.get_client_id():
            raise InvalidGrantError(description="refresh token of another client")
        _check_user(self.request.user)
        self.check_audience_and_scope(
            client.record, client.record.audiences, allow_extra_scope=True
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        rotation = self.request.rotation
        assert rotation is not None  # noqa: S101 - validated
        assert rotation.family is not None  # noqa: S101 - validated
        family = rotation.family
        issued = self.service.mint(
            client=self.request.client.record,
            subject=family.subject,
            audience=self.request.audiences,
            scope=family.scope.split(),
            cnf_thumbprint=self.request.peer_thumbprint,
            extra=_user_claims(_check_user(self.request.user)),  # no amr: a refresh is no login
        )
        self.request.issued = issued
        body = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.claims["exp"] - issued.claims["iat"],
            "refresh_token": rotation.token,
        }
        if family.scope:
            body["scope"] = family.scope
        return 200, body, self.TOKEN_RESPONSE_HEADER

    async def commit(self, request: CoreRequest, outcome: Outcome) -> Outcome:
        """The token issued joins its family. A family revoked while it refreshed (its
        token replayed at the same time) revokes this token too; the answer stands, as it
        would have had it left a moment sooner: of concurrent refreshes one wins, and its
        tokens die with the family."""
        outcome = await super().commit(request, outcome)
        rotation = request.rotation
        family = rotation.family if rotation is not None else None
        if request.issued is None or request.user is None or family is None:
            return outcome
        revocations = self.service.revocations
        if not await revocations.store.record_family_token(family.family_id, _live(request.issued)):
            await revocations.family(family.family_id, "family-revoked")
            return outcome
        return await self._settle(request, family.family_id, None, outcome)
