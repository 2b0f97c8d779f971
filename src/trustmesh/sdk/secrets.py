"""A service's secrets, over the Vault HTTP API (the secrets service, or Vault/OpenBao
with cert auth): ``await sdk.secret("payments/db")`` and transit's ``encrypt``/``decrypt``.

- The service logs in with its SVID (``auth/cert/login``): no token, password or secret
  is ever in its configuration or environment.
- A value is cached until its TTL: the secret's ``custom_metadata.ttl`` (``30s``, ``1h``)
  or :data:`DEFAULT_TTL`.
- The token is renewed once half its lifetime has passed, and the service logs in again
  after its SVID rotates (the token belongs to the identity, the login to the SVID) or
  when the token is refused.
- Database credentials (``database_credentials("readonly")``) are kept under their lease:
  renewed once half of it has passed; replaced by a fresh login when a renewal cannot
  give at least half the lease again (the role's max TTL, or the end of the token that
  created it, is near), fails, or comes too late. The replaced lease runs out on its
  own, so connections opened with it have until then to be recycled: ask again
  whenever a connection is opened (a pool's connect hook). While the service cannot be
  reached, the lease held is used until it expires (its renewal tried at every ask);
  then :class:`~trustmesh.errors.UnavailableError`, as for a value past its TTL.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import quote

from trustmesh.config.durations import seconds_or_zero
from trustmesh.errors import NotFoundError, PermissionDeniedError, UnavailableError, UsageError
from trustmesh.sdk.client import Response, ServiceClient
from trustmesh.sdk.tls import RotatingTLS

__all__ = ["DEFAULT_TTL", "SECRETS_URL_ENV", "DatabaseCredentials", "SecretsClient"]

#: Where the secrets service listens (``trustmesh up`` sets it); Vault's name is read too.
SECRETS_URL_ENV: Final = "TRUSTMESH_SECRETS_URL"
DEFAULT_TTL: Final = 300.0


def secrets_url() -> str | None:
    return os.environ.get(SECRETS_URL_ENV) or os.environ.get("VAULT_ADDR") or None


@dataclass(frozen=True)
class DatabaseCredentials:
    """A login issued under a lease; ``expires``: on the client's (monotonic) clock."""

    username: str
    password: str = field(repr=False)
    lease_id: str
    expires: float


@dataclass
class _Lease:
    credentials: DatabaseCredentials
    ttl: int  # as first granted
    renew_at: float


def _quoted(path: str) -> str:
    return "/".join(quote(segment, safe="") for segment in path.strip("/").split("/"))


class SecretsClient:
    """One service's client of the secrets service at ``url`` (which must present
    ``server_id``, its SPIFFE ID). ``clock``: monotonic seconds."""

    def __init__(
        self,
        tls: RotatingTLS,
        url: str,
        server_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tls = tls
        self.clock = clock
        self._client = ServiceClient(tls, url, server_id, retries=1)
        self._token: str | None = None
        self._renew_at = 0.0
        self._expires = 0.0
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._lease_lock = asyncio.Lock()
        self._login_lock = asyncio.Lock()
        self._svid = self._serial()
        self.logins = 0

    def _serial(self) -> int:
        return int(self.tls.source.context.chain[0].serial_number)

    async def close(self) -> None:
        await self._client.close()

    # -- the token -----------------------------------------------------------------------

    async def _login(self) -> str:
        response = await self._client.request("POST", "/v1/auth/cert/login", json={})
        doc = _answer(response, "log in to the secrets service")
        auth = doc.get("auth") or {}
        token, lease = auth.get("client_token"), auth.get("lease_duration", 0)
        if not isinstance(token, str) or not isinstance(lease, int):
            raise UnavailableError("the secrets service's login answer has no token")
        now = self.clock()
        self._token, self._svid = token, self._serial()
        self._expires = now + lease if lease else float("inf")
        self._renew_at = now + lease / 2 if lease else float("inf")
        self.logins += 1
        return token

    async def _renew(self, token: str) -> None:
        response = await self._request_with(token, "POST", "/v1/auth/token/renew-self", {})
        auth = _answer(response, "renew the token").get("auth") or {}
        lease = auth.get("lease_duration", 0)
        now = self.clock()
        if isinstance(lease, int) and lease > 0:
            self._expires = now + lease
            self._renew_at = now + lease / 2

    async def token(self, fresh: bool = False) -> str:
        """A live token: logged in (again after an SVID rotation), renewed at half-life."""
        async with self._login_lock:
            token, now = self._token, self.clock()
            if fresh or token is None or now >= self._expires or self._serial() != self._svid:
                return await self._login()
            if now >= self._renew_at:
                try:
                    await self._renew(token)
                except PermissionDeniedError:
                    return await self._login()  # past its max TTL: a new one
            return token

    async def _request_with(
        self, token: str, method: str, path: str, body: object = None
    ) -> Response:
        return await self._client.request(method, path, json=body, headers={"X-Vault-Token": token})

    async def request(self, method: str, path: str, body: object = None) -> Response:
        """One API request with the token; once more with a fresh login if refused."""
        response = await self._request_with(await self.token(), method, path, body)
        if response.status == 403:
            response = await self._request_with(await self.token(fresh=True), method, path, body)
        return response

    # -- KV v2 ---------------------------------------------------------------------------

    async def secret(self, path: str, *, mount: str = "secret") -> dict[str, Any]:
        """The current value at ``path`` (KV v2), cached until its TTL."""
        now = self.clock()
        cached = self._cache.get(path)
        if cached is not None and cached[0] > now:
            return dict(cached[1])
        response = await self.request("GET", f"/v1/{mount}/data/{_quoted(path)}")
        if response.status == 404:
            raise NotFoundError(f"no secret at {path!r}")
        doc = _answer(response, f"read {path!r}")["data"]
        value = doc.get("data")
        if not isinstance(value, dict):
            raise UnavailableError(f"the secret at {path!r} is not an object")
        ttl = _ttl((doc.get("metadata") or {}).get("custom_metadata"))
        self._cache[path] = (now + ttl, value)
        return dict(value)

    # -- database credentials ------------------------------------------------------------

    async def database_credentials(
        self, role: str, *, mount: str = "database"
    ) -> DatabaseCredentials:
        """A live login for the database role ``role``, kept under its lease (see the
        module's docstring for when it is renewed and when replaced)."""
        async with self._lease_lock:
            key, now = (mount, role), self.clock()
            held = self._leases.get(key)
            if held is not None and now < held.renew_at:
                return held.credentials
            if held is not None and now < held.credentials.expires:
                try:
                    if await self._renewed(held):
                        return held.credentials
                except UnavailableError:
                    # the service cannot be reached: the lease holds until it expires
                    # (its renewal is tried again at the next ask)
                    return held.credentials
            fresh = await self._new_credentials(mount, role)
            self._leases[key] = fresh
            return fresh.credentials

    async def _new_credentials(self, mount: str, role: str) -> _Lease:
        response = await self.request("GET", f"/v1/{mount}/creds/{_quoted(role)}")
        doc = _answer(response, f"get credentials of {role!r}")
        data, ttl, lease_id = doc.get("data") or {}, doc.get("lease_duration"), doc.get("lease_id")
        username, password = data.get("username"), data.get("password")
        if not (isinstance(username, str) and isinstance(password, str)):
            raise UnavailableError(f"the credentials of {role!r} have no username and password")
        if not isinstance(lease_id, str) or not isinstance(ttl, int) or ttl <= 0:
            raise UnavailableError(f"the credentials of {role!r} came without a lease")
        now = self.clock()
        credentials = DatabaseCredentials(username, password, lease_id, now + ttl)
        return _Lease(credentials, ttl, now + ttl / 2)

    async def _renewed(self, held: _Lease) -> bool:
        """Renew ``held`` for its first TTL again; False when that cannot give at least
        half of it (then a new login is due)."""
        body = {"lease_id": held.credentials.lease_id, "increment": held.ttl}
        try:
            response = await self.request("PUT", "/v1/sys/leases/renew", body)
            ttl = _answer(response, "renew the lease").get("lease_duration")
        except (PermissionDeniedError, UsageError, NotFoundError):
            return False  # revoked, past its max, or made by a token this client lost
        if not isinstance(ttl, int) or ttl < held.ttl / 2:
            return False
        now = self.clock()
        held.credentials = replace(held.credentials, expires=now + ttl)
        held.renew_at = now + ttl / 2
        return True

    # -- transit -------------------------------------------------------------------------

    async def encrypt(self, key: str, plaintext: bytes, *, mount: str = "transit") -> str:
        """``plaintext`` encrypted under the transit key ``key``: ``vault:v<N>:…``."""
        body = {"plaintext": base64.b64encode(plaintext).decode()}
        response = await self.request("POST", f"/v1/{mount}/encrypt/{_quoted(key)}", body)
        return str(_answer(response, f"encrypt with {key!r}")["data"]["ciphertext"])

    async def decrypt(self, key: str, ciphertext: str, *, mount: str = "transit") -> bytes:
        body = {"ciphertext": ciphertext}
        response = await self.request("POST", f"/v1/{mount}/decrypt/{_quoted(key)}", body)
        plaintext = _answer(response, f"decrypt with {key!r}")["data"]["plaintext"]
        return base64.b64decode(plaintext)


def _ttl(custom: object) -> float:
    value = custom.get("ttl") if isinstance(custom, dict) else None
    try:
        return float(seconds_or_zero(value)) or DEFAULT_TTL
    except ValueError:
        return DEFAULT_TTL


def _answer(response: Response, what: str) -> dict[str, Any]:
    """The JSON of a 2xx answer; the error Vault's shape names otherwise."""
    try:
        doc = response.json() if response.body else {}
    except ValueError:
        doc = {}
    if 200 <= response.status < 300 and isinstance(doc, dict):
        return doc
    errors = doc.get("errors") if isinstance(doc, dict) else None
    message = f"could not {what}: {errors[0] if errors else f'HTTP {response.status}'}"
    if response.status == 403:
        raise PermissionDeniedError(message)
    if response.status == 400:
        raise UsageError(message)
    if response.status == 404:
        raise NotFoundError(message)
    raise UnavailableError(message)
