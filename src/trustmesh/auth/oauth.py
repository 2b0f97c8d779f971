"""The OAuth 2.0 protocol machinery, on Authlib's framework-free server core.

Authlib decides the protocol (grant dispatch, client authentication, error responses);
trustmesh adds what Authlib 1.9 lacks: RFC 8705 ``tls_client_auth`` (the client is the
SPIFFE ID in its certificate), certificate-bound RFC 9068 access tokens, and RFC 8707
audience selection. Authlib's core is synchronous: each grant and endpoint reads what it
will ask for before Authlib runs and writes what Authlib decided after it returns, before
the response is sent (:mod:`trustmesh.auth.core` describes the stages);
:meth:`OAuthServer.respond` runs them.

- client credentials, token exchange: :mod:`trustmesh.auth.grants`;
- authorization code, refresh token: :mod:`trustmesh.auth.user_grants`;
- introspection, revocation: :mod:`trustmesh.auth.endpoints`;
- client authentication: :mod:`trustmesh.auth.client_auth`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnsupportedGrantTypeError

from trustmesh.auth.client_auth import SeenAssertions, client_authentication
from trustmesh.auth.core import CoreRequest, OAuthClient, Outcome, Stages, TokenRecord
from trustmesh.auth.db import Client
from trustmesh.auth.endpoints import Introspection, Revocation
from trustmesh.auth.flow_store import FlowStore
from trustmesh.auth.gateway_tokens import GatewayTokens
from trustmesh.auth.grants import ClientCredentials, TokenExchange
from trustmesh.auth.methods import CLIENT_METHODS
from trustmesh.auth.service import AuthService
from trustmesh.auth.user_grants import AuthorizationCode, RefreshGrant
from trustmesh.errors import InvalidTokenError, UnavailableError

__all__ = ["CoreRequest", "OAuthServer", "Prefetched"]

T = TypeVar("T")


@dataclass
class Prefetched:
    """Clients read ahead, for a caller that drives Authlib's entry points itself
    (:meth:`OAuthServer.run`; the issuance benchmark does)."""

    clients: dict[str, Client | None] = field(default_factory=dict)


class OAuthServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(
        self,
        service: AuthService,
        endpoints: Callable[[], list[str]],
        *,
        gateway_tokens: GatewayTokens | None = None,
    ) -> None:
        """``endpoints``: the URLs of the endpoints that authenticate clients (token,
        introspection, revocation; on every listener). ``gateway_tokens``: accept the
        gateway's tokens as subject tokens in token exchange."""
        super().__init__()
        self.service = service
        self.flow = FlowStore(service.store)
        self.gateway_tokens = gateway_tokens
        self._accepts: dict[str, set[str]] = {}  # endpoint -> client auth methods
        # RFC 7523 §3: a client assertion's audience identifies this server: the issuer,
        # or the URL of an endpoint that takes one (clients such as Authlib's name the
        # one they post to)
        self._assertion_audiences = lambda: [*endpoints(), service.settings.issuer]
        self._seen = SeenAssertions()
        for grant in (ClientCredentials, TokenExchange, AuthorizationCode, RefreshGrant):
            self.register_grant(grant)
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

    # -- a request, stage by stage -----------------------------------------------------------
    async def respond(self, endpoint: str, request: CoreRequest) -> Outcome:
        """The answer to ``request`` at ``endpoint`` (``token``, ``introspection``,
        ``revocation``): its grant's or endpoint's prefetch, Authlib's decision, its
        commit. A client that failed to authenticate gets a 401 (RFC 6749 §5.2)."""
        stage: Stages
        if endpoint == "token":
            try:
                stage = self.get_token_grant(request)
            except UnsupportedGrantTypeError as error:
                return self.handle_error_response(request, error)  # type: ignore[no-any-return]
        else:
            stage = self._endpoints[endpoint][0]
        outcome = await stage.prefetch(request)
        if outcome is None:
            if endpoint == "token":
                decided = self.create_token_response(request)
            else:
                decided = self.create_endpoint_response(endpoint, request)
            outcome = await stage.commit(request, decided)
        status, body, headers = outcome
        if isinstance(body, dict) and body.get("error") == "invalid_client":
            status = 401  # RFC 6749 §5.2: the client failed to authenticate
        return status, body, headers

    async def access_token(self, token: str, *, gateway: bool) -> TokenRecord | None:
        """An access token this server issued (with ``gateway``, or one the gateway
        signed: a subject token, RFC 8693 only), its revocation looked up; None if it is
        neither, or does not verify."""
        try:
            claims = self.service.verify_own(token)
        except InvalidTokenError:
            if not gateway or self.gateway_tokens is None:
                return None
            try:
                claims = await self.gateway_tokens.verify(token)
            except (InvalidTokenError, UnavailableError):
                return None
        revoked = await self.service.revocations.is_revoked(claims)
        return TokenRecord(claims, revoked, self.service.clock())

    def run(
        self, request: CoreRequest, prefetched: Prefetched, call: Callable[[CoreRequest], T]
    ) -> T:
        """``call`` (an Authlib entry point) with the clients read for this request, and
        no other stage (nothing read, nothing written)."""
        request.clients.update(prefetched.clients)
        return call(request)

    # -- Authlib's hooks ---------------------------------------------------------------------
    def authenticate_client(
        self, request: CoreRequest, methods: Sequence[str], endpoint: str = "token"
    ) -> OAuthClient:
        """The request's client, authenticated once: a second check within the request
        (the grant's own, after the grant checked first) answers the first one's client
        where its method is one ``methods`` allows (an assertion is spent by the first
        check and would look replayed to a second)."""
        known = request.authenticated
        if known is not None:
            client, method = known
            if method in methods and client.check_endpoint_auth_method(method, endpoint):
                request.auth_method = method
                return client
        auth = client_authentication(
            request,
            self._assertion_audiences,
            self.service.settings.token_leeway,
            self._seen,
            self.service.clock,
        )
        client = auth(request, methods, endpoint)
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
