"""How a client authenticates, beyond what Authlib 1.9 has: RFC 8705 ``tls_client_auth``
(the client is the SPIFFE ID in its certificate) and RFC 7523 ``private_key_jwt`` with
replay protection — an assertion's ``jti`` is remembered in this process (refused at
once) and recorded in the store once the request stands (refused after a restart too).

Authlib asks for clients synchronously: :func:`client_authentication` gives it, for one
request, the clients that request read beforehand, and keeps the assertion it accepted on
the request until it is recorded (:func:`trustmesh.auth.core.spend_assertions`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749.authenticate_client import ClientAuthentication
from authlib.oauth2.rfc6749.errors import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion

from trustmesh import crypto
from trustmesh.auth.core import CoreRequest, OAuthClient
from trustmesh.errors import InvalidTokenError

__all__ = [
    "ASSERTION_ALGORITHMS",
    "ClientKeys",
    "PrivateKeyJWT",
    "SeenAssertions",
    "authenticate_tls_client",
    "client_authentication",
]

ASSERTION_ALGORITHMS = ["ES256", "ES384", "PS256", "RS256"]
MAX_ASSERTION_LIFETIME = 3600 + 60  # what common clients send (Authlib: 1 h), plus skew


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


class SeenAssertions:
    """The client assertions this process accepted, each until it expires."""

    def __init__(self) -> None:
        self._until: dict[str, int] = {}  # key -> expires at

    def first_use(self, key: str, expires: int, now: int) -> bool:
        """Remember ``key`` until ``expires``; False if it is remembered already."""
        if self._until.get(key, 0) > now:
            return False
        if len(self._until) > 100_000:
            self._until = {k: v for k, v in self._until.items() if v > now}
        self._until[key] = expires
        return True


@dataclass(frozen=True)
class ClientKeys:
    """The keys a client registered for its assertions, by ``kid``."""

    client_id: str
    keys: Mapping[str, Any]


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 §2.2 ``private_key_jwt``: an assertion signed with a registered key, for
    one request (``spent`` is the request's list of assertions to record)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(
        self,
        audiences: Callable[[], list[str]],
        leeway: int,
        seen: SeenAssertions,
        spent: list[tuple[str, int]],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(validate_jti=True, leeway=leeway)
        self._audiences = audiences
        self._seen = seen
        self._spent = spent
        self._clock = clock

    def get_audiences(self) -> list[str]:
        return self._audiences()

    def resolve_client_public_key(self, client: OAuthClient) -> ClientKeys:
        if client.record.auth_method != "private_key_jwt" or not client.record.jwks:
            raise InvalidClientError(description="the client has no registered keys")
        keys = crypto.verifying_keys(client.record.jwks, ASSERTION_ALGORITHMS, lone_unnamed=True)
        return ClientKeys(client.record.client_id, keys)

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        """RFC 7523 §3 through the one JWT recipe: signed by a key the client registered
        (with an allowed algorithm; a set of one key may go unnamed), ``iss`` the client,
        ``aud`` this server, the times against the provider's clock; then
        :meth:`verify_claims` for what is particular to an assertion."""
        keys: ClientKeys = resolve_key
        expect = crypto.Expect(
            issuer=keys.client_id,
            audience=self.get_audiences(),
            algorithms=tuple(ASSERTION_ALGORITHMS),
            required=("iss", "sub", "aud", "exp", "jti"),
            leeway=self.leeway,
            kid_optional=True,
        )
        try:
            claims = crypto.verify_jwt(assertion, keys.keys, expect, now=self._clock())
        except InvalidTokenError as exc:
            raise InvalidClientError(description=f"client assertion: {exc.detail}") from None
        self.verify_claims(claims)
        return claims

    def verify_claims(self, claims: Any) -> None:
        """What :func:`crypto.verify_jwt` leaves to an assertion (RFC 7523 §3): ``sub``
        the client too, a lifetime no longer than a client needs, and the ``jti`` once."""
        now = self._clock()
        if claims["sub"] != claims["iss"]:
            raise InvalidClientError(description="Issuer and Subject MUST match.")
        if claims["exp"] - now > MAX_ASSERTION_LIFETIME:
            raise InvalidClientError(description="client assertion lives too long")
        if not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="JWT ID is used before.")

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        if not isinstance(jti, str) or len(jti) > 256:
            return False
        key = f"{claims['sub']} {jti}"
        now = int(self._clock())
        expires = int(claims.get("exp", now + MAX_ASSERTION_LIFETIME))
        if not self._seen.first_use(key, expires, now):  # the store is asked too, later
            return False
        self._spent.append((key, expires))
        return True


def client_authentication(
    request: CoreRequest,
    audiences: Callable[[], list[str]],
    leeway: int,
    seen: SeenAssertions,
    clock: Callable[[], float],
) -> ClientAuthentication:
    """Authlib's client authentication for ``request``: its methods (Authlib's own —
    ``client_secret_basic``, ``none`` — and the two above) over the clients it read."""
    auth = ClientAuthentication(request.query_client)
    auth.register("tls_client_auth", authenticate_tls_client)
    auth.register(
        PrivateKeyJWT.CLIENT_AUTH_METHOD,
        PrivateKeyJWT(audiences, leeway, seen, request.new_assertions, clock),
    )
    return auth
