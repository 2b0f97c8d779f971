"""The OAuth 2.0 protocol machinery, on Authlib's framework-free server core.

Authlib decides the protocol (grant dispatch, client authentication, error responses);
trustmesh adds what Authlib 1.9 lacks: RFC 8705 ``tls_client_auth`` (the client is the
SPIFFE ID in its certificate), certificate-bound RFC 9068 access tokens, and RFC 8707
audience selection. Authlib's core is synchronous: everything it asks for (clients,
used assertion ids) is fetched before it runs, from the async store, and what it
decides to write is written after it returns, before the response is sent.
"""

from __future__ import annotations

import contextvars
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from trustmesh.auth.db import Client, RefreshFamily
from trustmesh.auth.methods import AUTH_METHODS, CLIENT_METHODS, PUBLIC_METHOD
from trustmesh.auth.service import AuthService, Issued, check_secret
from trustmesh.sdk.oauth import ACCESS_TOKEN_TYPE_URN, TOKEN_EXCHANGE

CLIENT_CREDENTIALS = "client_credentials"
__all__ = [
    "ACCESS_TOKEN_TYPE_URN",
    "AUTH_METHODS",
    "CLIENT_CREDENTIALS",
    "TOKEN_EXCHANGE",
    "OAuthServer",
]


ASSERTION_ALGORITHMS = ["ES256", "ES384", "PS256", "RS256"]
MAX_ASSERTION_LIFETIME = 3600 + 60  # what common clients send (Authlib: 1 h), plus skew


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    """RFC 8707 §2: the requested resource (audience) is invalid or not allowed."""

    error = "invalid_target"


# -- the request -------------------------------------------------------------------------
class _Form(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._data: dict[str, str] = {}
        self._list: dict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._data.setdefault(key, value)
            self._list[key].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._list


class CoreRequest(OAuth2Request):  # type: ignore[misc]
    """A token-endpoint request as Authlib sees it, plus the mTLS facts of its connection."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        form: Sequence[tuple[str, str]],
        *,
        peer_spiffe_id: str | None,
        peer_thumbprint: str | None,
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = _Form(form)
        self._form = self.payload.data
        self.peer_spiffe_id = peer_spiffe_id
        self.peer_thumbprint = peer_thumbprint
        self.issued: Issued | None = None
        self.audiences: list[str] = []
        self.subject: TokenRecord | None = None
        # the client and method this request authenticated with, once checked (a grant
        # with side effects checks it before it spends or revokes anything)
        self.authenticated: tuple[OAuthClient, str] | None = None

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form


T = TypeVar("T")


# -- clients -----------------------------------------------------------------------------
class OAuthClient(ClientMixin):  # type: ignore[misc]
    def __init__(self, record: Client) -> None:
        self.record = record

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.record.scopes)
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.record.auth_method.startswith("client_secret") and check_secret(
            client_secret, self.record.secret_hash
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Only the way it was registered (a public client: ``none``, PKCE protects it)."""
        return method == self.record.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        if self.record.redirect_uris and grant_type in ("authorization_code", "refresh_token"):
            return True
        if self.record.auth_method == PUBLIC_METHOD:
            return False  # a public client has no credentials of its own to use
        return grant_type in (CLIENT_CREDENTIALS, TOKEN_EXCHANGE)


@dataclass(frozen=True)
class TokenRecord:
    """An access token this server issued, as the introspection and revocation
    endpoints see it (verified before Authlib runs; revocation looked up)."""

    claims: dict[str, Any]
    revoked: bool

    def check_client(self, client: OAuthClient) -> bool:
        return bool(self.claims.get("client_id") == client.get_client_id())

    def is_expired(self) -> bool:
        return bool(time.time() >= self.claims["exp"])

    def is_revoked(self) -> bool:
        return self.revoked


@dataclass(frozen=True)
class RefreshRecord:
    """A refresh token this server issued (spent or not), as the revocation endpoint
    sees it: revoking it revokes its family (RFC 7009 §2.1)."""

    family: RefreshFamily

    def check_client(self, client: OAuthClient) -> bool:
        return self.family.client_id == client.get_client_id()


@dataclass
class Prefetched:
    """What one request may ask of the store, read before Authlib runs, and what Authlib
    decided to write, written after it returns (before the response leaves)."""

    clients: dict[str, Client | None] = field(default_factory=dict)
    token: TokenRecord | None = None
    refresh_token: RefreshRecord | None = None  # the token to revoke, if a refresh token
    new_assertions: list[tuple[str, int]] = field(default_factory=list)
    revoke: list[TokenRecord | RefreshRecord] = field(default_factory=list)
    code: Any = None  # the authorization code's record (trustmesh.auth.flow)
    refresh: Any = None  # the outcome of spending a refresh token
    user: Any = None  # the user a code or refresh token is for (trustmesh.auth.db.User)
    subject_state: Any = None  # that user's revocations (trustmesh.auth.revocations)


_prefetched: contextvars.ContextVar[Prefetched] = contextvars.ContextVar("trustmesh_auth_prefetch")


def _query_client(client_id: str) -> OAuthClient | None:
    record = _prefetched.get().clients.get(client_id)
    return OAuthClient(record) if record is not None else None


# -- client authentication ---------------------------------------------------------------
def authenticate_tls_client(
    query_client: Callable[[str], OAuthClient | None], request: CoreRequest
) -> OAuthClient | None:
    """RFC 8705 §2.1.2 (``tls_client_auth`` with ``tls_client_auth_san_uri``): the client
    is the one whose registered SPIFFE ID is the URI SAN of the verified certificate."""
    client_id = request.form.get("client_id")
    if not client_id or request.peer_spiffe_id is None:
        return None
    client = query_client(client_id)
    if client is None or client.record.auth_method != "tls_client_auth":
        return None
    if client.record.spiffe_id != request.peer_spiffe_id:
        raise InvalidClientError(
            description="the client certificate does not belong to this client"
        )
    return client


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 §2.2 ``private_key_jwt``: an assertion signed with a registered key."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, audiences: Callable[[], list[str]], leeway: int) -> None:
        super().__init__(validate_jti=True, leeway=leeway)
        self._audiences = audiences
        self._seen: dict[str, int] = {}  # key -> expires at, in this process

    def get_audiences(self) -> list[str]:
        return self._audiences()

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        if client.record.auth_method != "private_key_jwt" or not client.record.jwks:
            raise InvalidClientError(description="the client has no registered keys")
        return KeySet.import_key_set(client.record.jwks)  # type: ignore[arg-type]

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="invalid client assertion") from exc
        self.verify_claims(token.claims)
        return dict(token.claims)

    def verify_claims(self, claims: Any) -> None:
        exp = claims.get("exp")
        if isinstance(exp, int) and exp - time.time() > MAX_ASSERTION_LIFETIME:
            raise InvalidClientError(description="client assertion lives too long")
        super().verify_claims(claims)

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        if not isinstance(jti, str) or len(jti) > 256:
            return False
        key = f"{claims['sub']} {jti}"
        now = int(time.time())
        prefetched = _prefetched.get()
        if self._seen.get(key, 0) > now:  # the store is asked too, after Authlib returns
            return False
        if len(self._seen) > 100_000:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
        expires = int(claims.get("exp", now + MAX_ASSERTION_LIFETIME))
        self._seen[key] = expires
        prefetched.new_assertions.append((key, expires))
        return True


# -- grants ------------------------------------------------------------------------------
class _AudienceAndScope:
    """RFC 8707 ``resource`` / ``audience`` and ``scope`` checks shared by the grants."""

    request: CoreRequest
    server: OAuthServer

    def check_audience_and_scope(
        self, record: Client, allowed_audiences: Sequence[str], *, allow_extra_scope: bool = False
    ) -> None:
        config = self.server.service.config
        wanted: list[str] = []
        for name in ("resource", "audience"):
            for value in self.request.payload.datalist.get(name, []):
                target = config.spiffe_id(value) if value in config.services else value
                if target not in wanted:
                    wanted.append(target)
        if not wanted:
            if len(allowed_audiences) != 1:
                raise InvalidTargetError(
                    description="name the service the token is for (resource or audience)"
                )
            wanted = [allowed_audiences[0]]
        refused = [a for a in wanted if a not in allowed_audiences]
        if refused:
            raise InvalidTargetError(
                description=f"audience not allowed for this client: {refused[0]}"
            )
        self.request.audiences = wanted
        scope = self.request.payload.scope or ""
        extra = [s for s in scope.split() if s not in record.scopes]
        if extra and not allow_extra_scope:
            raise InvalidScopeError(description=f"scope not allowed for this client: {extra[0]}")


class ClientCredentials(_AudienceAndScope, ClientCredentialsGrant):  # type: ignore[misc]
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


# -- introspection (RFC 7662) and revocation (RFC 7009) -----------------------------------
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


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return _prefetched.get().token

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


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: access and refresh tokens, each only by the client it was issued to; an
    unknown token is no error (§2.2). ``token_type_hint`` only orders the lookups (§2.1):
    a token is found whatever the hint says, and an unknown hint is ignored."""

    # a public client revokes its own tokens by its client_id (RFC 7009 §2.1, §5)
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [*AUTH_METHODS, "none"]
    SUPPORTED_TOKEN_TYPES = ("access_token", "refresh_token")

    def check_params(self, request: Any, client: Any) -> None:
        """``token`` is required; a hint is never a reason to refuse, not even an unknown
        one (RFC 7009 §2.1: it only helps the server find the token)."""
        if "token" not in request.form:
            raise InvalidRequestError(description="token is required")

    def query_token(
        self, token_string: str, token_type_hint: str | None
    ) -> TokenRecord | RefreshRecord | None:
        prefetched = _prefetched.get()
        return prefetched.token or prefetched.refresh_token

    def revoke_token(self, token: TokenRecord | RefreshRecord, request: Any) -> None:
        _prefetched.get().revoke.append(token)


MAX_ACT_DEPTH = 8


class TokenExchange(_AudienceAndScope, BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """RFC 8693: a service trades an access token it received (addressed to it) for one
    addressed to the next service. The subject stays the original one; ``act`` records
    who acted, newest first (each nested ``act`` is the previous actor); scopes can only
    narrow; the new token lives no longer than the one it replaces."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(description="token exchange is not allowed")
        self.request.client = client
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
        subject = _prefetched.get().token
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
        self.request.subject = subject

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        record: Client = self.request.client.record
        subject = self.request.subject
        assert subject is not None  # noqa: S101 - set by validate_token_request
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


# -- the server --------------------------------------------------------------------------
class OAuthServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, service: AuthService, endpoints: Callable[[], list[str]]) -> None:
        """``endpoints``: the URLs of the endpoints that authenticate clients (token,
        introspection, revocation; on every listener)."""
        super().__init__()
        self.service = service
        self._accepts: dict[str, set[str]] = {}  # endpoint -> client auth methods
        self.register_client_auth_method("tls_client_auth", authenticate_tls_client)
        # RFC 7523 §3: a client assertion's audience identifies this server: the issuer,
        # or the URL of an endpoint that takes one (clients such as Authlib's name the
        # one they post to)
        self.register_client_auth_method(
            PrivateKeyJWT.CLIENT_AUTH_METHOD,
            PrivateKeyJWT(
                lambda: [*endpoints(), service.settings.issuer],
                service.settings.token_leeway,
            ),
        )
        self.register_grant(ClientCredentials)
        self.register_grant(TokenExchange)
        self.register_endpoint(Introspection(self))
        self.register_endpoint(Revocation(self))

    def register_grant(self, grant_cls: Any, extensions: Any = None) -> None:
        super().register_grant(grant_cls, extensions)
        methods = getattr(grant_cls, "TOKEN_ENDPOINT_AUTH_METHODS", ())
        self._accepts.setdefault("token", set()).update(methods)

    def register_endpoint(self, endpoint: Any) -> None:
        super().register_endpoint(endpoint)
        self._accepts.setdefault(endpoint.ENDPOINT_NAME, set()).update(endpoint.CLIENT_AUTH_METHODS)

    def auth_methods(self, endpoint: str) -> list[str]:
        """The methods a client can be registered with that authenticate at ``endpoint``
        (``token``, ``introspection``, ``revocation``): what discovery advertises
        (RFC 8414 §2), read from the grants and endpoints themselves."""
        accepted = self._accepts.get(endpoint, set())
        return [m for m in CLIENT_METHODS if m in accepted]

    def query_client(self, client_id: str) -> OAuthClient | None:
        return _query_client(client_id)

    def authenticate_client(
        self, request: CoreRequest, methods: Sequence[str], endpoint: str = "token"
    ) -> OAuthClient:
        """The request's client, authenticated once: a second check within the request
        (the grant's own, after the provider checked first) answers the first one's
        client where its method is one ``methods`` allows (an assertion is spent by the
        first check and would look replayed to a second)."""
        known = request.authenticated
        if known is not None:
            client, method = known
            if method in methods and client.check_endpoint_auth_method(method, endpoint):
                request.auth_method = method
                return client
        client = super().authenticate_client(request, methods, endpoint)
        request.authenticated = (client, request.auth_method)
        return client  # type: ignore[no-any-return]

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Access tokens are self-contained JWTs: nothing to store."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No framework signals."""

    def create_oauth2_request(self, request: CoreRequest) -> CoreRequest:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise InvalidRequestError(description="JSON requests are not supported")

    def handle_response(
        self, status: int, body: Any, headers: Sequence[tuple[str, str]]
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers)

    def run(
        self, request: CoreRequest, prefetched: Prefetched, call: Callable[[CoreRequest], T]
    ) -> T:
        """``call`` (an Authlib entry point) with what was read for this request."""
        token = _prefetched.set(prefetched)
        try:
            return call(request)
        finally:
            _prefetched.reset(token)
