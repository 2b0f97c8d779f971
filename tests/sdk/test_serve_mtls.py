"""`trustmesh.sdk.serve`: an ASGI app over mTLS with SVIDs from the Workload API, over real
sockets and real TLS on 127.0.0.1, with aiohttp as the client."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import crypto
from trustmesh.errors import AuthenticationError
from trustmesh.reasons import Reason
from trustmesh.sdk.serve import Served, start
from trustmesh.sdk.tls import RotatingTLS, client_context, server_context
from trustmesh.sdk.x509source import X509Context, X509Source
from trustmesh.testing import RunningIdentityServer


async def whoami(request: Request) -> JSONResponse:
    tls = request.scope["extensions"]["tls"]
    return JSONResponse({"spiffe_id": tls["spiffe_id"], "tls_version": tls["tls_version"]})


ORDERS = "spiffe://sdk.example/orders"  # registered for this process by conftest.py
PAYMENTS = "spiffe://sdk.example/payments"
APP = Starlette(routes=[Route("/whoami", whoami)])


@pytest.fixture
async def server(identity: RunningIdentityServer) -> AsyncIterator[Served]:
    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    served = await start(APP, source=source)
    try:
        yield served
    finally:
        await served.stop()
        await source.close()


@pytest.fixture
async def client_tls(identity: RunningIdentityServer) -> AsyncIterator[RotatingTLS]:
    source = X509Source(identity.address, spiffe_id=ORDERS)
    await source.start()
    try:
        yield RotatingTLS(source)
    finally:
        await source.close()


async def _get(
    port: int, ctx: ssl.SSLContext | bool, scheme: str = "https"
) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{scheme}://127.0.0.1:{port}/whoami", ssl=ctx)
        await response.read()
        return response


async def test_mtls_peer_spiffe_id_reaches_the_app(server: Served, client_tls: RotatingTLS) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://127.0.0.1:{server.port}/whoami", ssl=client_tls.client) as r,
    ):
        assert r.status == 200
        body = await r.json()
    _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_tls.client)
    peer = writer.get_extra_info("ssl_object").getpeercert(True)
    writer.close()
    await writer.wait_closed()
    assert body == {"spiffe_id": ORDERS, "tls_version": 0x0304}
    # the server presented its own SVID
    assert crypto.uri_sans(x509.load_der_x509_certificate(peer)) == [PAYMENTS]


async def test_plain_http_is_refused(server: Served) -> None:
    with pytest.raises(aiohttp.ClientError):
        await _get(server.port, False, scheme="http")


async def test_client_without_certificate_is_refused(
    server: Served, client_tls: RotatingTLS
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=client_tls.source.context.bundle_pem().decode())
    with pytest.raises(aiohttp.ClientError):
        await _get(server.port, ctx)


async def test_certificate_from_another_trust_domain_is_refused(
    server: Served, other_identity: RunningIdentityServer, client_tls: RotatingTLS
) -> None:
    source = X509Source(other_identity.address)
    foreign = await source.start()
    await source.close()
    # trusts our bundle (so the server's certificate verifies) but presents the other CA's SVID
    ctx = client_context(
        X509Context(foreign.spiffe_id, foreign.chain, foreign.key, client_tls.source.context.bundle)
    )
    with pytest.raises(aiohttp.ClientError):
        await _get(server.port, ctx)


def _two_uri_sans(
    identity: RunningIdentityServer, bundle: tuple[x509.Certificate, ...]
) -> X509Context:
    """A client identity whose certificate our CA signed with two URI SANs: it chains to
    the bundle, so TLS accepts it; the SPIFFE check must not."""
    from cryptography.hazmat.primitives import hashes  # test-only forgery
    from cryptography.x509.oid import NameOID

    issuer = identity.server.ca.issuer
    key = crypto.generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=5))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(ORDERS), x509.UniformResourceIdentifier(PAYMENTS)]
            ),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return X509Context(ORDERS, (cert, issuer.cert), key, bundle)


async def test_a_cert_from_our_ca_that_breaks_the_svid_rules_gets_401(
    server: Served, identity: RunningIdentityServer, client_tls: RotatingTLS
) -> None:
    ctx = client_context(_two_uri_sans(identity, client_tls.source.context.bundle))
    response = await _get(server.port, ctx)
    assert response.status == 401
    assert json.loads(await response.text())["error"] == "unauthenticated"


async def _peer_refused(
    tls: RotatingTLS, listening: ssl.SSLContext, client: ssl.SSLContext
) -> AuthenticationError:
    """What ``tls`` makes of the peer of a real TLS connection (``listening`` on the server
    side, ``client`` on the other): the refusal it raises."""
    seen: asyncio.Future[AuthenticationError] = asyncio.get_running_loop().create_future()

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            tls.tls_extension(writer.get_extra_info("ssl_object"))
        except AuthenticationError as exc:
            seen.set_result(exc)
        else:
            seen.set_exception(AssertionError("the peer was accepted"))
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=listening)
    try:
        port = listener.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        listener.close()
        await listener.wait_closed()


async def test_the_spiffe_check_names_why_a_peer_is_refused(
    server: Served, identity: RunningIdentityServer
) -> None:
    """A peer whose certificate breaks the X509-SVID rules is ``invalid-peer-svid``; a peer
    that presented none — where a context did not ask for one, so TLS let it through — is
    ``no-peer-certificate``: the SPIFFE check does not lean on the handshake for either."""
    tls = server.tls
    bundle = tls.source.context.bundle
    forged = client_context(_two_uri_sans(identity, bundle))
    invalid = await _peer_refused(tls, tls.listening, forged)
    assert invalid.reason is Reason.PEER_SVID_INVALID
    not_asked = server_context(tls.source.context)
    not_asked.verify_mode = ssl.CERT_NONE
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=tls.source.context.bundle_pem().decode())
    missing = await _peer_refused(tls, not_asked, anonymous)
    assert missing.reason is Reason.PEER_CERTIFICATE_MISSING


async def test_rotation_under_steady_load(server: Served, client_tls: RotatingTLS) -> None:
    """10-second SVIDs: across several rotations, zero errors, and new handshakes see the
    newest server certificate."""
    errors: list[str] = []
    served = 0
    seen_serials: set[int] = set()
    # a 10 s SVID is renewed after 4 s, for real (TLS checks certificates against the real
    # clock): the load runs until the server's SVID was renewed twice and new handshakes
    # saw three certificates, then 1 s more, or 30 s at most
    done = asyncio.Event()
    deadline = time.monotonic() + 30

    def running() -> bool:
        return not done.is_set() and time.monotonic() < deadline

    async def load() -> None:
        nonlocal served
        async with aiohttp.ClientSession() as session:
            while running():
                try:
                    async with session.get(
                        f"https://127.0.0.1:{server.port}/whoami", ssl=client_tls.client
                    ) as r:
                        if r.status != 200:
                            errors.append(str(r.status))
                        await r.read()
                        served += 1
                except aiohttp.ClientError as exc:
                    errors.append(repr(exc))
                await asyncio.sleep(0.01)

    async def handshakes() -> None:
        while running():
            _, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client_tls.client
            )
            der = writer.get_extra_info("ssl_object").getpeercert(True)
            cert = x509.load_der_x509_certificate(der)
            seen_serials.add(cert.serial_number)
            current = server.source.context.chain[0]
            # a new handshake presents the certificate current at that moment (or the one
            # just replaced, if a rotation landed mid-handshake)
            assert cert.not_valid_before_utc >= current.not_valid_before_utc - dt.timedelta(
                seconds=5
            )
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.5)

    async def until_rotated_twice() -> None:
        while server.source.updates < 3 or len(seen_serials) < 3:  # as asserted below
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        done.set()

    await asyncio.gather(load(), load(), handshakes(), until_rotated_twice())
    assert errors == []
    assert served > 100
    assert server.source.updates >= 3, "at least two rotations of the server's SVID"
    assert len(seen_serials) >= 3, "new handshakes presented the rotated certificates"
