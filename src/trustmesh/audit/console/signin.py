"""Signing an admin in to the console: OpenID Connect's authorization code flow with
PKCE, the console being a confidential client of the identity provider (its client
authenticates with the collector's SVID at the token endpoint, RFC 8705 §2).

Stages: :func:`authorize_url` sends the browser to the provider with ``state``,
``nonce`` and an S256 ``code_challenge`` (OIDC Core §3.1.2.1, RFC 7636 §4.3); the
provider signs the user in (password, then a TOTP code for an admin) and sends them back
with a code; :meth:`SignIn.finish` redeems it with the ``code_verifier`` over mTLS and
verifies the ID token (OIDC Core §3.1.3.7: signature by the provider's JWKS, ``iss``,
``aud`` = the console's client, ``exp``/``iat``, the ``nonce`` of this sign-in); then
:func:`admit` decides: the ``admin`` role is required, and so is a second factor
(``amr`` holds ``otp``). Anything else is a refusal with its reason; nothing about the
tokens goes back to the browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from trustmesh import crypto
from trustmesh.audit.console.sessions import Admin, Pending
from trustmesh.errors import TrustmeshError, UnavailableError
from trustmesh.platform.endpoints import ENDPOINTS, read_json
from trustmesh.reasons import Reason
from trustmesh.sdk.oauth import AuthClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import JWKSCache

__all__ = ["Admission", "Provider", "SignIn", "WireProvider", "admit", "authorize_url"]

ADMIN_ROLE = "admin"
SECOND_FACTOR = "otp"


@dataclass(frozen=True)
class Admission:
    """``admin``: who may now use the console (None: refused, for ``why``)."""

    admin: Admin | None
    reason: Reason
    why: str
    sub: str | None = None


class Provider(Protocol):
    """The identity provider, as the console reaches it."""

    async def where(self) -> tuple[str, str]:
        """(its public URL, where browsers sign in; its issuer)."""
        ...

    async def redeem(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's status and JSON answer to ``form``."""
        ...

    async def key(self, kid: str) -> Any | None:
        """Its signing key ``kid`` (from its JWKS), or None."""
        ...


def s256(verifier: str) -> str:
    """The S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(public_url: str, client_id: str, redirect_uri: str, pending: Pending) -> str:
    """Where the browser goes to sign in (OIDC Core §3.1.2.1; RFC 7636 §4.3)."""
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid",
        "state": pending.state,
        "nonce": pending.nonce,
        "code_challenge": s256(pending.verifier),
        "code_challenge_method": "S256",
    }
    return f"{public_url.rstrip('/')}/oauth2/authorize?{urlencode(query)}"


def admit(claims: Mapping[str, Any]) -> Admission:
    """An admin who signed in with a second factor, or the refusal."""
    sub = str(claims.get("sub", ""))
    roles, amr = claims.get("roles"), claims.get("amr")
    if not isinstance(roles, list) or ADMIN_ROLE not in roles:
        return Admission(None, Reason.ADMIN_DENIED, "the console is for admins only", sub)
    if not isinstance(amr, list) or SECOND_FACTOR not in amr:
        return Admission(None, Reason.ADMIN_DENIED, "the sign-in had no second factor", sub)
    admin = Admin(
        sub=sub,
        username=str(claims.get("preferred_username") or sub),
        amr=tuple(str(m) for m in amr),
        auth_time=int(claims.get("auth_time") or 0),
    )
    return Admission(admin, Reason.LOGIN_SUCCEEDED, "signed in to the console", sub)


class SignIn:
    """The console's side of the flow, for client ``client_id`` returning to
    ``redirect_uri``."""

    def __init__(
        self,
        provider: Provider,
        client_id: str,
        *,
        leeway: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider, self.client_id = provider, client_id
        self._leeway, self._clock = leeway, clock

    async def start(self, pending: Pending, redirect_uri: str) -> str:
        public_url, _ = await self.provider.where()
        return authorize_url(public_url, self.client_id, redirect_uri, pending)

    async def finish(self, pending: Pending, code: str, redirect_uri: str) -> Admission:
        """Redeem ``code`` and decide on the ID token it brings."""
        status, body = await self.provider.redeem(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": pending.verifier,
                "client_id": self.client_id,
            }
        )
        token = body.get("id_token")
        if status != 200 or not isinstance(token, str):
            error = str(body.get("error", status))[:64]
            return Admission(None, Reason.LOGIN_FAILED, f"the code was refused ({error})")
        _, issuer = await self.provider.where()
        try:
            header = crypto.unverified_header(token)
            key = await self.provider.key(str(header.get("kid", "")))
            claims = crypto.verify_jwt(
                token,
                {} if key is None else {str(header["kid"]): key},
                crypto.Expect(
                    issuer=issuer,
                    audience=self.client_id,
                    required=("exp", "iat", "sub", "nonce"),
                    strings=("sub", "nonce"),
                    leeway=self._leeway,
                ),
                now=self._clock(),
            )
        except TrustmeshError as exc:
            return Admission(None, Reason.LOGIN_FAILED, f"the ID token was refused: {exc.detail}")
        if not hmac.compare_digest(str(claims["nonce"]).encode(), pending.nonce.encode()):
            return Admission(
                None, Reason.LOGIN_FAILED, "the ID token's nonce is not this sign-in's"
            )
        return admit(claims)


class WireProvider:
    """The provider over the wire: where it listens is read from its endpoint file at
    each sign-in (it may have restarted elsewhere); its token endpoint and JWKS over
    mTLS (its SPIFFE ID checked), with the collector's SVID."""

    def __init__(self, tls: RotatingTLS, state: Path, spiffe_id: str) -> None:
        self._tls, self._state, self._spiffe_id = tls, state, spiffe_id
        self._client: AuthClient | None = None
        self._jwks: JWKSCache | None = None

    def _endpoint(self) -> dict[str, Any]:
        doc = read_json(self._state / ENDPOINTS["auth"][0])
        if doc is None:
            raise UnavailableError("the identity provider is not running")
        if not all(isinstance(doc.get(k), str) for k in ("url", "public_url", "issuer")):
            raise UnavailableError("the identity provider serves no browsers")
        return doc

    async def _auth(self) -> AuthClient:
        url = str(self._endpoint()["url"])
        if self._client is None or self._client.url != url.rstrip("/"):
            if self._client is not None:
                await self._client.close()
            self._client = AuthClient(self._tls, url, self._spiffe_id)
            self._jwks = self._client.jwks_cache()
        return self._client

    async def where(self) -> tuple[str, str]:
        doc = self._endpoint()
        return str(doc["public_url"]), str(doc["issuer"])

    async def redeem(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        client = await self._auth()
        try:
            response = await client.http.post("/oauth2/token", data=dict(form))
        except (OSError, TimeoutError) as exc:
            raise UnavailableError(f"the identity provider: {type(exc).__name__}") from None
        body = response.json() if response.body.startswith(b"{") else {}
        return response.status, body if isinstance(body, dict) else {}

    async def key(self, kid: str) -> Any | None:
        await self._auth()
        if self._jwks is None or not kid:
            return None
        return await self._jwks.key(kid)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
