"""HTTP clients (requests, hvac) speaking to trustmesh's mTLS listeners SPIFFE-style: the
server's certificate must chain to the trust bundle, and there is no host name to match
(it names a SPIFFE ID); the client presents an SVID from PEM files."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from trustmesh import crypto
from trustmesh.sdk.x509source import X509Context, X509Source


class SPIFFEAdapter(HTTPAdapter):
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._ctx = ctx
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._ctx
        kwargs["assert_hostname"] = False
        super().init_poolmanager(*args, **kwargs)


def spiffe_context(bundle: Path | str, cert: Path | str, key: Path | str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.check_hostname = False  # SPIFFE: the server's SPIFFE ID is checked, not a name
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def spiffe_session(bundle: Path | str, cert: Path | str, key: Path | str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace the bundle
    session.mount("https://", SPIFFEAdapter(spiffe_context(bundle, cert, key)))
    return session


def write_pems(context: X509Context, where: Path, name: str) -> tuple[Path, Path, Path]:
    """The SVID of ``context`` as PEM files in ``where``: chain, key (0600), bundle."""
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key, bundle = where / f"{name}.pem", where / f"{name}.key", where / "bundle.pem"
    cert.write_bytes(b"".join(crypto.cert_pem(c).encode() for c in context.chain))
    key.touch(mode=0o600)
    key.write_bytes(crypto.private_key_to_pem(context.key))
    bundle.write_bytes(b"".join(crypto.cert_pem(c).encode() for c in context.bundle))
    return cert, key, bundle


@dataclass
class Workload:
    """PEM files of one SVID (for clients that take files) and its live source."""

    spiffe_id: str
    cert: Path
    key: Path
    bundle: Path
    source: X509Source

    def ssl_context(self) -> ssl.SSLContext:
        return spiffe_context(self.bundle, self.cert, self.key)

    def session(self) -> requests.Session:
        return spiffe_session(self.bundle, self.cert, self.key)

    def mount(self, session: requests.Session) -> requests.Session:
        """Make ``session`` present this SVID and trust the bundle, SPIFFE-style."""
        session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace the bundle
        session.mount("https://", SPIFFEAdapter(self.ssl_context()))
        return session

    @property
    def leaf_der(self) -> bytes:
        return crypto.cert_der(self.source.context.chain[0])


W = TypeVar("W", bound=Workload)


async def workload(address: str, spiffe_id: str, where: Path, kind: type[W]) -> W:
    """``spiffe_id``'s SVID from the Workload API at ``address``, as PEM files in ``where``."""
    source = X509Source(address, spiffe_id=spiffe_id)
    context = await source.start()
    cert, key, bundle = write_pems(context, where, spiffe_id.rsplit("/", 1)[1])
    return kind(spiffe_id, cert, key, bundle, source)
