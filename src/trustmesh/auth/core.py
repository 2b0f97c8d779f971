"""What the provider's grants and endpoints work on: the request as Authlib sees it, the
client, the records of the tokens a request names, and the two asynchronous stages each
grant and endpoint has around Authlib's synchronous core.

A request at the token, introspection or revocation endpoint runs in three stages
(:meth:`trustmesh.auth.oauth.OAuthServer.respond`), and carries its state on the
:class:`CoreRequest` from one to the next:

1. ``prefetch(request)`` (async): read what the synchronous checks will ask for — the
   clients the request may authenticate as, the token it names, an authorization code's
   record — and, for a grant that spends something (a code, a refresh token), have the
   client authenticate before anything is spent or revoked. An answer here ends the
   request before Authlib runs.
2. Authlib decides, synchronously, from what is on the request.
3. ``commit(request, outcome)`` (async): first record the client assertion the request
   authenticated with (RFC 7523 §3: a ``jti`` used before refuses the request, before
   anything is written), then write what was decided.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidScopeError

from trustmesh.auth.db import AuthStore, Client, RefreshFamily, RefreshOutcome, User
from trustmesh.auth.flow_store import CodeRecord
from trustmesh.auth.methods import PUBLIC_METHOD
from trustmesh.auth.revocations import SubjectState
from trustmesh.auth.service import Issued, check_secret
from trustmesh.sdk.oauth import TOKEN_EXCHANGE

if TYPE_CHECKING:
    from trustmesh.auth.oauth import OAuthServer

__all__ = [
    "AUTHORIZATION_CODE",
    "CLIENT_CREDENTIALS",
    "OPENID",
    "REFRESH_TOKEN",
    "TOKEN_EXCHANGE",
    "AudienceAndScope",
    "CoreRequest",
    "InvalidTargetError",
    "OAuthClient",
    "Outcome",
    "RefreshRecord",
    "Stages",
    "TokenRecord",
]

CLIENT_CREDENTIALS = "client_credentials"
AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type
OPENID = "openid"  # the scope every client may ask for: an ID token (OIDC Core §3.1.2.1)

#: What Authlib answers, and what a stage hands on: (status, body, headers).
Outcome = tuple[int, Any, list[tuple[str, str]]]


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    """RFC 8707 §2: the requested resource (audience) is invalid or not allowed."""

    error = "invalid_target"


# -- the records a request names ---------------------------------------------------------
@dataclass(frozen=True)
class TokenRecord:
    """An access token this server issued (or, as a subject token, the gateway signed), as
    the grants and endpoints see it: verified before Authlib runs, revocation looked up."""

    claims: dict[str, Any]
    revoked: bool
    checked_at: float  # the provider's clock when it was looked up

    def check_client(self, client: OAuthClient) -> bool:
        return bool(self.claims.get("client_id") == client.get_client_id())

    def is_expired(self) -> bool:
        return bool(self.checked_at >= self.claims["exp"])

    def is_revoked(self) -> bool:
        return self.revoked


@dataclass(frozen=True)
class RefreshRecord:
    """A refresh token this server issued (spent or not), as the revocation endpoint
    sees it: revoking it revokes its family (RFC 7009 §2.1)."""

    family: RefreshFamily

    def check_client(self, client: OAuthClient) -> bool:
        return self.family.client_id == client.get_client_id()


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
        if self.record.redirect_uris and grant_type in (AUTHORIZATION_CODE, REFRESH_TOKEN):
            return True
        if self.record.auth_method == PUBLIC_METHOD:
            return False  # a public client has no credentials of its own to use
        return grant_type in (CLIENT_CREDENTIALS, TOKEN_EXCHANGE)


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
    """A request as Authlib sees it, plus the mTLS facts of its connection and the state
    its grant or endpoint carries from one stage to the next (see the module docstring)."""

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
        # read before Authlib runs (prefetch)
        self.clients: dict[str, Client | None] = {}
        self.token: TokenRecord | None = None  # the access token named (token, subject_token)
        self.refresh_token: RefreshRecord | None = None  # or the refresh token (revocation)
        self.code: CodeRecord | None = None  # an authorization code, if its client's
        self.rotation: RefreshOutcome | None = None  # what presenting a refresh token did
        self.subject_state: SubjectState | None = None  # the user's revocations, read first
        self.user: User | None = None  # the user a code or refresh token is for
        # decided by Authlib, written after it returns (commit)
        self.new_assertions: list[tuple[str, int]] = []  # client assertions, not yet recorded
        self.to_revoke: list[TokenRecord | RefreshRecord] = []
        self.issued: Issued | None = None
        self.audiences: list[str] = []
        # the client and method this request authenticated with, once checked (a grant
        # with side effects checks it before it spends or revokes anything)
        self.authenticated: tuple[OAuthClient, str] | None = None

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form

    def query_client(self, client_id: str) -> OAuthClient | None:
        """A client this request may authenticate as, as read before Authlib ran."""
        record = self.clients.get(client_id)
        return OAuthClient(record) if record is not None else None

    def client_ids(self) -> set[str]:
        """Every client the request could authenticate as: ``client_id``, the Basic
        user, or the (not yet verified) subject of a client assertion."""
        ids = {v for v in self.payload.datalist.get("client_id", []) if v}
        authorization = self.headers.get("authorization")
        if authorization and authorization[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(authorization[6:], validate=True)
                user = raw.decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                user = ""
            if user:
                ids.add(unquote(user))
        subject = _assertion_subject(self.form.get("client_assertion"))
        if subject is not None:
            ids.add(subject)
        return {i for i in ids if len(i) <= 128}


def _assertion_subject(assertion: str | None) -> str | None:
    """The unverified ``sub`` of a client assertion (which client to read)."""
    if not assertion or assertion.count(".") != 2:
        return None
    try:
        payload = assertion.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if isinstance(claims, dict) and isinstance(claims.get("sub"), str):
        return str(claims["sub"])
    return None


# -- the stages --------------------------------------------------------------------------
def replayed(request: CoreRequest) -> Outcome:
    """The answer to a request whose client assertion was used before: nothing issued."""
    request.issued = None
    body = {"error": "invalid_client", "error_description": "client assertion replayed"}
    return 401, body, []


async def spend_assertions(request: CoreRequest, store: AuthStore) -> bool:
    """Record the client assertions the request authenticated with as used; False at the
    first the store saw before (a replay, also after a restart), which stays pending."""
    pending, request.new_assertions = request.new_assertions, []
    for key, expires in pending:
        if not await store.use_assertion(key, expires):
            request.new_assertions.append((key, expires))
            return False
    return True


class Stages:
    """A grant's or endpoint's asynchronous stages around Authlib (see the module
    docstring). These read the clients and record the client assertion; a grant or
    endpoint that reads or writes more extends them."""

    server: OAuthServer

    async def prefetch(self, request: CoreRequest) -> Outcome | None:
        """Read the clients the request may authenticate as; an answer ends the request."""
        service = self.server.service
        for client_id in request.client_ids():
            request.clients[client_id] = await service.client(client_id)
        return None

    async def commit(self, request: CoreRequest, outcome: Outcome) -> Outcome:
        """A replayed client assertion refuses the request, whatever Authlib decided,
        before anything is written."""
        if not await spend_assertions(request, self.server.service.store):
            return replayed(request)
        return outcome


# -- audience and scope ------------------------------------------------------------------
class AudienceAndScope:
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
