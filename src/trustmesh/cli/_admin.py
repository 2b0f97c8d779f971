"""How a command acts as the operator, and calls a component's admin API.

The admin APIs (the identity service's, the identity provider's, the gateway's) answer
the operator: ``spiffe://<td>/trustmesh/operator`` in a verified client certificate.
The command gets that SVID as any process gets one, by redeeming a one-time join token
over the Workload API; the token comes from the identity service's operator socket,
which only the state directory's owner can reach (:mod:`trustmesh.identity.operator`).
No command writes a component's store: every change is the component's, and its event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from trustmesh.audit.endpoint import endpoint_path as audit_endpoint_path
from trustmesh.auth.endpoint import endpoint_path as auth_endpoint_path
from trustmesh.cli._common import fail, fail_on
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import PermissionDeniedError, TrustmeshError, UnavailableError, UsageError
from trustmesh.gateway.endpoint import endpoint_path as gateway_endpoint_path
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.workload import redeem_join_token
from trustmesh.sdk.x509source import X509Source
from trustmesh.secrets.endpoint import endpoint_path as secrets_endpoint_path
from trustmesh.spiffeid import parse_spiffe_id

#: Seconds an admin request may take, unless its command says otherwise (a verification
#: of the whole audit log reads every record: :data:`trustmesh.cli.audit_cmd.VERIFY_TIMEOUT`).
ADMIN_TIMEOUT = 10.0
#: A workload's token (``trustmesh call --as``) is redeemed at once, by this process.
WORKLOAD_TOKEN_TTL = 60
_ANSWER_LIMIT = 4096

#: Per component: its name in messages, the file where it says where it listens, and the
#: key there of its admin API's URL.
_WHERE: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "identity": ("the identity service", lambda state: IdentityPaths(state).discovery, "url"),
    "auth": ("the identity provider", auth_endpoint_path, "url"),
    "gateway": ("the gateway", gateway_endpoint_path, "admin_url"),
    "secrets": ("the secrets service", secrets_endpoint_path, "url"),
    "audit": ("the audit collector", audit_endpoint_path, "url"),
}


class AdminError(TrustmeshError):
    """The admin API refused (its message, its HTTP status); ``usage`` when the request
    itself was bad (400, 404, 409)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.http_status = status
        self.usage = status in (400, 404, 409)


def not_running(component: str, state: Path) -> UnavailableError:
    what = _WHERE[component][0]
    return UnavailableError(f"{what} is not running for {state} (start it with `trustmesh up`)")


def admin_url(state: Path, component: str) -> str:
    """Where ``component``'s admin API listens, as it says; UnavailableError if it does not."""
    _, path, key = _WHERE[component]
    try:
        url = json.loads(path(state).read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        raise not_running(component, state) from None
    if not isinstance(url, str):
        raise not_running(component, state)
    return url


@dataclass(frozen=True)
class Operator:
    """This process as the operator of the running stack: its TLS, and its SPIFFE ID as
    the identity service named it (so its trust domain is the stack's, whatever the
    declaration at hand says)."""

    tls: RotatingTLS
    spiffe_id: str

    def component(self, name: str) -> str:
        """The SPIFFE ID of the trustmesh component ``name`` in the stack's trust domain."""
        trust_domain, _ = parse_spiffe_id(self.spiffe_id)
        return f"spiffe://{trust_domain}/trustmesh/{name}"


async def operator_token(state: Path) -> tuple[str, str]:
    """A one-time join token for the operator, and the operator's SPIFFE ID, from the
    identity service's operator socket (only the state directory's owner reaches it)."""
    path = IdentityPaths(state).operator_socket
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 5)
    except PermissionError:
        raise PermissionDeniedError(
            f"{path}: only the owner of {state} may act as the operator"
        ) from None
    except (OSError, TimeoutError):
        raise not_running("identity", state) from None
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
    except (OSError, TimeoutError, ValueError):
        line = b""
    finally:
        writer.close()
    try:
        doc = json.loads(line[:_ANSWER_LIMIT])
    except ValueError:
        doc = None
    if isinstance(doc, dict) and all(isinstance(doc.get(k), str) for k in ("token", "spiffe_id")):
        return str(doc["token"]), str(doc["spiffe_id"])
    message = doc.get("message") if isinstance(doc, dict) else None
    raise PermissionDeniedError(
        f"the identity service gave no operator token: {message or 'no answer'}"
    )


@contextlib.asynccontextmanager
async def redeemed(state: Path, token: str, spiffe_id: str) -> AsyncIterator[RotatingTLS]:
    """This process as ``spiffe_id``: ``token`` redeemed over the Workload API."""
    address = IdentityPaths(state).socket_address
    await redeem_join_token(address, token)
    source = X509Source(address, spiffe_id=spiffe_id)
    try:
        await source.start()
        yield RotatingTLS(source)
    finally:
        await source.close()


@contextlib.asynccontextmanager
async def as_operator(
    state: Path, config: TrustmeshConfig | None = None
) -> AsyncIterator[Operator]:
    """This process as the operator of the stack running on ``state``; with ``config``,
    a declaration of another trust domain is refused (it describes another stack)."""
    token, spiffe_id = await operator_token(state)
    if config is not None and spiffe_id != config.component_spiffe_id("operator"):
        raise UsageError(
            f"the stack on {state} is not trust domain {config.trust_domain} "
            f"(its operator is {spiffe_id}): use its declaration"
        )
    async with redeemed(state, token, spiffe_id) as tls:
        yield Operator(tls, spiffe_id)


async def admin_request(
    operator: Operator,
    state: Path,
    component: str,
    method: str,
    path: str,
    body: object = None,
    *,
    timeout: float | None = None,
) -> Any:
    """One request to ``component``'s admin API over mTLS as ``operator``; its JSON answer
    within ``timeout`` seconds (:data:`ADMIN_TIMEOUT` by default). AdminError when it
    refuses, UnavailableError when it cannot be reached or does not answer in time."""
    url = admin_url(state, component)
    expected = operator.component(component)
    wait = ADMIN_TIMEOUT if timeout is None else timeout
    async with ServiceClient(operator.tls, url, expected, retries=0, timeout=wait) as client:
        response = await client.request(method, path, json=body)
    if response.status >= 400:
        try:
            doc = response.json()
            errors = doc.get("errors")  # the secrets service answers in Vault's shape
            message = (
                "\n".join(map(str, errors))
                if errors
                else f"{doc.get('message') or doc.get('error')}"
            )
        except (ValueError, AttributeError, TypeError):
            message = f"HTTP {response.status}"
        raise AdminError(message, status=response.status)
    return response.json() if response.body else None


async def join_token(
    state: Path, spiffe_id: str, ttl: int, config: TrustmeshConfig | None = None
) -> str:
    """A one-time join token for ``spiffe_id``, made by the identity service's admin API
    at the operator's request."""
    async with as_operator(state, config) as operator:
        body = {"spiffe_id": spiffe_id, "ttl": ttl}
        made = await admin_request(
            operator, state, "identity", "POST", "/admin/v1/join-tokens", body
        )
    return str(made["token"])


@contextlib.asynccontextmanager
async def as_workload(
    config: TrustmeshConfig, state: Path, spiffe_id: str
) -> AsyncIterator[RotatingTLS]:
    """This process as the workload ``spiffe_id``, with a join token the operator had
    made for it."""
    token = await join_token(state, spiffe_id, WORKLOAD_TOKEN_TTL, config)
    async with redeemed(state, token, spiffe_id) as tls:
        yield tls


def call(
    state: Path,
    component: str,
    method: str,
    path: str,
    body: object = None,
    *,
    config: TrustmeshConfig | None = None,
    timeout: float | None = None,
) -> Any:
    """One admin request as the operator (answered within ``timeout`` seconds:
    :data:`ADMIN_TIMEOUT` by default); AdminError/TrustmeshError on failure."""
    admin_url(state, component)  # not running: said before anything else is tried

    async def run() -> Any:
        async with as_operator(state, config) as operator:
            return await admin_request(
                operator, state, component, method, path, body, timeout=timeout
            )

    return asyncio.run(run())


def fail_admin(exc: TrustmeshError) -> NoReturn:
    """Exit as the failure of :func:`call` says, with its message (never a traceback):
    2 for a bad request (400, 404, 409), else 1."""
    if isinstance(exc, AdminError):
        fail(exc.detail, 2 if exc.usage else 1)
    fail_on(exc)
